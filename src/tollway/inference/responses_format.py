"""OpenAI's Responses API as a face of tollway (for the ``/v1/responses`` route).

Pure translations, no I/O:

- :class:`ResponsesRequest` and :func:`chat_params`: a Responses request
  (``input`` as a string or items: messages, ``function_call`` and
  ``function_call_output``; ``instructions``; flat function ``tools``;
  ``tool_choice``; ``text.format``) as tollway's chat: OpenAI chat messages in
  a :class:`ChatParams`. A bad item or tool is a 400 naming it (``input[2].call_id``,
  ``tools[0].name``).
- :func:`output_items` and :func:`response_body`: tollway's answer as a Response object.
- :class:`EventStream`: the answer as Responses' typed SSE events, each with
  its ``sequence_number``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tollway.core.errors import TollwayError, invalid
from tollway.core.ids import new_id
from tollway.inference.backends.base import ChatParams, Delta, Finish
from tollway.inference.call import Metered
from tollway.inference.schemas import JsonSchemaSpec
from tollway.inference.tool_calls import check

_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextConfig(_Body):
    format: dict[str, Any] | None = None
    verbosity: Literal["medium"] | None = None  # accepted with its neutral value


class ResponsesRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, strict=False)
    top_p: float | None = Field(None, gt=0, le=1, strict=False)
    stream: bool = False
    store: bool = True  # as OpenAI: a response is kept unless asked not to
    previous_response_id: str | None = Field(None, min_length=1, max_length=64)
    text: TextConfig | None = None
    user: str | None = Field(None, max_length=256)  # the customer's end user: kept in the request log
    metadata: dict[str, str] | None = Field(None, max_length=16)  # request-log tags, as chat's
    service_tier: Literal["auto", "default"] | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = Field(None, max_length=0)  # no extra output to include (logprobs, ...)

    @field_validator("metadata")
    @classmethod
    def _tags(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and any(len(k) > 64 or len(x) > 512 for k, x in v.items()):
            raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return v

    def input_items(self) -> list[dict[str, Any]]:
        """``input`` as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return self.input


# ------------------------------------------------------------------ request


