"""The interface every vector backend implements (embedded, pgvector)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tollway.vectors import filter as F
from tollway.vectors.shapes import IndexInfo, Match, Record


class Backend(Protocol):
    name: str

    async def create(self, info: IndexInfo) -> None: ...

    async def drop(self, info: IndexInfo) -> None: ...

    async def write(self, info: IndexInfo, records: list[Record], *, replace: bool) -> list[str]:
        """Write a batch atomically; without ``replace``, ids that exist are skipped.
        Returns the ids written."""
        ...

    async def delete(self, info: IndexInfo, ids: list[str]) -> list[str]: ...

    async def get(self, info: IndexInfo, ids: list[str]) -> list[Record]: ...

    async def search(
        self,
        info: IndexInfo,
        vec: np.ndarray,
        k: int,
        namespace: str | None,
        conds: list[F.Cond],
        values: bool,
    ) -> list[Match]:
        """The k nearest vectors passing the namespace and filter (applied before
        the top k), with metadata and, if asked, values; best first."""
        ...

    async def count(self, info: IndexInfo) -> int: ...

    async def has_namespace(self, info: IndexInfo, namespace: str) -> bool: ...

    async def close(self) -> None: ...


def score(metric: str, distance: float) -> float:
    """Vectorize's score from a backend's distance: cosine similarity, euclidean
    distance, or the dot product."""
    if metric == "euclidean":
        return float(np.sqrt(max(distance, 0.0)))
    return 1.0 - float(distance)


def distances(metric: str, mat: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact distances (usearch's conventions: 1 - cos, squared L2, 1 - dot)."""
    if metric == "euclidean":
        diff = mat - q
        out: np.ndarray = np.einsum("ij,ij->i", diff, diff)
        return out
    dots: np.ndarray = mat @ q
    if metric == "cosine":
        norms = np.linalg.norm(mat, axis=1) * float(np.linalg.norm(q))
        cos: np.ndarray = 1.0 - dots / np.where(norms == 0, 1.0, norms)
        return cos
    res: np.ndarray = 1.0 - dots
    return res
