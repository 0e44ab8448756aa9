"""A lean HTTP/1.1 client for upstream model calls: pooled keep-alive
connections, requests written in one piece, responses parsed by httptools
(the C parser uvicorn serves with).

On the gateway's hot path a general-purpose client is the largest cost left:
aiohttp spends about 220 µs of CPU per small request here, this client about
90 µs (``docs/benchmarks.md``, "Where tollway's time goes"). It does only what
an OpenAI-compatible upstream needs: ``POST``/``GET`` with a byte body, a
``Content-Length`` or chunked response read whole or chunk by chunk (SSE),
TLS, a connect timeout and a read timeout (the longest wait for the next
bytes), and gzip/deflate if an upstream compresses anyway.

A pooled connection the upstream closed while idle is dropped when it closes;
a request that finds its reused connection dead before any answer arrives is
sent once more on a new connection (the upstream never saw it).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from tollway.observe import tracing

USER_AGENT = "tollway"
_PAUSE_AT = 1 << 20  # buffered body bytes before the socket stops being read


class TransportError(Exception):
    """The connection failed, timed out, or spoke something other than HTTP/1.1."""


class _Conn(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.loop = asyncio.get_running_loop()
        # The read deadline (while a response is awaited) and the keep-alive (while
        # pooled) share one lazy timer: a later deadline leaves it be, and when it fires
        # it acts on what is due or sets itself for what is next. A timer made and
        # cancelled for each wait and each stay in the pool cost ~10 us a request.
        self.read_deadline: float | None = None
        self.idle_until: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._header_name = b""

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: this connection is not reusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(TransportError("the upstream switched protocols"))
        except httptools.HttpParserError as e:
            self._fail(TransportError(f"malformed HTTP response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        r = self.response
        if r is not None and not r.complete:
            if exc is None and r.delimited_by_close():  # such a body ends with the connection
                r.reusable = False
                r.finish()
            else:
                r.fail(TransportError(f"connection closed by the upstream ({exc or 'EOF'})"))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.raw_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        r = self.response
        assert r is not None
        r.status = self.parser.get_status_code()
        r.got_head()

    def on_body(self, body: bytes) -> None:
        r = self.response
        assert r is not None and self.transport is not None
        r.feed(body)
        if r.buffered > _PAUSE_AT:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        r = self.response
        assert r is not None
        r.reusable = self.parser.should_keep_alive()
        r.finish()

    # -- use
    def send(self, head: bytes, body: bytes, response: Response) -> None:
        assert self.transport is not None
        self.response = response
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)

    def due(self, at: float) -> None:
        """Be checked at loop time ``at`` (a timer set sooner stays: it sets itself again)."""
        t = self._timer
        if t is not None:
            if self._timer_at <= at:
                return
            t.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self.idle_until is not None and now >= self.idle_until:
            self.close()  # pooled and unused for keepalive_s
            return
        r = self.response
        if self.read_deadline is not None and r is not None and now >= self.read_deadline:
            r.timed_out()
            return
        later = [t for t in (self.idle_until, self.read_deadline) if t is not None]
        if later:
            self.due(min(later))

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _fail(self, err: Exception) -> None:
        if self.response is not None:
            self.response.fail(err)
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class Response:
    """A response: its status and headers at once, the body read whole
    (:meth:`read`) or as it arrives (:meth:`chunks`). Release it (``async
    with`` does) so its connection goes back to the pool or is closed."""

    def __init__(self, conn: _Conn, read_timeout: float | None) -> None:
        self.conn = conn
        self.read_timeout = read_timeout
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.reusable = False
        self.buffered = 0
        self._chunks: deque[bytes] = deque()
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head = False
        self._decoder: Any = None

    # -- from the connection
    def got_head(self) -> None:
        self._head = True
        enc = self.header(b"content-encoding")
        if enc in (b"gzip", b"x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == b"deflate":
            self._decoder = zlib.decompressobj()
        self._wake()

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, err: Exception) -> None:
        if self._error is None:
            self._error = err
        self._wake()

    def timed_out(self) -> None:
        """No bytes within ``read_timeout`` of the wait for them: the connection is closed."""
        self.fail(TransportError(f"no answer from the upstream within {self.read_timeout:g} s"))
        self.conn.close()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        conn = self.conn
        w = self._waiter = conn.loop.create_future()
        if self.read_timeout is not None:
            conn.read_deadline = at = conn.loop.time() + self.read_timeout
            conn.due(at)
        try:
            await w
        finally:
            self._waiter = None
            conn.read_deadline = None
        if self._error is not None:
            raise self._error

    def delimited_by_close(self) -> bool:
        return (
            self._head
            and self.header(b"content-length") is None
            and self.header(b"transfer-encoding") is None
        )

    # -- for the caller
    def header(self, name: bytes) -> bytes | None:
        for k, v in self.raw_headers:
            if k == name:
                return v
        return None

    async def head(self) -> None:
        while not self._head:
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (decoded)."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self.buffered -= len(data)
                if self.buffered <= _PAUSE_AT:
                    self.conn.resume()
                if self._decoder is not None:
                    data = self._decoder.decompress(data)
                if data:
                    yield data
                continue
            if self.complete:
                if self._decoder is not None and (tail := self._decoder.flush()):
                    yield tail
                return
            await self._wait()

    async def read(self) -> bytes:
        if self.complete and self._decoder is None:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self.buffered = 0
            return data
        return b"".join([c async for c in self.chunks()])

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (for SSE), each without its line break."""
        rest = b""
        async for data in self.chunks():
            rest += data
            *done, rest = rest.split(b"\n")
            for line in done:
                yield line.rstrip(b"\r")
        if rest:
            yield rest

    def release(self) -> None:
        """Give the connection back if the exchange finished cleanly, else close it."""
        conn = self.conn
        if conn.response is self:
            conn.response = None
        if self.complete and self.reusable and self._error is None and not conn.closed:
            conn.pool.put(conn)
        else:
            conn.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Http1Pool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float | None = 60.0,
        keepalive_s: float = 60.0,
    ) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = u.hostname
        self.tls = u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        self.prefix = u.path.rstrip("/")
        default = 443 if self.tls else 80
        authority = self.host if self.port == default else f"{self.host}:{self.port}"
        if ":" in self.host and self.port == default:  # an IPv6 literal
            authority = f"[{self.host}]"
        elif ":" in self.host:
            authority = f"[{self.host}]:{self.port}"
        fixed = [("Host", authority), ("User-Agent", USER_AGENT), *(headers or {}).items()]
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed).encode("latin-1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_s = keepalive_s
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None

    async def request(
        self, method: str, path: str, body: bytes = b"", *, content_type: str = "application/json"
    ) -> Response:
        """Send a request and wait for the response's head; the body follows."""
        head = (
            f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1")
            + self._fixed
            + tracing.traceparent_line()  # b"" unless tracing is on
            + (
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1")
                if body or method not in ("GET", "HEAD")
                else b"\r\n"
            )
        )
        while self._idle:
            conn = self._idle.pop()
            conn.idle_until = None
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                conn.close()
                continue
            r = Response(conn, self.read_timeout)
            conn.send(head, body, r)
            try:
                await r.head()
                return r
            except TransportError:
                if r.status or r.raw_headers:  # the upstream answered something: not a stale connection
                    raise
                conn.close()  # reused and dead before any answer: the upstream never saw it
        conn = await self._connect()
        r = Response(conn, self.read_timeout)
        conn.send(head, body, r)
        try:
            await r.head()
        except BaseException:
            conn.close()
            raise
        return r

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            raise TransportError(
                f"could not connect to {self.host}:{self.port} within {self.connect_timeout:g} s"
            ) from None
        except OSError as e:
            raise TransportError(f"could not connect to {self.host}:{self.port}: {e}") from e
        self._all.add(conn)
        return conn

    def put(self, conn: _Conn) -> None:
        self._idle.append(conn)
        conn.idle_until = at = conn.loop.time() + self.keepalive_s
        conn.due(at)

    def forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        conn.idle_until = None
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
