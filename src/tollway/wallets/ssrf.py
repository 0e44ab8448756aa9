"""A guarded outbound HTTP fetch, for the broker's requests on an agent's behalf
(SSRF: an agent must not reach tollway's own network through the broker).

- **The URL**: http or https, a host, no userinfo, a port in 1-65535, at most
  ``max_url_length`` characters, no whitespace or control characters, and no
  legacy numeric host (``127.1``, ``2130706433``, ``0x7f.0.0.1``); otherwise
  ``400 invalid_url``. It is parsed once, by yarl, the parser aiohttp connects
  with, so what is checked is what is fetched. The fragment is not sent.
- **The address**: the host is resolved once (``getaddrinfo``) and *every*
  address must be globally routable: loopback, private (RFC 1918, ``fc00::/7``),
  link-local, multicast, reserved, unspecified, shared (CGNAT ``100.64/10``),
  documentation and benchmarking ranges, cloud metadata endpoints, and IPv6
  forms that embed such an IPv4 address (mapped ``::ffff:a.b.c.d``, NAT64
  ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) are ``400 url_not_allowed``,
  unless the operator's allow-list permits them.
- **Pinned**: the connection goes to the addresses just checked (a resolver
  that only answers with them), never to a second lookup, so DNS rebinding
  cannot swap in another address; Host and TLS SNI/certificate checks still use
  the URL's host name. Proxies from the environment are ignored.
- **Bounded**: no redirects are followed (a 3xx comes back as it is, with its
  ``Location``: a caller that follows it fetches it through the guard again);
  one timeout covers resolving, connecting and reading (``504
  upstream_timeout``); the body is read up to ``max_bytes``, decoded (gzip,
  deflate), and a larger one is ``502 upstream_too_large``. An upstream that
  cannot be reached is ``502 upstream_unreachable``. Messages name the host,
  never the path, query or headers.
- **Headers**: requests lose hop-by-hop headers, ``Host``, ``Content-Length``,
  ``proxy-*``, ``x-tollway-*`` and forwarding headers (``Forwarded``,
  ``X-Forwarded-*``, ``X-Real-IP``). Responses lose hop-by-hop headers (and any
  the ``Connection`` header names), ``proxy-*``, ``server-timing``,
  ``x-tollway-*``, ``Set-Cookie`` (the broker is one client for many agents: a
  cookie set for it is no agent's), ``Content-Length`` and
  ``Content-Encoding`` (the body handed back is decoded, whole), and any header
  whose value contains a secret sent with the request (the values of
  ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``X-API-Key``,
  ``PAYMENT-SIGNATURE``, ``X-PAYMENT``, and any ``secrets`` given), so an
  upstream that echoes them cannot hand them back.

**The allow-list** (``allow``): entries are host names (``localhost``,
``api.internal``; exact, case-insensitive), wildcard suffixes
(``*.svc.cluster.local``: any name below it), or IP addresses and CIDRs
(``127.0.0.1``, ``10.0.0.0/8``, ``::1``). An allowed host name may resolve to
anything; a wildcard or CIDR permits its addresses, except cloud metadata
endpoints (``169.254.169.254``, ``169.254.170.2``, ``fd00:ec2::254``,
``100.100.100.200``), which only an exact address entry (or an exact host
name) lets through.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tollway.core.errors import ErrorType, TollwayError, invalid
from tollway.core.lazy import aiohttp_client_error

if TYPE_CHECKING:  # aiohttp is imported on first fetch: start-up stays fast
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = _HOP | {"host", "content-length", "forwarded", "x-real-ip"}
_REQUEST_DROP_PREFIXES = ("proxy-", "x-tollway-", "x-forwarded-")
_RESPONSE_DROP = _HOP | {"server-timing", "set-cookie", "set-cookie2", "content-length", "content-encoding"}
_RESPONSE_DROP_PREFIXES = ("proxy-", "x-tollway-")
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "payment-signature", "x-payment"}
)
_MIN_SECRET = 8  # shorter values are too common to scrub by
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110 token)
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def not_allowed(message: str) -> TollwayError:
    return invalid("url_not_allowed", message, "url")


def bad_url(message: str) -> TollwayError:
    return invalid("invalid_url", message, "url")


def upstream(code: str, message: str, status: int = 502) -> TollwayError:
    return TollwayError(ErrorType.API, code, message, status=status)


@dataclass(frozen=True, slots=True)
class Fetched:
    """An upstream's answer. ``headers`` is case-insensitive and keeps repeated
    headers (``getall``); ``body`` is decoded and whole; ``url`` is what was
    fetched (no fragment); ``addresses`` are the checked IPs the connection was
    pinned to (the literal, for an IP URL)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str
    addresses: tuple[str, ...]


