"""Several processes started together: each runs ``script`` with its JSON
config, says ``ready`` once connected, starts on ``go`` (all at once), and
prints its result as JSON on its last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_together(script: str, cfgs: list[dict[str, Any]], logs: Path, timeout: float = 240) -> list[Any]:
    """Each process's result, in order; its stderr is in ``logs/w<i>.log``."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, cfg in enumerate(cfgs):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, json.dumps(cfg)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=(logs / f"w{i}.log").open("w"),
                    text=True,
                )
            )
        for i, p in enumerate(procs):
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", (logs / f"w{i}.log").read_text()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        out = []
        for i, p in enumerate(procs):
            text, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, (logs / f"w{i}.log").read_text()
            out.append(json.loads(text.strip().splitlines()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
