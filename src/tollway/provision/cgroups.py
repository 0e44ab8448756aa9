"""A worker's cgroups, where the machine lets tollway make them: cgroup v1's
``pids`` (all the worker's processes and threads, ``worker_processes``) and
``memory`` (all their memory, tmpfs pages included, ``worker_memory_mb``),
each a child of tollway's own cgroup so the limits above it still apply.
Where there is no writable v1 hierarchy (a pure cgroup v2 machine, or no
permission), workers keep their rlimits only, which is logged once."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tollway.provision")
ROOT = Path("/sys/fs/cgroup")
_warned: set[str] = set()


def _own(controller: str) -> Path | None:
    """Where this process sits in ``controller``'s v1 hierarchy (None: not mounted)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(",") and (ROOT / controller / "cgroup.procs").exists():
            return ROOT / controller / path.lstrip("/")
    return None


@dataclass(slots=True)
class Cgroup:
    dirs: list[Path]

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd``, started from a shell that first moves itself into the cgroups."""
        script = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 70; shift; done; '
        script += 'shift; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *(str(d / "cgroup.procs") for d in self.dirs), "--", *cmd]

    def remove(self) -> bool:
        """Remove the cgroups (False while a dying process is still in one: try again later)."""
        left = []
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        self.dirs = left
        return not left


def create(name: str, memory_mb: int, processes: int) -> Cgroup | None:
    limits = {
        "pids": {"pids.max": processes},
        "memory": {"memory.limit_in_bytes": memory_mb * 1024 * 1024},
    }
    made: list[Path] = []
    for ctrl, files in limits.items():
        own = _own(ctrl)
        if own is None:
            if ctrl not in _warned:
                _warned.add(ctrl)
                log.info("no cgroup v1 %s hierarchy: workers are limited by rlimits only", ctrl)
            continue
        d = own / "tollway-workers" / name
        try:
            d.mkdir(parents=True, exist_ok=True)
            made.append(d)
            for f, v in files.items():
                (d / f).write_text(str(v))
        except OSError as e:
            if ctrl not in _warned:
                _warned.add(ctrl)
                log.warning("cannot make a %s cgroup for workers (%s): rlimits only", ctrl, e)
            with contextlib.suppress(OSError):
                d.rmdir()
            if made and made[-1] == d:
                made.pop()
    return Cgroup(made) if made else None
