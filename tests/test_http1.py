"""The upstream HTTP/1.1 client, against raw sockets that answer exactly what
each test needs: framing (length, chunked, close), keep-alive reuse, a pooled
connection the server closed, timeouts, refusals, garbage and compression."""

from __future__ import annotations

import asyncio
import functools
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop

from tollway.inference.backends.http1 import Http1Pool, TransportError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on a free port; yields its URL and the list of connections it accepted."""
    conns: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", conns
    finally:
        srv.close()


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(reader)
        path = head.split(b" ")[1]
        writer.write(answer(path + b"|" + body))
        await writer.drain()


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async with server(echo_forever) as (url, conns):
        pool = Http1Pool(url, {"Authorization": "Bearer k"})
        for i in range(5):
            async with await pool.request("POST", "/chat/completions", b'{"n":%d}' % i) as r:
                assert r.status == 200
                assert await r.read() == b'/v1/chat/completions|{"n":%d}' % i
        assert len(conns) == 1
        await pool.aclose()


async def test_the_request_carries_host_length_type_and_the_fixed_headers() -> None:
    seen: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        seen.append(head + body)
        writer.write(answer(b"{}"))
        await writer.drain()

    async with server(capture) as (url, _):
        pool = Http1Pool(url, {"Authorization": "Bearer sk-1"})
        async with await pool.request("POST", "/embeddings", b'{"a":1}'):
            pass
        await pool.aclose()
    text = seen[0].decode()
    port = url.split(":")[2].split("/")[0]
    assert text.startswith("POST /v1/embeddings HTTP/1.1\r\n")
    for h in (f"Host: 127.0.0.1:{port}", "Authorization: Bearer sk-1", "Content-Length: 7"):
        assert h + "\r\n" in text
    assert "Content-Type: application/json\r\n" in text and text.endswith('\r\n\r\n{"a":1}')


async def test_chunked_bodies_arrive_decoded_and_line_by_line() -> None:
    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"data: one\n", b"\ndata: t", b"wo\r\n\r\ndata: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep the connection open

    async with server(sse) as (url, _):
        pool = Http1Pool(url)
        async with await pool.request("POST", "/chat/completions", b"{}") as r:
            lines = [line async for line in r.lines()]
        assert lines == [b"data: one", b"", b"data: two", b"", b"data: [DONE]", b""]
        await pool.aclose()


async def test_a_body_delimited_by_the_close_is_read_whole_and_not_reused() -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with server(old_style) as (url, conns):
        pool = Http1Pool(url)
        for _ in range(2):
            async with await pool.request("GET", "/models") as r:
                assert await r.read() == b"all of it"
        assert len(conns) == 2
        await pool.aclose()


async def test_a_pooled_connection_the_server_dropped_is_replaced_transparently() -> None:
    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"ok"))  # keep-alive promised, then the server goes away
        await writer.drain()

    async with server(one_answer_then_close) as (url, conns):
        pool = Http1Pool(url)
        for _ in range(3):
            async with await pool.request("POST", "/x", b"{}") as r:
                assert await r.read() == b"ok"
            await asyncio.sleep(0.02)
        assert len(conns) == 3
        await pool.aclose()


async def test_a_reused_connection_that_dies_mid_request_is_retried_once_on_a_new_one() -> None:
    served = 0

    async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(answer(b"first"))
        await writer.drain()
        await read_request(reader)  # the reused connection's request: dropped unanswered
        writer.transport.abort()

    async with server(drop_second) as (url, conns):
        pool = Http1Pool(url)
        for _ in range(2):
            async with await pool.request("POST", "/x", b"{}") as r:
                assert await r.read() == b"first"
        assert len(conns) == 2 and served == 2
        await pool.aclose()


async def test_a_connection_dropped_mid_body_is_an_error_not_a_short_answer() -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some")
        await writer.drain()
        writer.transport.abort()

    async with server(truncate) as (url, _):
        pool = Http1Pool(url)
        r = await pool.request("POST", "/x", b"{}")
        with pytest.raises(TransportError, match="closed"):
            await r.read()
        r.release()
        await pool.aclose()


async def test_read_timeout_connect_refusal_and_garbage_are_transport_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with server(silent) as (url, _):
        pool = Http1Pool(url, read_timeout=0.1)
        with pytest.raises(TransportError, match=r"within 0\.1 s"):
            await pool.request("POST", "/x", b"{}")
        await pool.aclose()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with server(garbage) as (url, _):
        pool = Http1Pool(url, read_timeout=2)
        with pytest.raises(TransportError, match="malformed"):
            await pool.request("POST", "/x", b"{}")
        await pool.aclose()

    async with server(echo_forever) as (url, _):
        pass  # closed: nothing listens on that port any more
    pool = Http1Pool(url)
    with pytest.raises(TransportError, match="could not connect"):
        await pool.request("POST", "/x", b"{}")


async def test_the_read_timeout_is_per_wait_mid_body_too() -> None:
    """The timeout is the longest wait for the next bytes: a body that keeps coming, a
    chunk every 0.05 s for 0.6 s, outlasts a 0.2 s timeout many times over (the one
    lazy timer sets itself again); a body that stops for longer fails, mid-body."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        pause = 0.6 if b"/stall" in head else 0.05
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(12):
            await asyncio.sleep(pause if i == 3 else 0.05)
            writer.write(b"1\r\n%d\r\n" % (i % 10))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(trickle) as (url, _):
        pool = Http1Pool(url, read_timeout=0.2)
        async with await pool.request("GET", "/steady") as r:
            assert await r.read() == b"012345678901"
        async with await pool.request("GET", "/stall") as r:
            with pytest.raises(TransportError, match=r"within 0\.2 s"):
                await r.read()
        await pool.aclose()


