"""Start-up benchmark: seconds from `tollway serve` to a healthy /healthz.

    .venv/bin/python bench/startup.py [--before SRC] [--runs 7]

Each run is a real `tollway serve` (SQLite) timed from the process's start
to the first 200 from /healthz: the first start on an empty database
(`tollway init --no-database`: serve runs the migrations), a restart on the
now-current database (what every later start is), and the first start as the
README runs it (`tollway init`, which creates the
database, then `tollway serve`; an earlier build's init did not). With ``--before`` (the ``src/``
directory of an earlier revision: ``git archive REV src | tar -x -C DIR``)
the same runs alternate between the two builds, so machine noise hits both
alike. Both builds' sources are compiled to bytecode first, as an install
compiles them (pip does; so does ``make run``). Models and the demo's ingest
load in the background after start-up (/healthz reports them), so they are not
part of these times.

Writes bench/results/startup.json and prints a section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import compileall
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import machine, serve

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "startup.json"


def revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    return out.stdout.strip() or "unknown"


def one(tmp: Path, src: Path | None) -> tuple[float, float, float]:
    """(first start on an empty database, restart, first start after `tollway init`) seconds."""
    empty = ("--no-database",) if src is None else ()  # an earlier build's init made no database
    with serve(tmp / "a", src=src, init_args=empty) as first:
        pass
    with serve(tmp / "a", src=src, init=False) as again:
        pass
    with serve(tmp / "b", src=src) as readme:
        pass
    return first.ready_s, again.ready_s, readme.ready_s


def imports_s(src: Path | None) -> float:
    """Seconds to import what `tollway serve` imports (the CLI and the app), in a fresh process."""
    env = {"PYTHONPATH": str(src)} if src else {}
    code = "import gc, time; t = time.perf_counter(); import tollway.cli as c; "
    code += "hasattr(c, 'run') and gc.disable(); "  # as its console script loads (tollway.cli.run)
    code += "import tollway.cli.main, tollway.api.app; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--before", type=Path, help="an earlier revision's src/ directory, for an A/B")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    builds: dict[str, Path | None] = {"now": None, **({"before": a.before} if a.before else {})}
    for src in builds.values():  # bytecode, as an install compiles it (pip; `make run`)
        compileall.compile_dir(src or HERE.parent / "src", quiet=1)
    samples: dict[str, dict[str, list[float]]] = {
        b: {"first_start_s": [], "restart_s": [], "init_then_serve_s": [], "imports_s": []} for b in builds
    }
    for i in range(a.runs):
        for b, src in builds.items() if i % 2 == 0 else reversed(builds.items()):
            with tempfile.TemporaryDirectory(prefix="tollway-startup-") as d:
                (Path(d) / "a").mkdir(), (Path(d) / "b").mkdir()
                first, again, readme = one(Path(d), src)
            samples[b]["first_start_s"].append(first)
            samples[b]["restart_s"].append(again)
            samples[b]["init_then_serve_s"].append(readme)
            samples[b]["imports_s"].append(round(imports_s(src), 3))
            print(
                f"run {i + 1} {b:<6} first start {first:.3f} s, restart {again:.3f} s,"
                f" init then serve {readme:.3f} s",
                flush=True,
            )
    medians = {b: {k: round(statistics.median(v), 3) for k, v in s.items()} for b, s in samples.items()}
    res: dict[str, Any] = {
        "command": "python bench/startup.py"
        + (f" --before {a.before}" if a.before else "")
        + f" --runs {a.runs}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": revision(),
        "machine": machine(),
        "samples": samples,
        "median": medians,
        "targets": [
            {
                "name": "restart: healthy after (s, median)",
                "measured": medians["now"]["restart_s"],
                "target": 1.0,
                "pass": medians["now"]["restart_s"] <= 1.0,
            },
            {
                "name": "first start the README way (tollway init, then serve): healthy after (s, median)",
                "measured": medians["now"]["init_then_serve_s"],
                "target": 1.0,
                "pass": medians["now"]["init_then_serve_s"] <= 1.0,
            },
            {
                "name": "first start on an empty database: healthy after (s, median)",
                "measured": medians["now"]["first_start_s"],
                "target": 1.0,
                "pass": medians["now"]["first_start_s"] <= 1.0,
            },
        ],
    }
    if a.before:
        res["now_over_before"] = {
            k: round(medians["now"][k] / medians["before"][k], 2) for k in medians["now"]
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(
        json.dumps({"median": medians, **({"now_over_before": res["now_over_before"]} if a.before else {})})
    )
    for t in res["targets"]:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} (target {t['target']})")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
