"""When a schedule runs (a delay, a time, or a cron expression in UTC), and
what it may carry: every check raises a 400 naming the parameter."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
from croniter import CroniterBadCronError, croniter

from tollway.core.errors import invalid
from tollway.schedules.model import Kind

US = 1_000_000
MAX_AHEAD_US = 100 * 366 * 86_400 * US  # a century
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_OWNER = 200
MAX_KEY = 200


def first_run(
    now_us: int, delay_s: float | None, at_us: int | None, cron: str | None
) -> tuple[Kind, int, str | None]:
    """The kind, the first run time, and the normalized cron expression."""
    given = [(n, v) for n, v in (("delay_s", delay_s), ("at_us", at_us), ("cron", cron)) if v is not None]
    if len(given) != 1:
        param = given[1][0] if given else "delay_s"
        raise invalid("invalid_schedule", "give exactly one of delay_s, at_us or cron", param)
    if delay_s is not None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float) or not math.isfinite(delay_s):
            raise invalid("invalid_schedule", "delay_s must be a number of seconds", "delay_s")
        if delay_s < 0:
            raise invalid("invalid_schedule", "delay_s must not be negative", "delay_s")
        if delay_s * US > MAX_AHEAD_US:
            raise invalid("invalid_schedule", "delay_s is more than a century away", "delay_s")
        return "delay", now_us + round(delay_s * US), None
    if at_us is not None:
        if isinstance(at_us, bool) or not isinstance(at_us, int):
            raise invalid("invalid_schedule", "at_us must be an integer (µs since 1970, UTC)", "at_us")
        if at_us < now_us:
            raise invalid("invalid_schedule", "at_us is in the past", "at_us")
        if at_us - now_us > MAX_AHEAD_US:
            raise invalid("invalid_schedule", "at_us is more than a century away", "at_us")
        return "at", at_us, None
    assert cron is not None
    expr = check_cron(cron)
    return "cron", next_cron(expr, now_us), expr


def check_cron(cron: Any) -> str:
    """A standard five-field expression (minute hour day month weekday) or an
    alias such as ``@daily``; returned with its spaces normalized."""
    if not isinstance(cron, str):
        raise invalid("invalid_cron", "cron must be a string", "cron")
    expr = " ".join(cron.split())
    fields = expr.split(" ")
    if not (len(fields) == 5 or (len(fields) == 1 and expr.startswith("@"))):
        raise invalid(
            "invalid_cron", "cron takes five fields: minute hour day-of-month month day-of-week", "cron"
        )
    try:
        croniter(expr)
    except (CroniterBadCronError, ValueError, KeyError) as e:
        raise invalid("invalid_cron", f"not a valid cron expression: {e}", "cron") from None
    return expr


def next_cron(expr: str, after_us: int) -> int:
    """The first occurrence strictly after ``after_us``, in UTC."""
    start = dt.datetime.fromtimestamp(after_us / US, tz=dt.UTC)
    nxt = croniter(expr, start).get_next(dt.datetime)
    return int(nxt.timestamp()) * US


def check_owner(owner: Any) -> str:
    if not isinstance(owner, str) or not owner.strip() or len(owner) > MAX_OWNER:
        raise invalid("invalid_owner", f"owner must be a non-empty string of at most {MAX_OWNER}", "owner")
    return owner


def check_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise invalid(
            "invalid_idempotency_key", f"idempotency_key is a string of 1 to {MAX_KEY}", "idempotency_key"
        )
    return key


def check_attempts(max_attempts: Any) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 100:
        raise invalid("invalid_max_attempts", "max_attempts must be an integer from 1 to 100", "max_attempts")
    return max_attempts


def encode_payload(payload: Any) -> str:
    """JSON text of an object of JSON values: string keys, finite numbers."""
    if not isinstance(payload, dict):
        raise invalid("invalid_payload", "payload must be a JSON object", "payload")
    _check_json(payload, "payload")
    try:
        body = orjson.dumps(payload)
    except orjson.JSONEncodeError as e:
        raise invalid("invalid_payload", f"payload is not JSON: {e}", "payload") from None
    if len(body) > MAX_PAYLOAD_BYTES:
        raise invalid(
            "invalid_payload", f"payload is over {MAX_PAYLOAD_BYTES // 1024} KiB of JSON", "payload"
        )
    return body.decode()


def _check_json(v: Any, where: str) -> None:
    if v is None or isinstance(v, str | bool | int):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise invalid("invalid_payload", f"{where} is not a finite number", "payload")
        return
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_json(x, f"{where}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise invalid("invalid_payload", f"{where} has a key that is not a string: {k!r}", "payload")
            _check_json(x, f"{where}.{k}")
        return
    raise invalid("invalid_payload", f"{where} is a {type(v).__name__}, not a JSON value", "payload")