def chat_params(body: ResponsesRequest, items: list[dict[str, Any]]) -> ChatParams:
    """The chat call a Responses request asks for (``items``: any stored history,
    then this request's input). ``max_tokens`` is set per deployment."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    messages.extend(chat_messages(items))
    p = ChatParams(
        messages=messages,
        max_tokens=0,
        temperature=body.temperature,
        top_p=body.top_p,
        stream=body.stream,
    )
    if body.tools is not None or body.tool_choice is not None:
        tools = [_tool(t) for t in body.tools or []]
        choice = body.tool_choice
        if isinstance(choice, dict):
            choice = {"type": choice.get("type"), "function": {"name": choice.get("name")}}
        try:
            check(tools, choice)  # 400 naming the parameter, before any money moves
        except TollwayError as e:  # Responses' tools are flat: tools[0].name, not tools[0].function.name
            e.param = (e.param or "").replace(".function.", ".") or None
            raise
        p.tools, p.tool_choice = tools or None, choice
        if body.parallel_tool_calls is not None:
            p.parallel_tool_calls = body.parallel_tool_calls
    fmt = body.text.format if body.text is not None else None
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = {k: v for k, v in fmt.items() if k != "type"}
            try:
                p.json_schema = JsonSchemaSpec.model_validate(spec).schema_
            except ValidationError as e:
                raise invalid("invalid_schema", str(e.errors()[0]["msg"]), "text.format") from None
            if p.json_schema is None:
                raise invalid("invalid_schema", "text.format.schema is required", "text.format.schema")
        elif kind == "json_object":
            p.json_object = True
        elif kind != "text":
            raise invalid(
                "invalid_value", "text.format.type is text, json_schema or json_object", "text.format"
            )
    return p


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    """A Responses function tool (flat) as a chat tool; anything else goes to
    :func:`check` as it came, to be refused there (``tools[i].type``)."""
    if not isinstance(t, dict) or t.get("type") != "function":
        return t
    fn = {
        k: v for k, v in t.items() if k in ("name", "description", "parameters", "strict") and v is not None
    }
    return {"type": "function", "function": fn}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items as OpenAI chat messages: consecutive ``function_call``
    items join one assistant message's ``tool_calls``."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid("invalid_input", "an input item is an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise invalid("invalid_input", f"role is one of {', '.join(_ROLES)}", f"{where}.role")
            text = _text(item.get("content"), f"{where}.content")
            out.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            call = {
                "id": _str(item, "call_id", where),
                "type": "function",
                "function": {"name": _str(item, "name", where), "arguments": _str(item, "arguments", where)},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = _text(output, f"{where}.output")
            out.append({"role": "tool", "tool_call_id": _str(item, "call_id", where), "content": output})
        else:
            raise invalid(
                "unsupported_input", f"input items of type {kind!r} are not supported", f"{where}.type"
            )
    if not out:
        raise invalid("invalid_input", "input must not be empty", "input")
    return out


def _str(item: dict[str, Any], k: str, where: str) -> str:
    v = item.get(k)
    if not isinstance(v, str) or (k != "arguments" and not v):
        raise invalid("invalid_input", f"{k} is a non-empty string", f"{where}.{k}")
    return v


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid("invalid_input", "content is a string or a list of text parts", where)
    out = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
            raise invalid(
                "unsupported_input", "only input_text and output_text parts are supported", f"{where}[{j}]"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid("invalid_input", "text is a string", f"{where}[{j}].text")
        out.append(text)
    return "".join(out)


# ------------------------------------------------------------------ response


def message_item(text: str, mid: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": mid, "status": status, "role": "assistant", "content": content}


def call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "type": "function_call",
        "id": "fc_" + new_id("f")[2:],
        "call_id": call.get("id") or "call_" + new_id("c")[2:],
        "name": fn.get("name", ""),
        "arguments": fn.get("arguments", "") if status == "completed" else "",
        "status": status,
    }


def output_items(text: str, calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = [message_item(text, "msg_" + new_id("m")[2:])] if text or not calls else []
    out.extend(call_item(c) for c in calls or ())
    return out


def response_body(
    rid: str,
    created: int,
    model: str,
    body: ResponsesRequest,
    output: list[dict[str, Any]],
    m: Metered | None,
    status: str = "completed",
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "store": body.store,
        "temperature": body.temperature,
        "text": {"format": (body.text.format if body.text else None) or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
        "metadata": body.metadata or {},
        "usage": None,
    }
    if m is not None:
        if m.finish_reason == "length" and status == "completed":
            r["status"] = "incomplete"
            r["incomplete_details"] = {"reason": "max_output_tokens"}
        r["usage"] = {
            "input_tokens": m.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": m.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": m.input_tokens + m.output_tokens,
        }
        r["x_tollway"] = {"neurons": m.mneurons / 1000, "charged": m.charged, "ttft_ms": m.ttft_ms}
    return r


class EventStream:
    """The Responses API's typed SSE events for one answer, in OpenAI's order."""

    def __init__(self) -> None:
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._mid: str | None = None
        self._text: list[str] = []

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def delta(self, ev: Delta) -> list[bytes]:
        out = []
        if self._mid is None:
            self._mid = "msg_" + new_id("m")[2:]
            item = message_item("", self._mid, "in_progress")
            out.append(self.event("response.output_item.added", output_index=0, item=item))
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(self.event("response.content_part.added", **self._at(), part=part))
        self._text.append(ev.text)
        out.append(self.event("response.output_text.delta", **self._at(), delta=ev.text))
        return out

    def _at(self) -> dict[str, Any]:
        return {"item_id": self._mid, "output_index": 0, "content_index": 0}

    def finish(self, fin: Finish) -> list[bytes]:
        """The output items' closing events (the text's, then each call's)."""
        out = []
        if self._mid is not None:
            text = "".join(self._text)
            out.append(self.event("response.output_text.done", **self._at(), text=text))
            part = {"type": "output_text", "text": text, "annotations": []}
            out.append(self.event("response.content_part.done", **self._at(), part=part))
            item = message_item(text, self._mid)
            out.append(self.event("response.output_item.done", output_index=0, item=item))
            self.output.append(item)
        for call in fin.tool_calls or ():
            i = len(self.output)
            item = call_item(call)
            head = {**item, "arguments": "", "status": "in_progress"}
            out.append(self.event("response.output_item.added", output_index=i, item=head))
            at = {"item_id": item["id"], "output_index": i}
            out.append(self.event("response.function_call_arguments.delta", **at, delta=item["arguments"]))
            out.append(self.event("response.function_call_arguments.done", **at, arguments=item["arguments"]))
            out.append(self.event("response.output_item.done", output_index=i, item=item))
            self.output.append(item)
        if not self.output:  # an empty answer is still one (empty) message
            self._mid = "msg_" + new_id("m")[2:]
            item = message_item("", self._mid)
            out.append(self.event("response.output_item.added", output_index=0, item=item))
            out.append(self.event("response.output_item.done", output_index=0, item=item))
            self.output.append(item)
        return out
