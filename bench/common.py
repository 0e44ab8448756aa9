"""Helpers shared by the benchmarks: percentiles, the machine, a real `tollway serve`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def positive(text: str) -> int:
    """An argparse type: a count of at least 1 (a round or a commit count of 0 would
    silently measure nothing)."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"a count of at least 1, not {text}")
    return n


def dist(ns: list[int], unit: float) -> dict[str, float]:
    """p50/p99/max (nearest rank) of nanosecond samples, in ``unit`` nanoseconds."""
    xs = sorted(ns)

    def at(q: float) -> float:
        return round(xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))] / unit, 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def rss_mb(pid: int) -> dict[str, float]:
    status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) of a process and its live children
    (tollway's span exporter): CPU per request is steadier than requests/s on a
    shared machine."""
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a child that just exited
            continue
        total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    port: int
    pid: int
    cmd: str
    ready_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# An earlier revision's sources (``src``) run through the console script it was
# installed with: tollway.cli.run where it has one, tollway.cli.main:app before.
_SCRIPT = (
    "import sys, tollway.cli as c\n"
    "sys.argv[0] = 'tollway'\n"
    "if hasattr(c, 'run'):\n    c.run()\n"
    "else:\n    from tollway.cli.main import app\n    app()\n"
)


def cli(src: Path | None = None) -> list[str]:
    exe = Path(sys.executable).with_name("tollway")
    if src is None and exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", _SCRIPT]


@contextmanager
def serve(
    tmp: Path,
    extra_toml: str = "",
    edit: Callable[[str], str] | None = None,
    src: Path | None = None,
    init: bool = True,
    init_args: tuple[str, ...] = (),
) -> Iterator[Server]:
    """`tollway init` + `tollway serve` on a free port (SQLite under ``tmp``), until healthy.
    ``src``: run another revision's sources (its ``src/`` directory) for an A/B.
    ``init=False``: serve the config and database already in ``tmp`` (a restart)."""
    cfg, env = tmp / "tollway.toml", {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    if init:
        subprocess.run(
            [*cli(src), "init", "--path", str(cfg), *init_args],
            cwd=tmp,
            env=env,
            check=True,
            capture_output=True,
        )
    if edit is not None:
        cfg.write_text(edit(cfg.read_text()))
    if extra_toml:
        cfg.write_text(cfg.read_text() + "\n" + extra_toml)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [*cli(src), "--config", str(cfg), "serve", "--port", str(port)]
    t0 = time.monotonic()
    with (tmp / "serve.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not healthy(port):
            if proc.poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError(f"tollway serve never became healthy:\n{(tmp / 'serve.log').read_text()}")
            time.sleep(0.02)
        yield Server(port, proc.pid, shlex.join(cmd), round(time.monotonic() - t0, 3))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def admin_token(tmp: Path) -> str:
    for line in (tmp / "tollway.toml").read_text().splitlines():
        if line.startswith("token = "):
            return line.split('"')[1]
    raise RuntimeError("no admin token in tollway.toml")


def git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True).stdout.strip()


def machine(**extra: Any) -> dict[str, Any]:
    info = dict(ln.split(":", 1) for ln in Path("/proc/cpuinfo").read_text().splitlines() if ":" in ln)
    mem = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
    dirty = "+dirty" if git("status", "--porcelain", "src") else ""  # uncommitted changes under src/
    return {
        "cpu": info.get("model name\t", "?").strip(),
        "cores": os.cpu_count(),
        "memory_gb": round(int(mem["MemTotal"].split()[0]) / 1024**2, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "revision": git("rev-parse", "--short", "HEAD") + dirty,
        **extra,
    }


def _python_work() -> int:
    """A fixed piece of interpreter work (calls, dict and str operations), like a request's."""
    d: dict[str, int] = {}
    for i in range(100_000):
        k = str(i & 255)
        d[k] = d.get(k, 0) + i
    return len(d)


def speed_probe(directory: Path, commits: int = 200) -> dict[str, float]:
    """How fast this machine is right now, so one run's milliseconds can be read beside
    another day's: the same code on the same machine type has run 3x slower on some days.

    - ``python_ms``: :func:`_python_work`, best of 5 (the interpreter's speed);
    - ``pwrite_us``: a 4 KiB ``pwrite`` into a file already written, the p50 over commits of
      the mean of a commit's 16 (SQLite writes each WAL frame with two; a chat request
      writes about 25 frames in two commits);
    - ``fdatasync_us``: then ``fdatasync`` of those 64 KiB, p50: the disk's flush, the floor
      of a durable commit. Commits paced 1 ms apart, like requests at concurrency 1, in
      ``directory`` (put it on the disk the databases use)."""
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        _python_work()
        runs.append(time.perf_counter() - t)
    path = directory / "speed-probe.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size, page = 4 << 20, os.urandom(4096)
        os.write(fd, bytes(size))  # written, not sparse: no block is allocated while timing
        os.fsync(fd)
        wr, sync = [], []
        for i in range(commits):
            t0 = time.perf_counter_ns()
            for j in range(16):
                os.pwrite(fd, page, ((i * 16 + j) * 4096) % size)
            t1 = time.perf_counter_ns()
            os.fdatasync(fd)
            wr.append((t1 - t0) // 16)
            sync.append(time.perf_counter_ns() - t1)
            time.sleep(0.001)
    finally:
        os.close(fd)
        path.unlink()
    return {
        "python_ms": round(min(runs) * 1000, 2),
        "pwrite_us": dist(wr, 1000)["p50"],
        "fdatasync_us": dist(sync, 1000)["p50"],
    }


def write_results(path: Path, name: str, results: dict[str, Any]) -> None:
    """``bench/results/<name>.json``: the command, the date, the machine and the results."""
    from datetime import UTC, datetime

    out = {
        "benchmark": name,
        "command": shlex.join(["python", f"bench/{name}.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


def run_in_tmp(prefix: str, run: Callable[[Path], dict[str, Any]], out: Path) -> dict[str, Any]:
    """``run`` in a temporary directory (if it fails, the tails of the logs its
    servers wrote there are printed), its result written to ``out`` as JSON."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        try:
            res = run(Path(d))
        except BaseException:
            for log in sorted(Path(d).glob("**/*.log")):
                print(f"--- {log} (tail) ---\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    return res


def print_targets(targets: list[dict[str, Any]]) -> None:
    for t in targets:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} (target {t['target']})")