async def test_a_pooled_connection_is_closed_after_keepalive_s() -> None:
    async with server(echo_forever) as (url, conns):
        pool = Http1Pool(url, keepalive_s=0.2, read_timeout=30)
        for _ in range(2):
            async with await pool.request("POST", "/x", b"{}") as r:
                await r.read()
        assert len(conns) == 1 and len(pool._idle) == 1
        await asyncio.sleep(0.1)
        async with await pool.request("POST", "/x", b"{}") as r:  # used again: its keep-alive restarts
            await r.read()
        await asyncio.sleep(0.15)
        assert len(pool._idle) == 1 and len(conns) == 1  # 0.25 s since it was first pooled
        await asyncio.sleep(0.25)
        assert pool._idle == [] and not pool._all  # idle 0.4 s: closed
        async with await pool.request("POST", "/x", b"{}") as r:
            await r.read()
        assert len(conns) == 2
        await pool.aclose()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_answers_are_decompressed(encoding: str) -> None:
    data = b'{"choices": []}' * 50
    packed = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)

    async def compressed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(packed, b"Content-Encoding: %s\r\n" % encoding.encode()))
        await writer.drain()
        await reader.read()

    async with server(compressed) as (url, _):
        pool = Http1Pool(url)
        async with await pool.request("POST", "/x", b"{}") as r:
            assert await r.read() == data
        await pool.aclose()


async def test_a_large_body_is_streamed_with_back_pressure() -> None:
    size = 5 * (1 << 20)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        await reader.read()

    async with server(big) as (url, _):
        pool = Http1Pool(url)
        got = 0
        async with await pool.request("GET", "/big") as r:
            async for chunk in r.chunks():
                got += len(chunk)
                assert r.buffered <= 2 * (1 << 20) + 65536 * 4
                await asyncio.sleep(0)
        assert got == size
        await pool.aclose()


def test_only_http_urls_make_a_pool() -> None:
    with pytest.raises(ValueError):
        Http1Pool("ftp://example.com")
    assert Http1Pool("https://api.openai.com/v1").port == 443


# `tollway serve` runs on uvloop, whose transports are not asyncio's classes:
# every case once more on it.
UVLOOP_CASES = [
    test_requests_reuse_one_keep_alive_connection,
    test_the_request_carries_host_length_type_and_the_fixed_headers,
    test_chunked_bodies_arrive_decoded_and_line_by_line,
    test_a_body_delimited_by_the_close_is_read_whole_and_not_reused,
    test_a_pooled_connection_the_server_dropped_is_replaced_transparently,
    test_a_reused_connection_that_dies_mid_request_is_retried_once_on_a_new_one,
    test_a_connection_dropped_mid_body_is_an_error_not_a_short_answer,
    test_read_timeout_connect_refusal_and_garbage_are_transport_errors,
    test_the_read_timeout_is_per_wait_mid_body_too,
    test_a_pooled_connection_is_closed_after_keepalive_s,
    functools.partial(test_compressed_answers_are_decompressed, "gzip"),
    test_a_large_body_is_streamed_with_back_pressure,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda f: getattr(f, "__name__", "compressed"))
def test_on_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(case())  # type: ignore[arg-type]
