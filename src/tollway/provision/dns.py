"""DNS records: A, AAAA, CNAME, TXT and MX, validated before anything is
stored or charged; CNAME exclusivity across a zone; RFC 1035 zone files."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tollway.core.errors import conflict, invalid
from tollway.provision.names import to_ascii, within

TYPES = ("A", "AAAA", "CNAME", "TXT", "MX")
TTL_AUTO = 1  # as Cloudflare: the provider picks
TTL_MIN, TTL_MAX = 60, 86_400


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # A-label FQDN without the trailing dot
    type: str
    content: str
    ttl: int = TTL_AUTO
    priority: int | None = None  # MX only
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "dns_record",
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "content": self.content,
            "ttl": self.ttl,
            "priority": self.priority,
        }


def record(zone: str, body: dict[str, Any]) -> Record:
    """Validate one record for ``zone`` (names relative to the zone are completed)."""
    rtype = body.get("type")
    if not isinstance(rtype, str) or rtype.upper() not in TYPES:
        raise invalid("invalid_record_type", f"type must be one of {', '.join(TYPES)}", "type")
    rtype = rtype.upper()
    raw = body.get("name", zone)
    if raw == "@":
        raw = zone
    if isinstance(raw, str) and raw and not raw.endswith(".") and not within(raw.lower(), zone):
        raw = f"{raw}.{zone}"  # relative to the zone, as in a zone file
    name = to_ascii(raw, "name", service_labels=rtype == "TXT")
    if not within(name, zone):
        raise invalid("name_outside_zone", f"{name!r} is not in the zone {zone!r}", "name")
    ttl = body.get("ttl", TTL_AUTO)
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int)
        or not (ttl == TTL_AUTO or TTL_MIN <= ttl <= TTL_MAX)
    ):
        raise invalid("invalid_ttl", f"ttl is {TTL_AUTO} (automatic) or {TTL_MIN}..{TTL_MAX} seconds", "ttl")
    content = body.get("content")
    if not isinstance(content, str) or not content:
        raise invalid("invalid_content", "content is a non-empty string", "content")
    priority = body.get("priority")
    if rtype == "MX":
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 65_535:
            raise invalid("invalid_priority", "an MX record needs a priority from 0 to 65535", "priority")
    elif priority is not None:
        raise invalid("invalid_priority", f"a {rtype} record has no priority", "priority")
    return Record(name, rtype, _content(rtype, content), ttl, priority)


def _content(rtype: str, content: str) -> str:
    if rtype in ("A", "AAAA"):
        try:
            ip = ipaddress.ip_address(content.strip())
        except ValueError:
            raise invalid("invalid_content", f"{content!r} is not an IP address", "content") from None
        if (rtype == "A") != (ip.version == 4):
            want = "IPv4" if rtype == "A" else "IPv6"
            raise invalid("invalid_content", f"an {rtype} record holds an {want} address", "content")
        return str(ip)  # canonical (compressed IPv6)
    if rtype in ("CNAME", "MX"):
        target = to_ascii(content, "content")
        if "." not in target:
            raise invalid("invalid_content", f"{rtype} target {content!r} is not a full host name", "content")
        return target
    # TXT: printable text; each 255-octet piece becomes a character-string
    if len(content.encode()) > 2048:
        raise invalid("invalid_content", "a TXT record holds at most 2048 octets", "content")
    if any(ord(c) < 32 and c != "\t" for c in content):
        raise invalid("invalid_content", "a TXT record holds no control characters", "content")
    return content


def check_exclusive(zone: str, new: Record, existing: Iterable[Record]) -> None:
    """CNAME exclusivity (RFC 1034 3.6.2, RFC 2181 10.1): a name with a CNAME
    has no other record, and the zone apex has none. Also refuses exact duplicates."""
    if new.type == "CNAME" and new.name == zone:
        raise invalid("cname_at_apex", "the zone apex cannot hold a CNAME (it has SOA and NS)", "name")
    for r in existing:
        if r.name != new.name:
            continue
        if r.type == "CNAME" or new.type == "CNAME":
            raise conflict(
                "cname_conflict",
                f"{new.name} already has a {r.type} record: a CNAME must be the only record at its name",
                "name",
            )
        if (r.type, r.content, r.priority) == (new.type, new.content, new.priority):
            raise conflict("duplicate_record", f"{new.name} already has this {r.type} record", "content")


def _rel(name: str, zone: str) -> str:
    return "@" if name == zone else name[: -len(zone) - 1]


def _txt(content: str) -> str:
    data = content.encode()
    pieces = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    quoted = []
    for p in pieces:
        s = p.decode("utf-8", "backslashreplace").replace("\\", "\\\\").replace('"', '\\"')
        quoted.append(f'"{s}"')
    return " ".join(quoted)


def zone_file(zone: str, records: Iterable[Record], *, ns: str, serial: int, default_ttl: int = 300) -> str:
    """The zone in RFC 1035 master-file format (with SOA and NS)."""
    lines = [
        f"$ORIGIN {zone}.",
        f"$TTL {default_ttl}",
        f"@\tIN\tSOA\t{ns}. hostmaster.{zone}. ( {serial} 7200 3600 1209600 {default_ttl} )",
        f"@\tIN\tNS\t{ns}.",
    ]
    for r in sorted(records, key=lambda r: (r.name.count("."), r.name, r.type, r.content)):
        ttl = default_ttl if r.ttl == TTL_AUTO else r.ttl
        if r.type == "TXT":
            data = _txt(r.content)
        elif r.type == "MX":
            data = f"{r.priority} {r.content}."
        elif r.type == "CNAME":
            data = f"{r.content}."
        else:
            data = r.content
        lines.append(f"{_rel(r.name, zone)}\t{ttl}\tIN\t{r.type}\t{data}")
    return "\n".join(lines) + "\n"
