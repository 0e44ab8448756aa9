"""Maximal marginal relevance: a second stage that trades relevance for
diversity (Carbonell & Goldstein, 1998)."""

from __future__ import annotations

import numpy as np


def _unit(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.where(n == 0, 1.0, n)


def select(query: np.ndarray, cands: np.ndarray, k: int, lam: float) -> list[int]:
    """Pick k of the candidate rows: each next one maximizes
    ``lam * sim(query, c) - (1 - lam) * max sim(c, picked)`` (cosine)."""
    if len(cands) == 0:
        return []
    c = _unit(cands.astype(np.float32))
    rel = c @ _unit(query.astype(np.float32))
    sims = c @ c.T
    picked: list[int] = []
    best_red = np.full(len(c), -np.inf, dtype=np.float32)
    for _ in range(min(k, len(c))):
        red = np.where(np.isinf(best_red), 0.0, best_red)
        score = lam * rel - (1 - lam) * red
        if picked:
            score[picked] = -np.inf
        i = int(np.argmax(score))
        picked.append(i)
        best_red = np.maximum(best_red, sims[i])
    return picked
