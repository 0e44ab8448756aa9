"""What the current request is, for logs and the request log: its id and its trace id."""

from __future__ import annotations

from contextvars import ContextVar

from tollway.observe import tracing

REQUEST_ID: ContextVar[str | None] = ContextVar("tollway_request_id", default=None)
# While tracing is off, a request's incoming traceparent's trace id (logs still correlate).
TRACE_ID: ContextVar[str | None] = ContextVar("tollway_trace_id", default=None)


def trace_id() -> str | None:
    """The current trace id (hex): the current span's, else the incoming one's."""
    ids = tracing.current_ids()
    return ids[0] if ids is not None else TRACE_ID.get()
