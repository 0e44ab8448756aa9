"""The embedded backend: per index, a SQLite file (the durable truth: ids,
namespaces, metadata, vectors) and a usearch HNSW graph in memory.

- A write commits to SQLite (WAL) first, then updates the graph: a batch is
  one transaction, so a crash leaves it all or nothing.
- The graph is saved on close beside the file with the generation it
  reflects; on open it is loaded only if that generation is the file's
  (otherwise, after a crash, it is rebuilt from SQLite).
- Filters apply before top k: an HNSW search widened until k matches pass
  the filter, and an exact scan of the matching vectors when widening would
  reach a large share of the index.
- One process: the graph lives in that process's memory, so a second
  process would write the same file and diverge. The first to open a root
  holds an exclusive ``flock`` on ``<root>/.lock``; any other process gets
  ``409 vector_backend_single_process`` naming pgvector (the backend that
  several processes share).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from tollway.core.errors import ErrorType, TollwayError
from tollway.vectors import filter as F
from tollway.vectors.backends._usearch import Index
from tollway.vectors.backends.base import distances, score
from tollway.vectors.shapes import IndexInfo, Match, Record

T = TypeVar("T")
_METRIC = {"cosine": "cos", "euclidean": "l2sq", "dot-product": "ip"}
EXPANSION_SEARCH = 64
EXPANSION_ADD = 128
CONNECTIVITY = 16


class _Store:
    def __init__(self, path: Path, dims: int, metric: str) -> None:
        self.path, self.dims, self.metric = path, dims, metric
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS v (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
            " ns TEXT NOT NULL, meta BLOB, vec BLOB NOT NULL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self.db.execute("INSERT OR IGNORE INTO kv VALUES ('gen', 0)")
        self.keys: dict[str, int] = {}
        self.rows: dict[int, tuple[str, str, dict[str, Any] | None]] = {}
        self.ns: dict[str, int] = {}
        self.next_key = 1
        self.dirty = False
        self.index = self._new_index()
        self._load()

    def _new_index(self) -> Index:
        ix = Index(
            ndim=self.dims,
            metric=_METRIC[self.metric],
            dtype="f32",
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        return ix

    @property
    def _snap(self) -> Path:
        return self.path.with_suffix(".usearch")

    @property
    def _snap_gen(self) -> Path:
        return self.path.with_suffix(".usearch.gen")

    def _gen(self) -> int:
        return int(self.db.execute("SELECT v FROM kv WHERE k = 'gen'").fetchone()[0])

    def _load(self) -> None:
        keys: list[int] = []
        vecs: list[bytes] = []
        for key, vid, ns, meta, vec in self.db.execute("SELECT key, id, ns, meta, vec FROM v ORDER BY key"):
            self.keys[vid] = key
            self.rows[key] = (vid, ns, orjson.loads(meta) if meta is not None else None)
            self.ns[ns] = self.ns.get(ns, 0) + 1
            keys.append(key)
            vecs.append(vec)
        self.next_key = (keys[-1] + 1) if keys else 1
        gen = self._gen()
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            if self._snap.exists() and int(self._snap_gen.read_text()) == gen:
                self.index.load(str(self._snap))
                if len(self.index) == len(keys):
                    return
                self.index = self._new_index()
        if keys:  # rebuilt from the durable rows
            mat = np.frombuffer(b"".join(vecs), dtype=np.float32).reshape(len(keys), self.dims)
            # One thread: usearch's concurrent inserts left a node now and then that no
            # search reached (kill -9 test: 2 runs in 3 missed a vector among 1,550, even
            # with every node asked for); one at a time, 16 runs in 16 found them all.
            self.index.add(np.asarray(keys, dtype=np.uint64), mat, threads=1)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self._snap_gen.unlink(missing_ok=True)
        tmp = self._snap.with_suffix(".usearch.tmp")
        self.index.save(str(tmp))
        os.replace(tmp, self._snap)
        self._snap_gen.write_text(str(self._gen()))
        self.dirty = False

    def close(self) -> None:
        self.save()
        self.db.close()

    # ------------------------------------------------------------ writes

    def write(self, recs: list[Record], replace: bool) -> list[str]:
        if not replace:
            recs = [r for r in recs if r.id not in self.keys]
        if not recs:
            return []
        plan: list[tuple[int, Record, int | None]] = []
        nk = self.next_key
        for r in recs:
            old = self.keys.get(r.id)
            plan.append((nk, r, old))
            nk += 1
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            olds = [(o,) for _, _, o in plan if o is not None]
            if olds:
                db.executemany("DELETE FROM v WHERE key = ?", olds)
            db.executemany(
                "INSERT INTO v (key, id, ns, meta, vec) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        k,
                        r.id,
                        r.namespace,
                        None if r.metadata is None else orjson.dumps(r.metadata),
                        r.values.tobytes(),
                    )
                    for k, r, _ in plan
                ],
            )
            db.execute("UPDATE kv SET v = v + 1 WHERE k = 'gen'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.dirty = True
        self.next_key = nk
        for _, _, old in plan:
            if old is not None:
                self._forget(old)
        keys = np.asarray([k for k, _, _ in plan], dtype=np.uint64)
        self.index.add(keys, np.stack([r.values for _, r, _ in plan]))
        for k, r, _ in plan:
            self.keys[r.id] = k
            self.rows[k] = (r.id, r.namespace, r.metadata)
            self.ns[r.namespace] = self.ns.get(r.namespace, 0) + 1
        return [r.id for _, r, _ in plan]

    def _forget(self, key: int) -> None:
        vid, ns, _ = self.rows.pop(key)
        self.keys.pop(vid, None)
        self.ns[ns] -= 1
        if not self.ns[ns]:
            del self.ns[ns]
        self.index.remove(key)

    def delete(self, ids: list[str]) -> list[str]:
        found = [(i, self.keys[i]) for i in dict.fromkeys(ids) if i in self.keys]
        if not found:
            return []
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM v WHERE key = ?", [(k,) for _, k in found])
            db.execute("UPDATE kv SET v = v + 1 WHERE k = 'gen'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.dirty = True
        for _, k in found:
            self._forget(k)
        return [i for i, _ in found]

    # ------------------------------------------------------------ reads

    def vectors(self, keys: list[int]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.dims), dtype=np.float32)
        got = self.index.get(np.asarray(keys, dtype=np.uint64))
        return np.asarray(got, dtype=np.float32).reshape(len(keys), self.dims)

    def get(self, ids: list[str]) -> list[Record]:
        keys = [self.keys[i] for i in dict.fromkeys(ids) if i in self.keys]
        mat = self.vectors(keys)
        out = []
        for k, v in zip(keys, mat, strict=True):
            vid, ns, meta = self.rows[k]
            out.append(Record(vid, v, ns, meta))
        return out

    def _pred(self, namespace: str | None, conds: list[F.Cond]) -> Callable[[int], bool] | None:
        if namespace is None and not conds:
            return None
        rows = self.rows

        def ok(key: int) -> bool:
            row = rows.get(key)
            if row is None:
                return False
            return (namespace is None or row[1] == namespace) and F.matches(conds, row[2])

        return ok

    def search(
        self, q: np.ndarray, k: int, namespace: str | None, conds: list[F.Cond], values: bool
    ) -> list[Match]:
        n = len(self.rows)
        if n == 0:
            return []
        pred = self._pred(namespace, conds)
        if pred is None:
            res = self.index.search(q, min(k, n))
            hits = list(zip(res.keys.tolist(), res.distances.tolist(), strict=True))
        else:
            hits = self._filtered(q, k, n, pred)
        out = []
        keys = [int(key) for key, _ in hits]
        mat = self.vectors(keys) if values else None
        for i, (key, d) in enumerate(hits):
            vid, ns, meta = self.rows[int(key)]
            out.append(Match(vid, score(self.metric, d), ns, None if mat is None else mat[i].tolist(), meta))
        return out

    def _filtered(
        self, q: np.ndarray, k: int, n: int, pred: Callable[[int], bool]
    ) -> list[tuple[int, float]]:
        count = max(4 * k, 64)
        while count < n // 4:
            res = self.index.search(q, count)
            got = [
                (key, d)
                for key, d in zip(res.keys.tolist(), res.distances.tolist(), strict=True)
                if pred(key)
            ]
            if len(got) >= k:
                return got[:k]
            count *= 4
        # Few vectors match: score every match exactly.
        keys = [key for key in self.rows if pred(key)]
        if not keys:
            return []
        d = distances(self.metric, self.vectors(keys), q)
        top = np.argsort(d, kind="stable")[:k]
        return [(keys[i], float(d[i])) for i in top]


_HELD: dict[Path, tuple[int, int]] = {}  # root -> (locked fd, users in this process)
_HELD_LOCK = threading.Lock()


def _hold(root: Path) -> None:
    """This process's exclusive hold on ``root`` (shared by its own users)."""
    root = root.resolve()
    with _HELD_LOCK:
        fd, users = _HELD.get(root, (-1, 0))
        if fd < 0:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TollwayError(
                    ErrorType.CONFLICT,
                    "vector_backend_single_process",
                    f"the embedded vector backend serves one process, and another holds {root}:"
                    ' for several processes use [vectors] backend = "pgvector"',
                ) from None
        _HELD[root] = (fd, users + 1)


