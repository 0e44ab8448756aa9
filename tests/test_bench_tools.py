"""bench/'s measuring tools: the speed probe every gateway run records, and the WAL
reader bench/wal_frames.py counts a request's frames with."""

from __future__ import annotations

import argparse
import importlib.util
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@contextmanager
def _bench_modules(*names: str) -> Iterator[list[ModuleType]]:
    """bench/ modules by path, with their bench/ siblings (``common``, ``gateway``)
    importable while they load and gone from sys.modules after: bench/ is never left
    on sys.path, where its x402.py would shadow the official SDK."""
    saved = {n: sys.modules.pop(n) for n in ("common", "gateway") if n in sys.modules}
    sys.path.insert(0, str(BENCH))
    try:
        mods = []
        for name in names:
            spec = importlib.util.spec_from_file_location(f"tollway_bench_{name}", BENCH / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # its dataclasses look their module up
            spec.loader.exec_module(module)
            mods.append(module)
        yield mods
    finally:
        sys.path.remove(str(BENCH))
        for n in ("common", "gateway"):
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def test_speed_probe_measures_python_writes_and_flushes_and_leaves_nothing(tmp_path: Path) -> None:
    with _bench_modules("common") as (common,):
        speed = common.speed_probe(tmp_path, commits=5)
    assert set(speed) == {"python_ms", "pwrite_us", "fdatasync_us"}
    assert all(isinstance(v, float) and v > 0 for v in speed.values())
    assert list(tmp_path.iterdir()) == []  # its file is removed


def test_wal_reader_finds_each_commit_and_names_its_pages(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # every commit stays in the WAL
    conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE b (k TEXT PRIMARY KEY, v TEXT)")  # a rowid table and its key's index
    for i in range(3):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO a (v) VALUES (?)", (f"row {i}",))
        conn.execute("INSERT INTO b VALUES (?, ?)", (f"k{i}", "x"))
        conn.execute("COMMIT")
    wal = (tmp_path / "t.db-wal").read_bytes()
    with _bench_modules("wal_frames") as (wf,):
        commits = wf.wal_commits(wal)
        names = wf.page_names(db)
        # A frame whose bytes changed fails its checksum: the reading stops there.
        torn = bytearray(wal)
        torn[-100] ^= 0xFF
        assert len(wf.wal_commits(bytes(torn))) == len(commits) - 1
        summary = wf.summarize(commits[-3:], names)
    conn.close()
    assert len(commits) == 5  # two CREATE TABLEs, then the three inserts
    for c in commits[-3:]:
        assert sorted(names[p] for p in c) == ["a", "b", "sqlite_autoindex_b_1"]
    assert summary["frames_per_commit"] == {3: 3}
    assert summary["frames_per_commit_by_btree"] == {"a": 1.0, "b": 1.0, "sqlite_autoindex_b_1": 1.0}


def test_an_ab_build_is_a_name_a_source_and_a_config_and_anything_else_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tollway").mkdir(parents=True)
    with _bench_modules("gateway_ab") as (ab,):
        assert ab.parse_build("head") == ("head", None, "full")
        assert ab.parse_build("n=:normal") == ("n", None, "normal")
        assert ab.parse_build(f"before={src}:fast") == ("before", src, "fast")
        for bad in ("", "=x", "x:slow", f"x={tmp_path}"):  # no name; no config of that name; no tollway/
            with pytest.raises(argparse.ArgumentTypeError):
                ab.parse_build(bad)


async def test_ledger_bench_runs_two_phase_and_reads_the_writer_counters(tmp_path: Path) -> None:
    """bench/ledger.py's workload, small: it reads the ledger's own batch counters
    (once broken by a change of the metrics' types, unnoticed until a run)."""
    with _bench_modules("ledger") as (ledger,):
        res = await ledger.two_phase(None, tmp_path, workers=8, count=40, batch_max=64, reads=20)
    assert res["two_phase_transfers"] == 40 and res["two_phase_per_s"] > 0
    assert res["mean_batch_size"] >= 1 and 0 < res["writer_busy_fraction"]
    assert res["balance_read_us"]["reads"] == 20


def test_gateway_summary_takes_the_median_of_each_rounds_ratio() -> None:
    """bench/gateway.py --load-rounds: each round's ratio is the setup's best level over
    LiteLLM's best level in that round; the target row reports their median beside the
    single point's ratio."""
    with _bench_modules("gateway") as (gw,):
        setups = gw.SETUPS
        point = {"p50_ms": 1.0, "p99_ms": 2.0, "rps": 1.0, "requests": 1}
        points = {s: {"1": dict(point), "16": dict(point), "64": dict(point)} for s in setups}
        # a round where durable's single point lagged: 1,000 / 100 = 10x at c=64
        rps = {s: {"16": [900.0, 1500.0, 1400.0], "64": [1000.0, 1600.0, 1200.0]} for s in setups}
        rps["litellm"] = {"16": [100.0, 110.0, 100.0], "64": [90.0, 100.0, 120.0]}
        for s in setups:
            for c in ("16", "64"):
                points[s][c]["rps"] = rps[s][c][0]
        r = {"points": points, "rounds_c1_p50_ms": {}, "rounds_load_rps": rps}
        gw.summarize(r)
    # rounds: max(900, 1000) / 100 = 10.0; 1600 / 110 = 14.55; 1400 / 120 = 11.67 → median 11.67
    assert r["rps_ratio_rounds"]["tollway"] == 11.67
    rows = {t["name"]: t for t in r["targets"]}
    single = rows["tollway (FULL) max RPS / LiteLLM max RPS"]
    median = rows["tollway (FULL) max RPS / LiteLLM max RPS, median of 3 rounds"]
    assert (single["measured"], single["pass"]) == (10.0, False)
    assert (median["measured"], median["pass"]) == (11.67, False)


def test_gateway_summary_without_load_rounds_has_no_median_row() -> None:
    with _bench_modules("gateway") as (gw,):
        point = {"p50_ms": 1.0, "p99_ms": 2.0, "rps": 100.0, "requests": 1}
        r = {"points": {s: {"1": dict(point), "16": dict(point)} for s in gw.SETUPS}, "rounds_load_rps": {}}
        gw.summarize(r)
    assert "rps_ratio_rounds" not in r
    assert not any("median of" in t["name"] for t in r["targets"])


def test_round_and_commit_counts_below_one_are_refused() -> None:
    """--rounds, --load-rounds (gateway.py, gateway_ab.py) and --last (wal_frames.py):
    0 or a negative count would silently measure nothing."""
    with _bench_modules("common") as (common,):
        assert common.positive("3") == 3
        for bad in ("0", "-1"):
            with pytest.raises(argparse.ArgumentTypeError):
                common.positive(bad)
        with pytest.raises(ValueError):
            common.positive("many")
