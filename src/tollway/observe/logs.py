"""Logs: one JSON object per line (``[telemetry] log_format = "json"``), each with
the request id, trace id and span id of the request it was written for, and
never a secret: anything that looks like a bearer token, an API key, an agent
token, a Stripe key or a webhook secret is redacted, in the message, its
arguments and the exception text.

:data:`~tollway.observe.context.REQUEST_ID` is set per request by the API's
telemetry middleware (``tollway.api.telemetry``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

import orjson

from tollway.observe import tracing
from tollway.observe.context import REQUEST_ID, TRACE_ID

ACCESS = logging.getLogger("tollway.access")

REDACTED = "[REDACTED]"
_SECRETS = re.compile(
    r"(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # Authorization values
    r"|\btw_(?:agt_)?[a-z0-9]{12}_[a-z0-9]{6,}"  # tollway API keys and agent tokens
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}"  # Stripe keys
    r"|\bwhsec_[A-Za-z0-9+/=]{8,}"  # webhook signing secrets
    r"|\bsk-(?:ant-)?[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic keys
    r"|\b0x[0-9a-fA-F]{64}\b"  # a private key (or a signature's half): 32 bytes of hex
    r"|(?i:(?:api[_-]?key|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{6,}"
)


# Every secret the pattern finds contains one of these (lower-cased): most text
# contains none, and skips the regular expression.
_TRIGGERS = (
    "bearer",
    "basic",
    "tw_",
    "_live_",
    "_test_",
    "whsec_",
    "sk-",
    "0x",
    "key",
    "token",
    "secret",
    "password",
    "authorization",
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a secret replaced."""
    low = text.lower()
    for t in _TRIGGERS:
        if t in low:
            return _SECRETS.sub(_mask, text)
    return text


def _mask(m: re.Match[str]) -> str:
    s = m.group(0)
    low = s.lower()
    for lead in ("bearer ", "basic "):
        if low.startswith(lead):
            return s[: len(lead)] + REDACTED
    cut = max(s.find("="), s.find(":"))
    if cut > 0 and not low.startswith(("tw_", "sk", "rk", "pk", "whsec", "0x")):
        return s[: cut + 1] + REDACTED
    return REDACTED


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request_id,
    trace_id, span_id (and exc_info, extra fields from ``extra={...}``)."""

    # The record's own attributes (and uvicorn's ANSI-coloured copy of the message) are not extra fields.
    _STD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}

    _second = -1
    _prefix = ""

    def _timestamp(self, created: float) -> str:
        """ISO 8601 in UTC with milliseconds (the date part made once a second)."""
        sec = int(created)
        if sec != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._second = sec
        return f"{self._prefix}.{int((created - sec) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": REQUEST_ID.get(),
        }
        ids = tracing.current_ids()
        out["trace_id"], out["span_id"] = ids if ids is not None else (TRACE_ID.get(), None)
        for k, v in record.__dict__.items():
            if k not in self._STD and not k.startswith("_"):
                out[k] = redact(v) if isinstance(v, str) else v
        if record.exc_info:
            out["exc_info"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class RedactingFormatter(logging.Formatter):
    """The text format, with the same redaction."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_format(configured: str) -> str:
    """``TOLLWAY_LOG_FORMAT`` wins over ``[telemetry] log_format``."""
    env = os.environ.get("TOLLWAY_LOG_FORMAT", "").strip().lower()
    return env if env in ("json", "text") else configured


def install(level: str, fmt: str, stream: Any = None) -> logging.Handler:
    """The root logger's one handler, in ``fmt`` ("json" or "text")."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(levelname)s:     %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