# ------------------------------------------------------------------ policy


def blocked(ip: IP) -> str | None:
    """Why an address is not a public destination (None: it is)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = ip.ipv4_mapped
        if embedded is None and any(ip in n for n in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None:
            embedded = ip.sixtofour
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is not None:
            why = blocked(embedded)
            return f"{why} (an IPv4 address inside IPv6)" if why else None
    if ip in METADATA:
        return "a cloud metadata endpoint"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _CGNAT:
        return "shared address space (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _unmapped(ip: IP) -> IP:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_key(host: str) -> str:
    return host.rstrip(".").lower()


class Allow:
    """The operator's allow-list (see the module's doc)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        hosts: set[str] = set()
        suffixes: list[str] = []
        nets: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower()
            try:
                nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            wildcard = entry.startswith("*.")
            name = entry[2:] if wildcard else entry
            try:
                name = _host_key(URL.build(scheme="http", host=name).raw_host or "")
            except ValueError:
                name = ""
            if not _HOSTNAME.match(name):
                raise ValueError(f"allow-list entry {raw!r} is not a host name, *.suffix, IP address or CIDR")
            if wildcard:
                suffixes.append("." + name)
            else:
                hosts.add(name)
        self.hosts = frozenset(hosts)
        self.suffixes = tuple(suffixes)
        self.nets = tuple(nets)
        self.exact = frozenset(n.network_address for n in nets if n.num_addresses == 1)

    def host(self, host: str) -> bool:
        return _host_key(host) in self.hosts

    def permits(self, host: str, ip: IP) -> bool:
        """May ``host``, resolved to ``ip``, be fetched (it is not public)?"""
        if self.host(host):
            return True
        ip = _unmapped(ip)
        if ip in METADATA:
            return ip in self.exact
        key = _host_key(host)
        if any(key.endswith(s) for s in self.suffixes):
            return True
        return any(ip.version == n.version and ip in n for n in self.nets)


# ------------------------------------------------------------ the resolver

# The checked addresses of the host being fetched, for this task only.
_PIN: ContextVar[tuple[str, list[ResolveResult]] | None] = ContextVar("tollway_ssrf_pin", default=None)


@functools.cache
def _pinned_resolver() -> type[AbstractResolver]:
    from aiohttp.abc import AbstractResolver, ResolveResult

    class _PinnedResolver(AbstractResolver):
        """Answers aiohttp's lookups with the addresses the guard just checked, and
        nothing else: a host it was not asked about does not resolve."""

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            pin = _PIN.get()
            if pin is None or pin[0] != _host_key(host):
                raise OSError(f"{host} was not checked by the SSRF guard")
            out = [
                ResolveResult(
                    hostname=r["hostname"],
                    host=r["host"],
                    port=port,
                    family=r["family"],
                    proto=r["proto"],
                    flags=r["flags"],
                )
                for r in pin[1]
                if family in (socket.AF_UNSPEC, r["family"])
            ]
            if not out:
                raise OSError(f"{host} has no checked address of family {family}")
            return out

        async def close(self) -> None:
            return None

    return _PinnedResolver


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


# ------------------------------------------------------------------ guard


