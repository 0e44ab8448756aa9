"""Tools are HTTP endpoints: arguments checked against the tool's JSON schema,
the URL template filled in, the call made through the SSRF guard (private
networks refused unless ``[agents] tool_allow`` names them) with the tool's
timeout and rate limit, paid ones through the wallet broker. A call never
raises: whatever happens is a logged :class:`ToolCall` the model is told about."""

from __future__ import annotations

import base64
import os
import time
from collections import deque
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from tollway.agents.spec import AgentSpec, ToolSpec
from tollway.agents.store import ToolCall
from tollway.core.errors import TollwayError
from tollway.core.ids import new_id
from tollway.core.money import parse_amount
from tollway.observe import tracing
from tollway.wallets.broker import Broker
from tollway.wallets.ssrf import Guard

MAX_FOR_MODEL = 4000  # characters of a tool's answer the model sees
MAX_WINDOWS = 10_000  # per-session rate-limit windows kept before idle ones are dropped
_QUERY_METHODS = ("GET", "DELETE")
_RETRYABLE = ("upstream_unreachable", "upstream_timeout")


def invalid_arguments(tool: ToolSpec, args: Any) -> str | None:
    """Why ``args`` do not fit the tool's schema (None: they do)."""
    if not isinstance(args, dict):
        return "the arguments are not a JSON object"
    from jsonschema import Draft202012Validator  # imported on first use: start-up stays fast

    err = next(iter(Draft202012Validator(tool.parameters).iter_errors(args)), None)
    if err is None:
        return None
    where = "/".join(str(p) for p in err.absolute_path)
    return f"{where}: {err.message}" if where else err.message


def request_for(tool: ToolSpec, args: dict[str, Any]) -> tuple[str, bytes | None]:
    """The URL (placeholders filled, URL-quoted) and the body of a call."""
    used = set(tool.placeholders())
    url = tool.url
    for name in used:
        url = url.replace("{" + name + "}", quote(str(args.get(name, "")), safe=""))
    rest = {k: v for k, v in args.items() if k not in used}
    if tool.method in _QUERY_METHODS:
        if rest:
            pairs = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in rest.items()}
            url += ("&" if "?" in url else "?") + urlencode(pairs)
        return url, None
    return url, orjson.dumps(rest)


class Tools:
    def __init__(self, guard: Guard, broker: Broker, max_bytes: int, self_url: str = "") -> None:
        self.self_url = self_url  # where a tool URL that is a path goes: this server
        self.guard = guard
        self.broker = broker
        self.max_bytes = max_bytes
        self._calls: dict[tuple[str, str, str], deque[float]] = {}

    async def aclose(self) -> None:
        await self.guard.aclose()

    def _rate_limited(self, spec: AgentSpec, tool: ToolSpec, session_id: str) -> bool:
        if not tool.rate_limit_per_minute:
            return False
        now = time.monotonic()
        if len(self._calls) > MAX_WINDOWS:  # forget sessions with no call in the last minute
            self._calls = {k: w for k, w in self._calls.items() if w and w[-1] > now - 60}
        window = self._calls.setdefault((spec.name, session_id, tool.name), deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= tool.rate_limit_per_minute:
            return True
        window.append(now)
        return False

    async def call(
        self, spec: AgentSpec, tool: ToolSpec, args: dict[str, Any], *, session_id: str, step: int
    ) -> ToolCall:
        with tracing.span(f"execute_tool {tool.name}") as sp:
            call = await self._call(spec, tool, args, session_id=session_id, step=step)
            if sp is not None:
                sp.set_attribute("gen_ai.operation.name", "execute_tool")
                sp.set_attribute("gen_ai.tool.name", tool.name)
                sp.set_attribute("gen_ai.tool.call.id", call.id)
                sp.set_attribute("tollway.tool.status", call.status)
                sp.set_attribute("tollway.charge_micros", call.cost)
            return call

    async def _call(
        self, spec: AgentSpec, tool: ToolSpec, args: dict[str, Any], *, session_id: str, step: int
    ) -> ToolCall:
        url, body = request_for(tool, args)
        if url.startswith("/"):
            url = self.self_url + url
        request: dict[str, Any] = {"method": tool.method, "url": url}
        if body is not None:
            request["body"] = body.decode()
        call = ToolCall(new_id("tcl"), step, tool.name, args, request, "", "ok", None, 0)
        t0 = time.perf_counter()
        try:
            if self._rate_limited(spec, tool, session_id):
                call.status, call.error = (
                    "refused",
                    f"rate limit of {tool.rate_limit_per_minute} calls a minute",
                )
                return call
            attempts = 2 if tool.idempotent else 1
            for attempt in range(attempts):
                try:
                    status, text, cost = await self._send(spec, tool, url, body, call.id)
                except TollwayError as e:
                    if e.code in _RETRYABLE and attempt + 1 < attempts:
                        continue
                    call.status = {"upstream_timeout": "timeout", "url_not_allowed": "refused"}.get(
                        e.code, "error"
                    )
                    call.error = f"{e.code}: {e.message}"[:500]
                    return call
                call.response, call.cost = text, cost
                if status >= 500 and attempt + 1 < attempts:
                    continue
                if status >= 400:
                    call.status, call.error = "error", f"HTTP {status}"
                return call
            return call
        finally:
            call.latency_us = int((time.perf_counter() - t0) * 1_000_000)

    async def _send(
        self, spec: AgentSpec, tool: ToolSpec, url: str, body: bytes | None, call_id: str
    ) -> tuple[int, str, int]:
        headers = {"content-type": "application/json"} if body is not None else {}
        headers = tracing.outgoing(headers)  # traceparent, while tracing is on
        if tool.paid:
            token = os.environ.get(spec.wallet_token_env, "")
            if not token:
                raise TollwayError(
                    "invalid_request_error",
                    "wallet_token_missing",
                    f"the environment variable {spec.wallet_token_env} holds no wallet token",
                )
            out = await self.broker.fetch(
                token,
                method=tool.method,
                url=url,
                headers=headers,
                body=body,
                category=tool.category,
                idempotency_key=f"agent-tool:{call_id}",
                max_amount=parse_amount(tool.max_price) if tool.max_price else None,
            )
            payment = out.get("payment") or {}
            cost = int(payment.get("amount") or 0) if payment.get("status") == "paid" else 0
            text = out.get("body") or base64.b64decode(out.get("body_base64") or "").decode(errors="replace")
            return int(out["status"]), text, cost
        r = await self.guard.fetch(
            tool.method,
            url,
            headers=headers,
            body=body,
            timeout_s=tool.timeout_seconds,
            max_bytes=self.max_bytes,
        )
        return r.status, r.body.decode(errors="replace"), 0
