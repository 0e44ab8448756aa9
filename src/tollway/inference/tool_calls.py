"""Tool calling on a model that answers in a grammar (llama.cpp), pure: no I/O.

One mechanism for ``/v1/chat/completions`` and the durable agents. From
OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` it builds the
JSON schema the model must answer in, which allows exactly what
``tool_choice`` allows:

- ``"none"``: no schema (plain text);
- ``"auto"``: ``{"content": <text>}`` or ``{"tool_calls": [<call>, ...]}``;
- ``"required"``: ``{"tool_calls": [<call>, ...]}``;
- a named function: ``{"tool_calls": [<a call of that function>]}``.

A call is ``{"name": <a tool's name>, "arguments": <that tool's parameters>}``,
so its arguments validate against that tool's schema; without
``parallel_tool_calls`` there is at most one. :func:`parse` turns the
model's output into OpenAI's ``message.tool_calls`` or text. For a chat
template without a tool format, :func:`plain_messages` and
:func:`prompt_note` render the tool history and the tools as text.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from tollway.core.errors import TollwayError, invalid
from tollway.core.ids import new_id

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # fullmatch: "$" would let a newline through
CHOICES = ("auto", "none", "required")
_EMPTY = {"type": "object", "properties": {}}
_REF = re.compile(r"^#/(\$defs|definitions)/")


def _canonical(schema: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON (a request body never gets here)
        return repr(schema).encode()


@functools.lru_cache(maxsize=1024)
def _schema_error(canonical: bytes) -> str | None:
    """Why a tool's parameters are not a JSON schema (None: they are). Checking a schema
    against the metaschema costs ~0.5 ms; an agent sends the same tools on every call."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(orjson.loads(canonical))
    except SchemaError as e:
        return str(e.message)
    except orjson.JSONDecodeError:
        return "it is not JSON"
    return None