def _release(root: Path) -> None:
    root = root.resolve()
    with _HELD_LOCK:
        fd, users = _HELD.get(root, (-1, 0))
        if users > 1:
            _HELD[root] = (fd, users - 1)
        elif fd >= 0:
            del _HELD[root]
            os.close(fd)  # the flock goes with it


class Embedded:
    """Stores under ``root``: ``<index id>.db`` and ``<index id>.usearch``."""

    name = "embedded"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stores: dict[str, _Store] = {}
        self._open = threading.Lock()
        self._held = False

    def _store(self, info: IndexInfo) -> _Store:
        st = self._stores.get(info.id)
        if st is None:
            with self._open:
                st = self._stores.get(info.id)
                if st is None:
                    if not self._held:  # on first use: a process that never touches vectors holds nothing
                        _hold(self.root)
                        self._held = True
                    st = _Store(self.root / f"{info.id}.db", info.dimensions, info.metric)
                    self._stores[info.id] = st
        return st

    async def _run(self, info: IndexInfo, fn: Callable[[_Store], T]) -> T:
        st = self._stores.get(info.id)
        if st is not None and st.lock.acquire(blocking=False):  # free: answer inline
            try:
                return fn(st)
            finally:
                st.lock.release()

        def locked() -> T:
            s = self._store(info)
            with s.lock:
                return fn(s)

        return await asyncio.to_thread(locked)

    async def create(self, info: IndexInfo) -> None:
        await asyncio.to_thread(self._store, info)

    async def drop(self, info: IndexInfo) -> None:
        def go() -> None:
            st = self._stores.pop(info.id, None)
            if st is not None:
                with st.lock:
                    st.db.close()
            for suffix in (".db", ".db-wal", ".db-shm", ".usearch", ".usearch.gen", ".usearch.tmp"):
                (self.root / f"{info.id}{suffix}").unlink(missing_ok=True)

        await asyncio.to_thread(go)

    async def write(self, info: IndexInfo, records: list[Record], *, replace: bool) -> list[str]:
        def go() -> list[str]:
            s = self._store(info)
            with s.lock:
                return s.write(records, replace)

        return await asyncio.to_thread(go)

    async def delete(self, info: IndexInfo, ids: list[str]) -> list[str]:
        def go() -> list[str]:
            s = self._store(info)
            with s.lock:
                return s.delete(ids)

        return await asyncio.to_thread(go)

    async def get(self, info: IndexInfo, ids: list[str]) -> list[Record]:
        return await self._run(info, lambda s: s.get(ids))

    async def search(
        self,
        info: IndexInfo,
        vec: np.ndarray,
        k: int,
        namespace: str | None,
        conds: list[F.Cond],
        values: bool,
    ) -> list[Match]:
        return await self._run(info, lambda s: s.search(vec, k, namespace, conds, values))

    async def count(self, info: IndexInfo) -> int:
        return await self._run(info, lambda s: len(s.rows))

    async def has_namespace(self, info: IndexInfo, namespace: str) -> bool:
        return await self._run(info, lambda s: namespace in s.ns)

    async def close(self) -> None:
        def go() -> None:
            for st in list(self._stores.values()):
                with st.lock:
                    st.close()
            self._stores.clear()
            if self._held:
                self._held = False
                _release(self.root)

        await asyncio.to_thread(go)
