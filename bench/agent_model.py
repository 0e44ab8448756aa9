"""A deterministic OpenAI-compatible chat model that uses tools, for agent
tests and bench/agents.py (the fast stand-in model).

    .venv/bin/python bench/agent_model.py --port 9100

``POST /v1/chat/completions`` reads the conversation and answers by rule:

- the last message is a tool result → ``tool said: <its content>``;
- a system message asking for a summary → ``summary of N messages``;
- tools are offered and the last user message names an order id
  (``A1001``) → a ``tool_calls`` answer calling the first tool with
  ``{"order_id": ...}``; ``badcall`` → a call with arguments that do not fit
  the schema, every time; ``badonce`` → a bad call, then a good one after
  tollway's correction;
- ``loop`` and an order id → the same tool call every time it is offered tools;
- ``sleep:<seconds>`` anywhere in the last user message → the answer waits;
- otherwise → ``echo: <the last user message>``.

``GET /orders/{id}`` answers ``{"order": id, "status": "shipped"}`` (a tool
for bench/agents.py).

Usage counts words: prompt = words in all messages, completion = words in
the answer (at least 1). Streaming is not offered: tollway's agents ask whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_ORDER = re.compile(r"\b([A-Z][0-9]{4})\b")
_SLEEP = re.compile(r"sleep:([0-9.]+)")


def _words(s: str) -> int:
    return len(s.split())


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The chat.completion for a request body (pure: the tests call it too)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {"role": "user", "content": ""}
    users = [m for m in messages if m.get("role") == "user" and not _correction(m)]
    said = str((users[-1] if users else last).get("content") or "")
    tools = body.get("tools") or []
    message: dict[str, Any] = {"role": "assistant", "content": None}
    finish = "stop"
    corrected = any(_correction(m) for m in messages)
    looping = tools and "loop" in said and (m := _ORDER.search(said))
    if looping:  # the same call, whatever came back
        message["tool_calls"] = [_call(tools[0], {"order_id": m.group(1)})]
        finish = "tool_calls"
    elif last.get("role") == "tool":
        message["content"] = f"tool said: {last.get('content')}"
    elif any("Summarize" in str(m.get("content") or "") for m in messages if m.get("role") == "system"):
        message["content"] = f"summary of {said.count(chr(10))} messages"
    elif tools and ("badcall" in said or ("badonce" in said and not corrected)):
        message["tool_calls"] = [_call(tools[0], {"order_id": 5})]
        finish = "tool_calls"
    elif tools and (m := _ORDER.search(said)) and last.get("role") == "user" and not _answered(messages):
        message["tool_calls"] = [_call(tools[0], {"order_id": m.group(1)})]
        finish = "tool_calls"
    else:
        message["content"] = f"echo: {said}"
    text = message["content"] or ""
    prompt = sum(_words(str(m.get("content") or "")) for m in messages) + 1
    return {
        "id": "chatcmpl-agent-model",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "agent-model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": max(1, _words(text)), "total_tokens": 0},
    }


def _correction(m: dict[str, Any]) -> bool:
    """tollway's note that a tool call was invalid, or that it is time to answer."""
    text = str(m.get("content") or "")
    return m.get("role") == "user" and ("tool call was invalid" in text or "without calling a tool" in text)


def _answered(messages: list[dict[str, Any]]) -> bool:
    """A tool already answered in this turn (after the last user message)."""
    for m in reversed(messages):
        if m.get("role") == "tool":
            return True
        if m.get("role") == "user":
            return False
    return False


def _call(tool: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "call_" + str(abs(hash(json.dumps(args, sort_keys=True))) % 10**8),
        "type": "function",
        "function": {"name": tool["function"]["name"], "arguments": json.dumps(args)},
    }


class AgentModel:
    """The ASGI app; ``calls`` counts chat requests, ``bodies`` keeps the last few."""

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        status, out = 404, {"error": {"message": "not found"}}
        if scope["path"].startswith("/orders/") and scope["method"] == "GET":
            status, out = 200, {"order": scope["path"].rsplit("/", 1)[1], "status": "shipped"}
        if scope["path"].endswith("/chat/completions") and scope["method"] == "POST":
            body = json.loads(raw)
            self.calls += 1
            self.bodies = [*self.bodies[-19:], body]
            users = [m for m in body.get("messages") or [] if m.get("role") == "user" and not _correction(m)]
            if users and (m := _SLEEP.search(str(users[-1].get("content") or ""))):
                await asyncio.sleep(float(m.group(1)))
            status, out = 200, answer(body)
        data = json.dumps(out).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9100)
    args = ap.parse_args()
    uvicorn.run(AgentModel(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
