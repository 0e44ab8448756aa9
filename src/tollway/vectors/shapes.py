"""The Vectorize shapes: index configs, vectors, queries, and their limits.
Everything a caller sends is validated here, before anything is written."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from tollway.core.errors import invalid
from tollway.vectors import filter as F

if TYPE_CHECKING:  # numpy is imported on first use: start-up stays fast
    import numpy as np

MAX_DIMENSIONS = 4096
MAX_BATCH = 5000
MAX_TOP_K = 1000
MAX_ID_BYTES = 64
MAX_METADATA_BYTES = 10 * 1024
MAX_NAMESPACE_BYTES = 64
METRICS = ("cosine", "euclidean", "dot-product")
Metric = Literal["cosine", "euclidean", "dot-product"]
ReturnMetadata = Literal["none", "indexed", "all"]
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class IndexInfo:
    id: str
    customer_id: str
    name: str
    dimensions: int
    metric: Metric
    description: str
    created_at_us: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "config": {"dimensions": self.dimensions, "metric": self.metric},
            "created_on": _iso(self.created_at_us),
            "modified_on": _iso(self.created_at_us),
        }


def _iso(us: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Record:
    id: str
    values: np.ndarray  # float32, the index's dimensions
    namespace: str = ""
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class Match:
    id: str
    score: float
    namespace: str = ""
    values: list[float] | None = None
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "score": self.score}
        if self.namespace:
            d["namespace"] = self.namespace
        if self.values is not None:
            d["values"] = self.values
        if self.metadata is not None:
            d["metadata"] = self.metadata
        return d


@dataclass(slots=True)
class Query:
    top_k: int = 5
    namespace: str | None = None
    conds: list[F.Cond] = field(default_factory=list)
    return_values: bool = False
    return_metadata: ReturnMetadata = "none"
    rerank: str | None = None
    mmr_lambda: float = 0.5


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid(
            "invalid_index_name",
            "an index name is 1-64 lowercase letters, digits, - or _, starting with a letter or digit",
            "name",
        )
    return name


def check_config(dimensions: Any, metric: Any) -> tuple[int, Metric]:
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise invalid(
            "invalid_dimensions", f"dimensions is an integer from 1 to {MAX_DIMENSIONS}", "dimensions"
        )
    if metric not in METRICS:
        raise invalid("invalid_metric", f"metric is one of {', '.join(METRICS)}", "metric")
    return dimensions, metric


def vector(values: Any, dims: int, param: str) -> np.ndarray:
    import numpy as np

    if not isinstance(values, list | tuple | np.ndarray):
        raise invalid("invalid_vector", "values is a list of numbers", param)
    if len(values) != dims:
        raise invalid(
            "wrong_dimensions", f"the index has {dims} dimensions, this vector {len(values)}", param
        )
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid("invalid_vector", "values is a list of numbers", param) from None
    if arr.ndim != 1 or (isinstance(values, list) and any(isinstance(x, bool | str) for x in values)):
        raise invalid("invalid_vector", "values is a list of numbers", param)
    if not np.isfinite(arr).all():
        raise invalid("non_finite_value", "values must be finite (no NaN or infinity)", param)
    with np.errstate(over="ignore"):
        f32 = arr.astype(np.float32)
    if not np.isfinite(f32).all():
        raise invalid("non_finite_value", "a value overflows a 32-bit float", param)
    return f32


def check_id(v: Any, param: str) -> str:
    if not isinstance(v, str) or not v:
        raise invalid("invalid_id", "id is a non-empty string", param)
    if len(v.encode()) > MAX_ID_BYTES:
        raise invalid("id_too_long", f"id is over {MAX_ID_BYTES} bytes", param)
    return v


def check_namespace(v: Any, param: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str) or len(v.encode()) > MAX_NAMESPACE_BYTES:
        raise invalid(
            "invalid_namespace", f"namespace is a string of at most {MAX_NAMESPACE_BYTES} bytes", param
        )
    return v


def records(vectors: Any, dims: int) -> list[Record]:
    """Validate a whole batch: one bad vector refuses the batch."""
    if not isinstance(vectors, list) or not vectors:
        raise invalid("invalid_vectors", "vectors is a non-empty list", "vectors")
    if len(vectors) > MAX_BATCH:
        raise invalid("batch_too_large", f"at most {MAX_BATCH} vectors per request", "vectors")
    out: list[Record] = []
    seen: dict[str, int] = {}
    for i, v in enumerate(vectors):
        p = f"vectors[{i}]"
        if not isinstance(v, dict):
            raise invalid("invalid_vector", "a vector is an object {id, values, namespace?, metadata?}", p)
        extra = set(v) - {"id", "values", "namespace", "metadata"}
        if extra:
            raise invalid("unknown_field", f"unknown field {sorted(extra)[0]!r}", f"{p}.{sorted(extra)[0]}")
        vid = check_id(v.get("id"), f"{p}.id")
        meta = v.get("metadata")
        if meta is not None:
            if not isinstance(meta, dict):
                raise invalid("invalid_metadata", "metadata is a JSON object", f"{p}.metadata")
            try:
                size = len(orjson.dumps(meta))
            except TypeError:
                raise invalid("invalid_metadata", "metadata is a JSON object", f"{p}.metadata") from None
            if size > MAX_METADATA_BYTES:
                raise invalid(
                    "metadata_too_large", f"metadata is over {MAX_METADATA_BYTES} bytes", f"{p}.metadata"
                )
        rec = Record(
            vid,
            vector(v.get("values"), dims, f"{p}.values"),
            check_namespace(v.get("namespace"), f"{p}.namespace"),
            meta,
        )
        if vid in seen:  # the last one wins, as in a sequence of writes
            out[seen[vid]] = rec
        else:
            seen[vid] = len(out)
            out.append(rec)
    return out


def query(
    *,
    top_k: Any = 5,
    namespace: Any = None,
    filter: Any = None,
    return_values: Any = False,
    return_metadata: Any = "none",
    rerank: Any = None,
    mmr_lambda: Any = 0.5,
) -> Query:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise invalid("invalid_top_k", f"topK is an integer from 1 to {MAX_TOP_K}", "topK")
    if return_metadata is True:
        return_metadata = "all"
    elif return_metadata is False or return_metadata is None:
        return_metadata = "none"
    if return_metadata not in ("none", "indexed", "all"):
        raise invalid("invalid_return_metadata", "returnMetadata is none, indexed or all", "returnMetadata")
    if not isinstance(return_values, bool):
        raise invalid("invalid_return_values", "returnValues is a boolean", "returnValues")
    if rerank not in (None, "mmr"):
        raise invalid("invalid_rerank", 'rerank is "mmr" or absent', "rerank")
    if isinstance(mmr_lambda, bool) or not isinstance(mmr_lambda, int | float) or not 0 <= mmr_lambda <= 1:
        raise invalid("invalid_lambda", "lambda is a number from 0 to 1", "lambda")
    ns = None if namespace is None else check_namespace(namespace, "namespace")
    return Query(top_k, ns, F.parse(filter), return_values, return_metadata, rerank, float(mmr_lambda))


def indexed(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """returnMetadata "indexed": the filterable part (scalars, nested objects of scalars)."""
    if meta is None:
        return None
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if v is None or isinstance(v, str | int | float | bool):
            out[k] = v
        elif isinstance(v, dict):
            sub = indexed(v)
            if sub:
                out[k] = sub
    return out
