"""The broker's guarded fetch: private, loopback, link-local, metadata and
IPv6-embedded addresses refused (literal or resolved), the operator's
allow-list, the connection pinned to the checked address, bad URLs, the size
cap and timeout, no redirects, and headers stripped both ways."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from threaded import ThreadServer, free_port
from tollway.core.errors import TollwayError
from tollway.wallets.ssrf import Guard, blocked, request_headers, response_headers

SECRET = "Bearer sk_agent_0123456789abcdef"


def upstream_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/echo", methods=["GET", "POST", "PUT", "DELETE"])
    async def echo(request: Request) -> Response:
        body = await request.body()
        headers = {
            "set-cookie": "session=abc; HttpOnly",
            "server-timing": "db;dur=53",
            "x-tollway-internal": "node-7",
            "x-tollway-account": "cus_123",
            "proxy-authenticate": "Basic",
            "keep-alive": "timeout=5",
            "x-echo-auth": request.headers.get("authorization", ""),
            "x-custom": "kept",
            "payment-response": "cmVjZWlwdA==",
        }
        return JSONResponse(
            {"method": request.method, "headers": dict(request.headers), "body": body.decode()},
            headers=headers,
        )

    @app.get("/big")
    async def big(n: int, stream: bool = False) -> Response:
        if stream:  # no content-length: the cap applies while reading

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(n // 1000):
                    yield b"x" * 1000

            return StreamingResponse(chunks())
        return Response(b"x" * n)

    @app.get("/bomb")
    async def bomb() -> Response:
        return Response(gzip.compress(b"\0" * 5_000_000), headers={"content-encoding": "gzip"})

    @app.get("/redirect")
    async def redirect() -> Response:
        return Response(status_code=302, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(3)
        return {"late": "yes"}

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with ThreadServer(upstream_app()) as srv:
        yield srv.url


@pytest.fixture
async def guard() -> AsyncIterator[Guard]:
    g = Guard(["127.0.0.1"])
    yield g
    await g.aclose()


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


async def refused(g: Guard, url: str, code: str = "url_not_allowed") -> TollwayError:
    with pytest.raises(TollwayError) as e:
        await g.fetch("GET", url, timeout_s=5)
    assert e.value.code == code, e.value.message
    return e.value


# ------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.9.9.9:8080/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.10.1/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://[fc00::5]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://255.255.255.255/",
        "http://240.0.0.1/",
        "http://192.0.2.10/",
    ],
)
async def test_non_public_addresses_are_refused(url: str) -> None:
    g = Guard()
    e = await refused(g, url)
    assert e.status == 400 and e.param == "url"
    await g.aclose()


def test_public_addresses_pass_the_policy() -> None:
    for a in ("8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"):
        assert blocked(ipaddress.ip_address(a)) is None, a
    assert blocked(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata endpoint"
    assert "CGNAT" in (blocked(ipaddress.ip_address("100.100.100.100")) or "")


async def test_a_host_name_resolving_to_a_private_address_is_refused() -> None:
    g = Guard(
        resolve=fake_dns(
            {
                "internal.example": ["10.1.2.3"],
                "mixed.example": ["93.184.216.34", "127.0.0.1"],  # every address must be public
                "mapped.example": ["::ffff:192.168.0.1"],
                "meta.example": ["169.254.169.254"],
            }
        )
    )
    e = await refused(g, "http://internal.example/secret?token=abc")
    assert "internal.example resolves to an address that is private" in e.message
    assert "10.1.2.3" not in e.message and "token" not in e.message
    await refused(g, "https://mixed.example/")
    await refused(g, "http://mapped.example/")
    await refused(g, "http://meta.example/")
    await g.aclose()

    real = Guard()  # the system resolver: localhost is loopback
    await refused(real, "http://localhost:9/")
    await real.aclose()


async def test_the_allow_list() -> None:
    dns = fake_dns(
        {
            "db.internal": ["10.0.0.5"],
            "a.svc.cluster.local": ["10.96.0.10"],
            "meta.svc.cluster.local": ["169.254.169.254"],
            "other.internal": ["10.0.0.6"],
            "gcp.metadata": ["169.254.169.254"],
        }
    )
    g = Guard(["db.internal", "*.svc.cluster.local", "192.168.0.0/16", "::1", "169.254.0.0/16"], resolve=dns)
    for ok in (
        "http://db.internal/",
        "http://a.svc.cluster.local/",
        "http://192.168.7.7/",
        "http://[::1]:8/",
    ):
        await g.check(ok)
    for no in ("http://other.internal/", "http://10.0.0.5/", "http://127.0.0.1/"):
        with pytest.raises(TollwayError):
            await g.check(no)
    # Metadata endpoints pass only by an exact entry, never a wildcard or a wider CIDR.
    for no in ("http://169.254.169.254/", "http://meta.svc.cluster.local/"):
        with pytest.raises(TollwayError, match="metadata"):
            await g.check(no)
    await Guard(["169.254.169.254"]).check("http://169.254.169.254/")
    await Guard(["gcp.metadata"], resolve=dns).check("http://gcp.metadata/")

    for bad in ("not a host!", "http://x/", "10.0.0.0/33", "*."):
        with pytest.raises(ValueError, match="allow-list entry"):
            Guard([bad])


async def test_allowed_loopback_is_fetched(server: str, guard: Guard) -> None:
    r = await guard.fetch(
        "POST", server + "/echo?q=1#frag", body=b"hello", headers={"content-type": "text/plain"}
    )
    assert r.status == 200 and r.addresses == ("127.0.0.1",)
    got = json.loads(r.body)
    assert got["method"] == "POST" and got["body"] == "hello"
    assert r.url == server + "/echo?q=1"


async def test_the_connection_is_pinned_to_the_checked_address(server: str) -> None:
    """paid.test exists only in the guard's resolver: the fetch reaches the test
    server, so aiohttp connected to the checked address without a lookup of its
    own; Host is still the name. A later answer (rebinding) is checked afresh."""
    port = server.rsplit(":", 1)[1]
    calls: list[str] = []
    table = {"paid.test": ["127.0.0.1"]}
    g = Guard(["127.0.0.0/8"], resolve=fake_dns(table, calls))
    r = await g.fetch("GET", f"http://paid.test:{port}/echo")
    assert r.status == 200 and calls == ["paid.test"] and r.addresses == ("127.0.0.1",)
    assert json.loads(r.body)["headers"]["host"] == f"paid.test:{port}"

    table["paid.test"] = ["10.0.0.1"]  # the name now points inside
    await refused(g, f"http://paid.test:{port}/echo")
    assert calls == ["paid.test", "paid.test"]

    # Concurrent fetches keep their own pins: nothing listens on 127.0.0.2, so
    # every other.test fetch fails while every paid.test one succeeds.
    table.update({"paid.test": ["127.0.0.1"], "other.test": ["127.0.0.2"]})
    hosts = ["paid.test", "other.test"] * 8
    got = await asyncio.gather(
        *(g.fetch("GET", f"http://{h}:{port}/echo") for h in hosts), return_exceptions=True
    )
    outcomes = [x.code if isinstance(x, TollwayError) else getattr(x, "status", x) for x in got]
    assert outcomes == [200, "upstream_unreachable"] * 8
    await g.aclose()


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "ftp://example.com/file",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://example.com:70/",
        "http:///path-only",
        "//example.com/",
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "http://example.com:0/",
        "http://example.com:99999/",
        "http://example.com:80x/",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "http://evil.com\\@127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://under_score-.example./",
        "http://example.com/" + "a" * 3000,
    ],
)
async def test_bad_urls_are_invalid_url(url: str) -> None:
    g = Guard()
    with pytest.raises(TollwayError) as e:
        await g.fetch("GET", url)
    assert (e.value.code, e.value.status, e.value.param) == ("invalid_url", 400, "url")
    await g.aclose()


async def test_bad_methods_and_headers(guard: Guard, server: str) -> None:
    for method in ("CONNECT", "TRACE", "GE T", ""):
        with pytest.raises(TollwayError) as e:
            await guard.fetch(method, server + "/echo")
        assert e.value.code == "invalid_method"
    for headers in ({"x-a": "1\r\nx-b: 2"}, {"bad name": "v"}, {"x-a": "nul\0"}):
        with pytest.raises(TollwayError) as e:
            await guard.fetch("GET", server + "/echo", headers=headers)
        assert e.value.code == "invalid_header"


# ------------------------------------------------------------ bounds


async def test_the_size_cap(server: str, guard: Guard) -> None:
    r = await guard.fetch("GET", server + "/big?n=1000", max_bytes=1000)
    assert r.body == b"x" * 1000
    for path in ("/big?n=5000", "/big?n=5000&stream=true"):
        with pytest.raises(TollwayError) as e:
            await guard.fetch("GET", server + path, max_bytes=1000)
        assert (e.value.code, e.value.status) == ("upstream_too_large", 502)
    # A small gzip body that decodes to 5 MB: the cap counts decoded bytes.
    with pytest.raises(TollwayError) as e:
        await guard.fetch("GET", server + "/bomb", max_bytes=100_000)
    assert e.value.code == "upstream_too_large"
    # The guard still works after cutting connections short.
    assert (await guard.fetch("GET", server + "/big?n=10")).body == b"x" * 10


async def test_redirects_are_not_followed(server: str, guard: Guard) -> None:
    r = await guard.fetch("GET", server + "/redirect")
    assert r.status == 302 and r.headers["location"] == "http://169.254.169.254/latest/meta-data/"


async def test_timeouts_and_unreachable_upstreams(server: str, guard: Guard) -> None:
    with pytest.raises(TollwayError) as e:
        await guard.fetch("GET", server + "/slow", timeout_s=0.3)
    assert (e.value.code, e.value.status) == ("upstream_timeout", 504)

    closed = f"http://127.0.0.1:{free_port()}/x?token=supersecret"
    with pytest.raises(TollwayError) as e:
        await guard.fetch("GET", closed)
    assert (e.value.code, e.value.status) == ("upstream_unreachable", 502)
    assert "supersecret" not in e.value.message

    g = Guard(resolve=fake_dns({}))
    await refused(g, "http://nowhere.example/", "upstream_unreachable")
    await g.aclose()


# ------------------------------------------------------------ headers


async def test_headers_are_stripped_both_ways(server: str, guard: Guard) -> None:
    sent = {
        "Authorization": SECRET,
        "X-Agent": "a1",
        "Host": "evil.example",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "drop me",
        "Keep-Alive": "timeout=1",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Tollway-Admin": "yes",
        "X-Forwarded-For": "10.0.0.1",
        "Forwarded": "for=10.0.0.1",
        "X-Real-IP": "10.0.0.1",
        "Transfer-Encoding": "chunked",
    }
    r = await guard.fetch("GET", server + "/echo", headers=sent)
    seen = json.loads(r.body)["headers"]
    assert seen["x-agent"] == "a1" and seen["authorization"] == SECRET
    assert seen["host"] == server.removeprefix("http://")
    for gone in (
        "x-hop",
        "proxy-authorization",
        "x-tollway-admin",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
    ):
        assert gone not in seen, gone

    h = r.headers
    assert h["x-custom"] == "kept" and h["payment-response"] == "cmVjZWlwdA=="
    for gone in (
        "set-cookie",
        "server-timing",
        "x-tollway-internal",
        "x-tollway-account",
        "proxy-authenticate",
        "keep-alive",
        "content-length",
        "connection",
        "transfer-encoding",
    ):
        assert gone not in h, gone
    assert "x-echo-auth" not in h  # it carried the request's Authorization back
    assert all(SECRET not in v for v in h.values())


def test_response_header_rules() -> None:
    raw = [
        (b"Connection", b"close, X-Hop-Header"),
        (b"X-Hop-Header", b"1"),
        (b"Content-Encoding", b"gzip"),
        (b"Link", b"<a>; rel=next"),
        (b"Link", b"<b>; rel=prev"),
        (b"X-Echo", b"key=sk_live_abcdefgh12"),
        (b"X-Short", b"abc"),
        (b"Proxy-Foo", b"1"),
        (b"X-TOLLWAY-Trace", b"1"),
    ]
    h = response_headers(raw, secrets=["sk_live_abcdefgh12", "abc"])
    assert list(h.items()) == [("Link", "<a>; rel=next"), ("Link", "<b>; rel=prev"), ("X-Short", "abc")]
    assert h.getall("link") == ["<a>; rel=next", "<b>; rel=prev"]
    assert request_headers([("TE", "trailers"), ("Upgrade", "h2c"), ("Accept", "*/*")]) == [("Accept", "*/*")]
