"""Deployment bundles: a zip or a tar (gzip or not) of a Python ASGI/WSGI
app or a static site, checked before anything is charged: its size and file
count, no absolute paths, ``..``, links or devices, and an entrypoint that
exists (``module:attribute`` for an app, a directory with ``index.html`` for
a static site)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tollway.core.errors import invalid

KINDS = ("asgi", "wsgi", "static")
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True, slots=True)
class Bundle:
    kind: str
    entrypoint: str
    files: dict[str, bytes]  # relative POSIX path -> content
    sha256: str
    size: int

    def unpack(self, dest: Path) -> None:
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, data in self.files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)


def decode(data_b64: object) -> bytes:
    if not isinstance(data_b64, str) or not data_b64:
        raise invalid("invalid_bundle", "bundle is the archive, base64", "bundle")
    try:
        return base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("invalid_bundle", "bundle is not base64", "bundle") from None


def load(raw: bytes, kind: object, entrypoint: object, *, max_bytes: int, max_files: int) -> Bundle:
    if kind not in KINDS:
        raise invalid("invalid_kind", f"kind is one of {', '.join(KINDS)}", "kind")
    if len(raw) > max_bytes:
        raise invalid(
            "bundle_too_large", f"the bundle is {len(raw)} bytes; the limit is {max_bytes}", "bundle"
        )
    files = _members(raw, max_bytes, max_files)
    if not files:
        raise invalid("invalid_bundle", "the bundle holds no files", "bundle")
    entry = _entry(str(kind), entrypoint, files)
    return Bundle(str(kind), entry, files, hashlib.sha256(raw).hexdigest(), len(raw))


def _safe(name: str) -> str:
    """``name`` as a relative path inside the bundle, or ``unsafe_path``."""
    text = name.replace("\\", "/")
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", text) or "\0" in text:
        raise invalid("unsafe_path", f"bundle path {name!r} escapes the bundle", "bundle")
    return "/".join(x for x in p.parts if x not in (".", ""))


def _members(raw: bytes, max_bytes: int, max_files: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0

    def add(name: str, data: bytes) -> None:
        nonlocal total
        rel = _safe(name)
        if not rel:
            return
        total += len(data)
        if total > max_bytes:
            raise invalid("bundle_too_large", f"the bundle unpacks to more than {max_bytes} bytes", "bundle")
        if len(out) >= max_files:
            raise invalid("bundle_too_large", f"the bundle holds more than {max_files} files", "bundle")
        out[rel] = data

    if zipfile.is_zipfile(io.BytesIO(raw)):
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as z:
                for info in z.infolist():
                    if info.is_dir():
                        _safe(info.filename)
                        continue
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise invalid("unsafe_path", f"{info.filename!r} is a symbolic link", "bundle")
                    if info.file_size > max_bytes:
                        raise invalid("bundle_too_large", f"{info.filename!r} is too large", "bundle")
                    add(info.filename, z.read(info))
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise invalid("invalid_bundle", f"the zip archive is damaged: {e}", "bundle") from None
        return out
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as t:
            for m in t.getmembers():
                if m.isdir():
                    _safe(m.name)
                    continue
                if not m.isfile():
                    raise invalid(
                        "unsafe_path", f"{m.name!r} is not a regular file (a link or a device)", "bundle"
                    )
                if m.size > max_bytes:
                    raise invalid("bundle_too_large", f"{m.name!r} is too large", "bundle")
                f = t.extractfile(m)
                add(m.name, f.read() if f is not None else b"")
    except tarfile.TarError as e:
        raise invalid(
            "invalid_bundle", f"the bundle is neither a zip nor a tar archive: {e}", "bundle"
        ) from None
    return out


def _entry(kind: str, entrypoint: object, files: dict[str, bytes]) -> str:
    if kind == "static":
        d = "." if entrypoint in (None, "", ".") else entrypoint
        if not isinstance(d, str):
            raise invalid("invalid_entrypoint", "a static site's entrypoint is a directory", "entrypoint")
        rel = _safe(d.rstrip("/") + "/index.html")
        if rel not in files:
            raise invalid("entrypoint_not_found", f"the bundle has no {rel}", "entrypoint")
        return _safe(d) or "."
    if not isinstance(entrypoint, str) or not _ENTRY.match(entrypoint):
        raise invalid(
            "invalid_entrypoint", "an app's entrypoint is module:attribute, such as app:app", "entrypoint"
        )
    module = entrypoint.split(":", 1)[0].replace(".", "/")
    if f"{module}.py" not in files and f"{module}/__init__.py" not in files:
        raise invalid("entrypoint_not_found", f"the bundle has no {module}.py", "entrypoint")
    return entrypoint
