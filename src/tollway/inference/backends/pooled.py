"""What every HTTP upstream backend shares: its provider name, its headers with
the API key from ``api_key_env``, and one kept-alive :class:`Http1Pool`, made on
first use inside the event loop."""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit

from tollway.inference.backends.http1 import Http1Pool
from tollway.inference.config import ModelConfig


class PooledUpstream:
    def __init__(
        self, cfg: ModelConfig, kind: str, headers: dict[str, str], auth: Callable[[str], dict[str, str]]
    ) -> None:
        """``kind`` names the provider (``openai:<host>``); ``auth`` turns the key into its headers."""
        self.cfg = cfg
        self.provider = f"{kind}:{urlsplit(cfg.base_url).hostname}"
        self.base = cfg.base_url.rstrip("/")
        self.headers = dict(headers)
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if key:
            self.headers.update(auth(key))
        self._pool: Http1Pool | None = None
        self.model = cfg.upstream_model or cfg.name

    @property
    def http(self) -> Http1Pool:
        if self._pool is None:
            self._pool = Http1Pool(
                self.base, self.headers, connect_timeout=5.0, read_timeout=self.cfg.timeout_seconds
            )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
