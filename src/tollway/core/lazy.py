"""Libraries imported on first use, so `tollway serve` starts fast.

aiohttp, the eth libraries and Alembic cost a large share of start-up and
are needed only by some requests; modules import them inside the functions
that use them (types under ``TYPE_CHECKING``). What several modules need
from them lives here."""

from __future__ import annotations

import functools


@functools.cache
def aiohttp_client_error() -> type[Exception]:
    """``aiohttp.ClientError``, for an ``except`` clause."""
    import aiohttp

    return aiohttp.ClientError
