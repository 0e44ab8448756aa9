"""Give freed heap memory back to the operating system, periodically.

The server's threads (event loop, model threads, the ledger writer, SQLite and
torch workers) allocate from several glibc arenas. Memory they free stays
in those arenas, so RSS saw-tooths in a band of 10-20 MB under a steady load,
even with no leak (docs/benchmarks.md). ``malloc_trim(0)`` returns the free
pages. It runs in a worker thread every ``interval_s`` seconds, and only
where glibc provides it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("tollway.memory")


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


async def trim_forever(interval_s: float) -> None:
    trim = _malloc_trim()
    if trim is None or interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(trim, 0)
        except Exception:  # never let housekeeping take the server down
            log.warning("malloc_trim failed", exc_info=True)
