"""bench/common.py's speed probe: what a benchmark run records of the machine's speed that day."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _common() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "common.py"
    spec = importlib.util.spec_from_file_location("tollway_bench_common", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_speed_probe_measures_python_writes_and_flushes_and_leaves_nothing(tmp_path: Path) -> None:
    speed = _common().speed_probe(tmp_path, commits=5)
    assert set(speed) == {"python_ms", "pwrite_us", "fdatasync_us"}
    assert all(isinstance(v, float) and v > 0 for v in speed.values())
    assert list(tmp_path.iterdir()) == []  # its file is removed