class Guard:
    """Fetch URLs an agent names, refusing tollway's own network (see the module's doc).

    ``allow``: the operator's allow-list. ``resolve``: ``async (host, port) ->
    [ip, ...]`` (getaddrinfo unless given; tests inject one). One aiohttp
    session, opened on first use; ``aclose()`` closes it."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        *,
        max_url_length: int = MAX_URL_LENGTH,
        resolve: Resolve | None = None,
        connections: int = 100,
    ) -> None:
        self.allow = Allow(allow)
        self.max_url_length = max_url_length
        self._resolve = resolve or _getaddrinfo
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=_pinned_resolver()(), use_dns_cache=False, limit=self._connections
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no HTTP(S)_PROXY: a proxy would connect wherever it likes
                auto_decompress=True,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------ checks

    def check_url(self, url: str) -> URL:
        """The URL, parsed and checked for form (no lookup): ``invalid_url`` otherwise."""
        if not isinstance(url, str) or not url:
            raise bad_url("url must be a non-empty string")
        if len(url) > self.max_url_length:
            raise bad_url(f"the URL is longer than {self.max_url_length} characters")
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            raise bad_url("the URL contains whitespace or control characters")
        try:
            u = URL(url)
            port = u.port
            host = u.raw_host
        except (ValueError, TypeError) as e:
            raise bad_url(f"the URL does not parse: {e}") from None
        if u.scheme not in ("http", "https"):
            raise bad_url("only http and https URLs can be fetched")
        if not host:
            raise bad_url("the URL has no host")
        if u.user is not None or u.password is not None or "@" in (u.raw_authority or ""):
            raise bad_url("URLs with credentials (user:password@) are not fetched")
        if port is None or not 1 <= port <= 65535:
            raise bad_url("the port must be between 1 and 65535")
        if _literal(host) is None:
            labels = _host_key(host).split(".")
            if _NUMERIC_LABEL.match(labels[-1]):
                raise bad_url("the host is a numeric address but not a canonical IP address")
            if not _HOSTNAME.match(_host_key(host)):
                raise bad_url("the host is not a valid host name")
        return u.with_fragment(None)

    async def check(self, url: str) -> tuple[URL, list[ResolveResult]]:
        """The URL checked for form, its host resolved and every address checked:
        the addresses a fetch may connect to. ``url_not_allowed`` otherwise."""
        u = self.check_url(url)
        host = u.raw_host or ""
        port = u.port or 0
        literal = _literal(host)
        if literal is not None:
            self._check_ip(host, literal, host)
            return u, []  # aiohttp connects to a literal without resolving it
        try:
            addrs = await self._resolve(host, port)
        except (OSError, UnicodeError):
            raise upstream("upstream_unreachable", f"{u.host} does not resolve") from None
        if not addrs:
            raise upstream("upstream_unreachable", f"{u.host} does not resolve")
        pinned: list[ResolveResult] = []
        for a in dict.fromkeys(addrs):
            try:
                ip = ipaddress.ip_address(a.split("%", 1)[0])
            except ValueError:
                raise not_allowed(f"{u.host} resolves to something that is not an IP address") from None
            self._check_ip(host, ip, u.host or host)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
            pinned.append(
                {
                    "hostname": host,
                    "host": str(ip),
                    "port": port,
                    "family": family,
                    "proto": 0,
                    "flags": flags,
                }
            )
        return u, pinned

    def _check_ip(self, host: str, ip: IP, shown: str) -> None:
        why = blocked(ip)
        if why is not None and not self.allow.permits(host, ip):
            if _literal(host) is not None:
                raise not_allowed(f"{shown} is {why}: not fetched unless the operator allows it")
            raise not_allowed(f"{shown} resolves to an address that is {why}: not fetched")

    # ------------------------------------------------------------ fetch

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | None = None,
        timeout_s: float = 30.0,
        max_bytes: int = 10 * 2**20,
        secrets: Iterable[str] = (),
    ) -> Fetched:
        """One request to ``url`` (checked, resolved, pinned), its answer read whole.
        ``secrets``: more values no response header may carry back."""
        method = method.upper() if isinstance(method, str) else ""
        if method not in METHODS:
            raise invalid("invalid_method", f"method must be one of {', '.join(sorted(METHODS))}", "method")
        send = request_headers(headers or ())
        secret_values = [*secrets, *(v for k, v in send if k.lower() in SECRET_HEADERS)]
        try:
            async with asyncio.timeout(timeout_s):
                u, pinned = await self.check(url)
                token = _PIN.set((_host_key(u.raw_host or ""), pinned))
                try:
                    status, headers_out, data = await self._send(
                        method, u, send, body, max_bytes, secret_values
                    )
                finally:
                    _PIN.reset(token)
        except TimeoutError:
            raise upstream(
                "upstream_timeout", f"{_shown(url)} did not answer within {timeout_s:g} s", 504
            ) from None
        except (aiohttp_client_error(), OSError) as e:
            raise upstream(
                "upstream_unreachable", f"{_shown(url)} could not be fetched: {type(e).__name__}"
            ) from None
        addresses = tuple(p["host"] for p in pinned) or (str(_literal(u.raw_host or "")),)
        return Fetched(status, headers_out, data, str(u), addresses)

    async def _send(
        self,
        method: str,
        u: URL,
        headers: list[tuple[str, str]],
        body: bytes | None,
        max_bytes: int,
        secrets: list[str],
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        async with self.session.request(
            method, u, headers=headers, data=body, allow_redirects=False, compress=None
        ) as r:
            size = r.content_length
            if size is not None and size > max_bytes and "content-encoding" not in r.headers:
                r.close()
                raise _too_large(u, max_bytes)
            buf = bytearray()
            async for chunk in r.content.iter_chunked(65536):
                buf += chunk
                if len(buf) > max_bytes:
                    r.close()
                    raise _too_large(u, max_bytes)
            return r.status, response_headers(r.raw_headers, secrets), bytes(buf)


def _too_large(u: URL, max_bytes: int) -> TollwayError:
    return upstream("upstream_too_large", f"{u.host}'s response is larger than {max_bytes} bytes")


def _shown(url: str) -> str:
    """A URL as error messages name it: its host only."""
    try:
        return URL(url).host or "the upstream"
    except (ValueError, TypeError):
        return "the upstream"


def _literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# ------------------------------------------------------------------ headers


def request_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers to send: well formed (``invalid_header`` otherwise), without
    hop-by-hop, host, length, proxy, forwarding or ``x-tollway-*`` headers."""
    items = list(headers.items() if isinstance(headers, Mapping) else headers)
    named = {t.strip().lower() for k, v in items if k.lower() == "connection" for t in v.split(",")}
    out = []
    for k, v in items:
        if not isinstance(k, str) or not isinstance(v, str) or not _TOKEN.match(k) or _BAD_VALUE.search(v):
            raise invalid("invalid_header", "header names must be tokens and values one line", "headers")
        name = k.lower()
        if name in _REQUEST_DROP or name in named or name.startswith(_REQUEST_DROP_PREFIXES):
            continue
        out.append((k, v))
    return out


def _str(v: bytes | str) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


def response_headers(
    raw: Iterable[tuple[bytes | str, bytes | str]], secrets: Iterable[str] = ()
) -> CIMultiDictProxy[str]:
    """An upstream's headers as they may be handed back (see the module's doc)."""
    strs = [(_str(k), _str(v)) for k, v in raw]
    named = {t.strip().lower() for k, v in strs if k.lower() == "connection" for t in v.split(",")}
    scrub = [s for s in secrets if len(s) >= _MIN_SECRET]
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in strs:
        name = k.lower()
        if name in _RESPONSE_DROP or name in named or name.startswith(_RESPONSE_DROP_PREFIXES):
            continue
        if any(s in v for s in scrub):
            continue
        out.add(k, v)
    return CIMultiDictProxy(out)
