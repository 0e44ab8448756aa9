"""``tollway requests export``: the request log as JSONL or CSV, on stdout or to a file."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from tollway.cli.main import _with_runtime, app
from tollway.core.errors import invalid
from tollway.gateway import requestexport
from tollway.runtime import Runtime

requests_app = typer.Typer(help="The request log.", no_args_is_help=True)
app.add_typer(requests_app, name="requests")

_AGO = re.compile(r"^(\d{1,9})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_us(value: str, now: datetime | None = None) -> int:
    """``2026-12-01``, ``2026-12-01T10:00:00Z`` (UTC unless an offset is given) or ``24h`` / ``7d`` ago."""
    now = now or datetime.now(UTC)
    m = _AGO.match(value.strip())
    if m is not None:
        return int((now.timestamp() - int(m.group(1)) * _UNIT_S[m.group(2)]) * 1_000_000)
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise invalid(
            "invalid_since", "--since is an ISO 8601 date or time, or an age such as 24h or 7d", "since"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


@requests_app.command("export")
def export(
    format: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    since: str | None = typer.Option(None, "--since", help="ISO 8601 date/time, or an age: 24h, 7d."),
    tag: list[str] = typer.Option([], "--tag", help="key=value: the request's metadata (repeatable)."),
    user: str | None = typer.Option(None, "--user", help="The request's `user` (the end user)."),
    customer: str | None = typer.Option(None, "--customer", help="A customer's id (cus_...)."),
    model: str | None = typer.Option(None, "--model"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many rows (newest first)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    """Export the request log (newest first) as JSONL or CSV."""

    async def go(rt: Runtime) -> int:
        if format not in requestexport.FORMATS:
            raise invalid("invalid_format", "--format is jsonl or csv", "format")
        filters = {
            "tags": requestexport.parse_tags(tag, "tag"),
            "end_user": user,
            "customer_id": customer,
            "model": model,
            "since_us": None if since is None else since_us(since),
        }
        n = 0
        sink = output.open("wb") if output is not None else sys.stdout.buffer
        try:
            async for chunk in requestexport.export(rt.gateway.log, format, limit, **filters):
                sink.write(chunk)
                n += 1
        finally:
            if output is not None:
                sink.close()
            else:
                sink.flush()
        return n

    _with_runtime(False, go)
