"""Names (RFC 1035 + IDNA), DNS records (types, addresses, TTLs, MX
priorities, CNAME exclusivity), zone files (parsed back with dnspython) and
bundles (traversal, links, entrypoints)."""

from __future__ import annotations

import io
import tarfile
import zipfile

import dns.zone
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.core.errors import TollwayError
from tollway.provision import bundles
from tollway.provision.dns import Record, check_exclusive, record, zone_file
from tollway.provision.names import registrable, to_ascii, to_unicode

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(lambda s: s[2:4] != "--")


@given(st.lists(label, min_size=1, max_size=5))
def test_valid_ldh_names_round_trip(labels: list[str]) -> None:
    name = ".".join(labels)
    assert to_ascii(name.upper() + ".") == name


@given(st.text(min_size=1, max_size=80))
def test_any_string_is_a_valid_name_or_a_400(text: str) -> None:
    try:
        out = to_ascii(text)
    except TollwayError as e:
        assert e.status == 400 and e.code == "invalid_name"
        return
    assert len(out) <= 253 and all(1 <= len(p) <= 63 for p in out.split("."))
    assert out.isascii() and out == out.lower()


def test_idna_and_limits() -> None:
    assert to_ascii("Bücher.example") == "xn--bcher-kva.example"
    assert to_unicode("xn--bcher-kva.example") == "bücher.example"
    for bad in (
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4) + ".com",
        "a..b",
        "-a.com",
        "a-.com",
        "a_b.com",
        "",
    ):
        with pytest.raises(TollwayError):
            to_ascii(bad)
    assert registrable("Shop.COM", {"com"}) == ("shop.com", "com")
    with pytest.raises(TollwayError, match="not sold"):
        registrable("shop.zzz", {"com"})


def test_records_are_validated_and_canonical() -> None:
    z = "ex.com"
    assert record(z, {"type": "aaaa", "name": "www", "content": "2001:DB8:0:0::1"}).content == "2001:db8::1"
    assert (
        record(z, {"type": "CNAME", "name": "a", "content": "Target.Example.NET."}).content
        == "target.example.net"
    )
    assert record(z, {"type": "TXT", "name": "_dmarc", "content": "v=DMARC1"}).name == "_dmarc.ex.com"
    with pytest.raises(TollwayError, match="service label"):
        record(z, {"type": "TXT", "name": "_-x", "content": "v"})
    with pytest.raises(TollwayError):
        record(z, {"type": "A", "name": "_dmarc", "content": "10.0.0.1"})  # underscores only for TXT


def test_cname_exclusivity() -> None:
    z = "ex.com"
    a = Record("www.ex.com", "A", "10.0.0.1")
    c = Record("www.ex.com", "CNAME", "x.example.net")
    with pytest.raises(TollwayError, match="only record"):
        check_exclusive(z, c, [a])
    with pytest.raises(TollwayError, match="only record"):
        check_exclusive(z, a, [c])
    with pytest.raises(TollwayError, match="apex"):
        check_exclusive(z, Record("ex.com", "CNAME", "x.example.net"), [])
    with pytest.raises(TollwayError, match="already has"):
        check_exclusive(z, a, [a])
    check_exclusive(z, Record("www.ex.com", "A", "10.0.0.2"), [a])  # two A records are fine


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=600))
def test_any_txt_content_survives_the_zone_file(text: str) -> None:
    r = record("ex.com", {"type": "TXT", "name": "t", "content": text})
    z = dns.zone.from_text(zone_file("ex.com", [r], ns="ns1.t.test", serial=1), origin="ex.com.")
    assert b"".join(z.find_rdataset("t", "TXT")[0].strings) == text.encode()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    return buf.getvalue()


def _tar(add: list[tarfile.TarInfo]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for info in add:
            t.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


def test_bundles() -> None:
    kw = {"max_bytes": 1 << 20, "max_files": 10}
    b = bundles.load(_zip({"pkg/__init__.py": b"", "pkg/web.py": b"app=1"}), "asgi", "pkg.web:app", **kw)
    assert b.entrypoint == "pkg.web:app" and set(b.files) == {"pkg/__init__.py", "pkg/web.py"}
    link = tarfile.TarInfo("app.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for raw, code in (
        (_tar([link]), "unsafe_path"),
        (_zip({"a/../../x.py": b""}), "unsafe_path"),
        (b"plain bytes", "invalid_bundle"),
        (_zip({f"f{i}.py": b"" for i in range(11)}), "bundle_too_large"),
    ):
        with pytest.raises(TollwayError) as e:
            bundles.load(raw, "asgi", "app:app", **kw)
        assert e.value.code == code
    info = tarfile.TarInfo("site/index.html")
    info.size = 3
    assert bundles.load(_tar([info]), "static", "site", **kw).entrypoint == "site"