def check(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> None:
    """``400 invalid_request`` naming the parameter when ``tools`` or ``tool_choice`` is not valid."""
    names: set[str] = set()
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid(
                "invalid_tool", 'a tool is {"type": "function", "function": {...}}', f"{where}.type"
            )
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise invalid("invalid_tool", "a function tool needs a function object", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise invalid(
                "invalid_tool",
                "a function's name is 1 to 64 letters, digits, '_' or '-'",
                f"{where}.function.name",
            )
        if name in names:
            raise invalid("invalid_tool", f"two tools are named {name!r}", f"{where}.function.name")
        names.add(name)
        params = fn.get("parameters")
        params = _EMPTY if params is None else params
        why = "it is not an object" if not isinstance(params, dict) else _schema_error(_canonical(params))
        if why is not None:
            raise invalid(
                "invalid_tool",
                f"parameters is not a valid JSON schema: {why}",
                f"{where}.function.parameters",
            )
    if tool_choice is None or tool_choice in CHOICES:
        if tool_choice == "required" and not names:
            raise invalid("invalid_tool_choice", "tool_choice 'required' needs tools", "tool_choice")
        return
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if (
        not isinstance(tool_choice, dict)
        or tool_choice.get("type") != "function"
        or not isinstance(name, str)
    ):
        raise invalid(
            "invalid_tool_choice",
            'tool_choice is "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if name not in names:
        raise invalid(
            "invalid_tool_choice", f"tool_choice names {name!r}, which is not one of the tools", "tool_choice"
        )


def active(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> bool:
    """Whether the model answers in the tool grammar (tools offered, and not ``"none"``)."""
    return bool(tools) and tool_choice != "none"


def forced(tool_choice: str | dict[str, Any] | None) -> str | None:
    """The one function ``tool_choice`` names, if it names one."""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        return str(name) if name else None
    return None


def answer_schema(
    tools: list[dict[str, Any]],
    tool_choice: str | dict[str, Any] | None,
    parallel: bool = True,
    text_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON schema of every answer ``tool_choice`` allows (``tools`` checked,
    ``tool_choice`` not ``"none"``). ``text_schema`` holds a text answer's
    content (``response_format``'s schema) instead of any string."""
    only = forced(tool_choice)
    defs: dict[str, Any] = {}
    calls = []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        if only is not None and fn["name"] != only:
            continue
        params = _hoisted(fn.get("parameters") or _EMPTY, f"t{i}_", defs)
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    listed: dict[str, Any] = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    listed["minItems"] = 1
    if not parallel or only is not None:
        listed["maxItems"] = 1
    calling: dict[str, Any] = {
        "type": "object",
        "properties": {"tool_calls": listed},
        "required": ["tool_calls"],
    }
    if only is not None or tool_choice == "required":
        out = calling
    else:
        text: dict[str, Any] = {
            "type": "object",
            "properties": {"content": text_schema or {"type": "string"}},
            "required": ["content"],
        }
        out = {"anyOf": [text, calling]}
    return {**out, "$defs": defs} if defs else out


def _hoisted(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """A tool's schema with its ``$defs``/``definitions`` moved to the root (where
    ``$ref`` resolves once the schema is nested), renamed with ``prefix``."""
    own = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    if not own:
        return schema
    defs.update({prefix + k: _relinked(v, prefix) for k, v in own.items()})
    out: dict[str, Any] = _relinked(
        {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}, prefix
    )
    return out


def _relinked(node: Any, prefix: str) -> Any:
    if isinstance(node, list):
        return [_relinked(v, prefix) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _relinked(v, prefix) for k, v in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and _REF.match(ref):
        out["$ref"] = "#/$defs/" + prefix + _REF.sub("", ref)
    return out


def prompt_note(tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None, listing: bool) -> str:
    """The system-prompt text that tells the model the answer format (and, with
    ``listing``, describes the tools, for a template without a tool format)."""
    lines = []
    if listing:
        lines.append("You can call these tools:")
        for t in tools:
            fn = t["function"]
            params = json.dumps(fn.get("parameters") or _EMPTY)
            lines.append(f"- {fn['name']}: {fn.get('description') or ''} Arguments (JSON schema): {params}")
    call = '{"tool_calls": [{"name": <tool name>, "arguments": {...}}]}'
    only = forced(tool_choice)
    if only is not None:
        lines.append(
            f"Call the tool {only}. Reply in JSON: "
            f'{{"tool_calls": [{{"name": "{only}", "arguments": {{...}}}}]}}'
        )
    elif tool_choice == "required":
        lines.append(f"Call one or more tools. Reply in JSON: {call}")
    else:
        lines.append(f'Reply in JSON: {call} to call tools, or {{"content": <your reply>}} to answer.')
    return "\n".join(lines)


def with_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """``messages`` with ``note`` at the end of the system message (one is added if none)."""
    out = list(messages)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{note}"}
    else:
        out.insert(0, {"role": "system", "content": note})
    return out


def has_tool_history(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") or m.get("content") is None for m in messages)


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages a template without a tool format can render: an assistant's calls
    as the JSON it answers in, a tool's result as a user message naming the tool."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            listed = []
            for c in calls:
                fn = c.get("function") or {}
                names[str(c.get("id"))] = str(fn.get("name"))
                listed.append({"name": fn.get("name"), "arguments": _loaded(fn.get("arguments"))})
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": listed})})
        elif m.get("role") == "tool":
            name = names.get(str(m.get("tool_call_id")), "a tool")
            out.append({"role": "user", "content": f"Result of tool {name}:\n{m.get('content') or ''}"})
        else:
            out.append({**m, "content": m.get("content") or ""})
    return out


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template with a tool format: calls' arguments as objects
    (Hugging Face templates write them with ``tojson``)."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if m.get("content") is None:
            m = {**m, "content": ""}
        if calls:
            listed = [
                {**c, "function": {**c["function"], "arguments": _loaded(c["function"].get("arguments"))}}
                for c in calls
            ]
            m = {**m, "tool_calls": listed}
        out.append(m)
    return out


def _loaded(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


@dataclass(slots=True)
class Answer:
    """What the model answered: text, or calls in OpenAI's ``message.tool_calls`` shape."""

    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)


def call(name: str, arguments: Any) -> dict[str, Any]:
    """One call in OpenAI's shape, with a fresh ``call_…`` id."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": new_id("call"), "type": "function", "function": {"name": name, "arguments": args}}


_PARTIAL_TEXT = re.compile(r'^\s*\{\s*"content"\s*:\s*"((?:[^"\\]|\\.)*)')
_CALLS = re.compile(r'^\s*\{\s*"tool_calls"\s*:\s*\[\s*')
_NEXT = re.compile(r"\s*,\s*")


def parse(output: str) -> Answer:
    """The model's output in the answer schema, as text or calls. Output cut
    short inside a text answer keeps the text so far, and inside a list of
    calls the calls it completed (each is whole, so valid); with none complete
    it is ``400 tool_call_truncated``. A call made twice counts once."""
    try:
        obj = json.loads(output)
    except json.JSONDecodeError:
        partial = _PARTIAL_TEXT.match(output)
        if partial is not None:
            return Answer(_unescape(partial.group(1)))
        made = _complete_calls(output)
        if not made:
            raise truncated() from None
        obj = {"tool_calls": made}
    if not isinstance(obj, dict):
        raise truncated()
    if "tool_calls" in obj:
        seen: set[str] = set()
        calls = []
        for c in obj["tool_calls"]:
            key = json.dumps([c["name"], c["arguments"]], sort_keys=True)
            if key not in seen:
                seen.add(key)
                calls.append(call(str(c["name"]), c["arguments"]))
        return Answer("", calls)
    content = obj.get("content")
    return Answer(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))


def _complete_calls(output: str) -> list[Any]:
    """The whole calls at the start of a list of calls that was cut short."""
    start = _CALLS.match(output)
    if start is None:
        return []
    decoder = json.JSONDecoder()
    made: list[Any] = []
    at = start.end()
    while True:
        try:
            item, at = decoder.raw_decode(output, at)
        except json.JSONDecodeError:
            return made
        made.append(item)
        sep = _NEXT.match(output, at)
        if sep is None:
            return made
        at = sep.end()


class ContentStream:
    """The text of a ``{"content": "..."}`` answer as the model writes it, so a
    text answer streams (a call is parsed whole): :meth:`feed` takes the raw
    output piece by piece and returns the text it completes."""

    __slots__ = ("off", "raw", "sent")

    def __init__(self) -> None:
        self.raw = ""
        self.sent = 0  # characters of text returned so far
        self.off = False  # not a text answer (or a text held to a schema)

    def feed(self, piece: str) -> str:
        if self.off:
            return ""
        self.raw += piece
        partial = _PARTIAL_TEXT.match(self.raw)
        if partial is None:
            compact = re.sub(r"\s", "", self.raw)
            self.off = not _OPENING.startswith(compact)
            return ""
        text = _unescape(partial.group(1))
        if text and "\ud800" <= text[-1] <= "\udbff":  # half a surrogate pair: wait for the rest
            text = text[:-1]
        out = text[self.sent :]
        self.sent = len(text)
        return out


_OPENING = '{"content":"'


def truncated() -> TollwayError:
    return invalid(
        "tool_call_truncated",
        "the output reached max_tokens before its tool call (or JSON answer) was complete; raise max_tokens",
        "max_tokens",
    )


def _unescape(s: str) -> str:
    while s:
        try:
            out: str = json.loads(f'"{s}"')
            return out
        except json.JSONDecodeError:  # cut inside an escape
            s = s[:-1]
    return s
