"""What a chat request writes to SQLite's WAL: frames per commit, and whose pages they are.

    .venv/bin/python bench/wal_frames.py [--seconds 5] [--concurrency 1]

A durable commit costs a `pwrite` per frame header and per page, then one
`fdatasync` of them all, so the frames a request writes are a large part of
its time on a slow disk (docs/benchmarks.md). This serves the gateway
benchmark's chat completion through a fresh `tollway serve` (SQLite `FULL`,
the mock upstream), drives it with wrk, stops the server with SIGKILL (so the
WAL stays as written; nothing checkpoints it away), then reads the WAL's
current generation frame by frame, checking each frame's checksum as SQLite
does, groups the frames into commits and names each frame's page with SQLite's
``dbstat`` (the b-tree it belongs to). Writes bench/results/wal_frames.json.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sqlite3
import struct
import sys
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

from common import admin_token, positive, serve, write_results
from gateway import HERE, free_port, gateway_config, lua, setup_customer, spawn, tollway_toml, wrk

RESULTS = HERE / "results" / "wal_frames.json"
_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683


def _checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), continued from (s0, s1)."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_commits(wal: bytes) -> list[list[int]]:
    """The page numbers each commit of the WAL's current generation wrote, in order:
    frames are read while their salts match the header's and their checksums hold,
    and a commit ends at a frame that records the database's size."""
    if len(wal) < 32:
        return []
    magic, _, page_size, _, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:32])
    if magic not in (_MAGIC_LE, _MAGIC_BE):
        raise ValueError("not a SQLite WAL file")
    big = magic == _MAGIC_BE
    if _checksum(wal[:24], 0, 0, big) != (c1, c2):
        return []
    s = (c1, c2)
    commits: list[list[int]] = []
    pending: list[int] = []
    off = 32
    while off + 24 + page_size <= len(wal):
        page, size, fs1, fs2, k1, k2 = struct.unpack(">6I", wal[off : off + 24])
        if (fs1, fs2) != (salt1, salt2):
            break
        s = _checksum(wal[off : off + 8], *s, big)
        s = _checksum(wal[off + 24 : off + 24 + page_size], *s, big)
        if s != (k1, k2):
            break
        pending.append(page)
        if size:  # a commit frame
            commits.append(pending)
            pending = []
        off += 24 + page_size
    return commits


def page_names(db: Path) -> dict[int, str]:
    """Each page of ``db`` (with its WAL beside it) → the table or index it belongs to."""
    with closing(sqlite3.connect(db)) as conn:
        return {int(p): str(n) for n, p in conn.execute("SELECT name, pageno FROM dbstat")}


def summarize(commits: list[list[int]], names: dict[int, str]) -> dict[str, Any]:
    sizes = collections.Counter(len(c) for c in commits)
    by_name: collections.Counter[str] = collections.Counter()
    for c in commits:
        by_name.update(names.get(p, "(freed since)") for p in c)
    n = max(len(commits), 1)
    # Each chat request's settle writes its usage event: the commits that touch
    # usage_events count the requests (under load one commit may hold several).
    settles = sum(1 for c in commits if any(names.get(p) == "usage_events" for p in c))
    frames = sum(len(c) for c in commits)
    return {
        "commits": len(commits),
        "frames": frames,
        "commits_with_a_settle": settles,
        "frames_per_settled_commit": round(frames / max(settles, 1), 1),
        "frames_per_commit": dict(sorted(sizes.items())),
        "frames_per_commit_by_btree": {k: round(v / n, 2) for k, v in by_name.most_common()},
    }


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/v1"
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    mock = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port)]
    home = tmp / "tollway"
    home.mkdir()
    with spawn("mock upstream", mock, f"{upstream}/models", tmp / "mock.log", dict(os.environ), 30):
        with serve(home, tollway_toml(upstream), edit=gateway_config, src=a.src) as srv:
            headers = {"Authorization": f"Bearer {setup_customer(srv.url, admin_token(home))}"}
            script = lua(tmp / "chat.lua", headers)
            load = wrk(f"{srv.url}/v1/chat/completions", script, a.concurrency, 1, a.seconds)
            os.kill(srv.pid, signal.SIGKILL)  # the WAL as written: no checkpoint on close
    snap = tmp / "snapshot"
    snap.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(home / ".tollway" / f"tollway.db{suffix}", snap / f"tollway.db{suffix}")
    commits = wal_commits((snap / "tollway.db-wal").read_bytes())
    names = page_names(snap / "tollway.db")  # opening it recovers the WAL
    last = commits[-a.last :]
    return {
        "load": {"concurrency": a.concurrency, "seconds": a.seconds, "requests": load["requests"]},
        "src": str(a.src) if a.src else "this checkout",
        "last_commits": summarize(last, names),
        "last_commits_pages": [[names.get(p, "(freed since)") for p in c] for c in last[-6:]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5, help="seconds of wrk")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--last", type=positive, default=200, help="commits to count, from the WAL's end")
    p.add_argument("--src", type=Path, default=None, help="another revision's src/ (default: this checkout)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.src is not None and not (a.src / "tollway").is_dir():
        p.error(f"{a.src} holds no tollway package (want a src/ directory)")
    with tempfile.TemporaryDirectory(prefix="tollway-wal-") as d:
        res = run(a, Path(d))
    s = res["last_commits"]
    print(f"{s['commits']} commits, {s['frames']} frames; frames a commit: {s['frames_per_commit']}")
    per = s["frames_per_settled_commit"]
    print(f"{per} frames for each commit that settled (concurrency {a.concurrency})")
    for name, per in s["frames_per_commit_by_btree"].items():
        print(f"  {per:6.2f}  {name}")
    write_results(a.out, "wal_frames", res)


if __name__ == "__main__":
    main()
