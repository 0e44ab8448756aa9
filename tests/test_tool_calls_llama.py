"""Tool calling on a local model (SmolLM2-135M on llama.cpp, loaded once per
session): the answer grammar allows exactly what ``tool_choice`` allows, a
forced call always parses into a call whose arguments validate against its
tool's schema, tools count toward the prompt, tool history renders with a
plain template and with one that has a tool format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tollway.core.errors import TollwayError
from tollway.inference.backends.base import Cancel, ChatParams, Delta, Finish, Progress
from tollway.inference.backends.embedded import default_gguf
from tollway.inference.backends.llama_cpp import LlamaCppBackend, LlamaInstance
from tollway.inference.config import ModelConfig


def tool(name: str, description: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


WEATHER = tool(
    "get_weather",
    "The weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
)
ORDER = tool(
    "order_status",
    "The status of an order.",
    {
        "type": "object",
        "properties": {"order_id": {"type": "string", "maxLength": 12}},
        "required": ["order_id"],
    },
)
ADD = tool(
    "add",
    "Adds two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
TOOLS = {t["function"]["name"]: t for t in (WEATHER, ORDER, ADD)}


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppBackend]:
    cfg = ModelConfig(name="smollm2", task="chat", backend="llama_cpp", n_ctx=2048)
    inst = LlamaInstance(cfg, default_gguf())
    yield LlamaCppBackend(cfg, [inst])
    inst.executor.shutdown()


def ask(backend: LlamaCppBackend, p: ChatParams) -> tuple[str, Finish]:
    backend.prompt_tokens(p)
    events = list(backend.instances[0].generate(p, Cancel(), Progress()))
    backend.last_deltas = sum(isinstance(e, Delta) for e in events)  # type: ignore[attr-defined]
    finish = events[-1]
    assert isinstance(finish, Finish)
    return "".join(e.text for e in events if isinstance(e, Delta)), finish


def params(
    content: str, tools: list[dict[str, Any]], choice: Any, max_tokens: int = 96, **kw: Any
) -> ChatParams:
    return ChatParams(
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        tools=tools,
        tool_choice=choice,
        **kw,
    )


def assert_valid_calls(finish: Finish, allowed: set[str]) -> None:
    assert finish.reason == "tool_calls" and finish.tool_calls
    for c in finish.tool_calls:
        assert c["type"] == "function" and c["id"].startswith("call_")
        name = c["function"]["name"]
        assert name in allowed
        args = json.loads(c["function"]["arguments"])
        Draft202012Validator(TOOLS[name]["function"]["parameters"]).validate(args)


@pytest.mark.parametrize(
    ("prompt", "choice"),
    [
        ("What is the weather in Paris?", {"type": "function", "function": {"name": "get_weather"}}),
        ("Where is my order A1001?", {"type": "function", "function": {"name": "order_status"}}),
        ("Say hello.", {"type": "function", "function": {"name": "add"}}),  # forced, whatever the prompt
        ("What is 2 plus 3?", "required"),
        ("Tell me a joke.", "required"),
    ],
)
def test_a_forced_call_always_parses_and_validates(llama: LlamaCppBackend, prompt: str, choice: Any) -> None:
    text, finish = ask(llama, params(prompt, [WEATHER, ORDER, ADD], choice, parallel_tool_calls=False))
    allowed = {choice["function"]["name"]} if isinstance(choice, dict) else set(TOOLS)
    assert text == ""
    assert_valid_calls(finish, allowed)
    assert len(finish.tool_calls or []) == 1  # not parallel: one call


def test_auto_answers_in_text_or_valid_calls_and_none_in_plain_text(llama: LlamaCppBackend) -> None:
    for prompt in ("Where is my order A1001?", "Say hello."):
        text, finish = ask(llama, params(prompt, [WEATHER, ORDER], "auto"))
        if finish.reason == "tool_calls":
            assert text == ""
            assert_valid_calls(finish, {"get_weather", "order_status"})
        else:  # streamed as it is written, not whole at the end
            assert finish.reason in ("stop", "length") and not finish.tool_calls and not text.startswith("{")
            assert llama.last_deltas > 1 or len(text) < 8
    plain = params("Say hello.", [WEATHER], "none", max_tokens=8)
    text, finish = ask(llama, plain)
    assert plain.grammar is None and finish.tool_calls is None and finish.reason in ("stop", "length")


def test_a_forced_call_max_tokens_cannot_hold_is_a_clear_error(llama: LlamaCppBackend) -> None:
    """Decided: a call cut short by max_tokens is not returned half-made; the
    request fails with 400 tool_call_truncated naming max_tokens (and, like
    every error before output, is not charged)."""
    p = params("What is the weather in Paris?", [WEATHER], "required", max_tokens=4)
    with pytest.raises(TollwayError) as e:
        ask(llama, p)
    assert (e.value.status, e.value.code, e.value.param) == (400, "tool_call_truncated", "max_tokens")


def test_tools_count_toward_the_prompt_and_are_checked_first(llama: LlamaCppBackend) -> None:
    bare = llama.prompt_tokens(ChatParams(messages=[{"role": "user", "content": "Hi"}], max_tokens=8))
    offered = llama.prompt_tokens(params("Hi", [WEATHER, ORDER], "auto"))
    assert offered > bare + 50  # the tools and the answer format are in the prompt
    with pytest.raises(TollwayError) as e:
        llama.prompt_tokens(params("Hi", [WEATHER], {"type": "function", "function": {"name": "nope"}}))
    assert e.value.param == "tool_choice"
    bad = tool("bad", "", {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(?=a)b$"}}})
    with pytest.raises(TollwayError) as e:
        llama.prompt_tokens(params("Hi", [bad], "auto"))
    assert (e.value.code, e.value.param) == ("unsupported_schema", "tools")


HISTORY = [
    {"role": "user", "content": "What is the weather in Oslo?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
]


def test_tool_history_renders_with_a_plain_template(llama: LlamaCppBackend) -> None:
    p = ChatParams(messages=HISTORY, max_tokens=24, temperature=0, tools=[WEATHER], tool_choice="auto")
    prompt = llama.instances[0].llm.detokenize(llama.instances[0].prompt(p)[0]).decode()
    assert "Result of tool get_weather:\nsunny, 21 degrees" in prompt and '"city": "Oslo"' in prompt
    # Without tools (an agent's last call) the history still renders.
    assert llama.prompt_tokens(ChatParams(messages=HISTORY, max_tokens=8)) > 0


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}"
    "{% for c in m.tool_calls %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


def test_a_template_with_a_tool_format_renders_the_tools(llama: LlamaCppBackend) -> None:
    inst = llama.instances[0]
    kept = inst.formatter, inst.tool_format
    inst.formatter = Jinja2ChatFormatter(
        TOOL_TEMPLATE, "<|im_end|>", "", stop_token_ids=[inst.llm.token_eos()]
    )
    inst.tool_format = True
    try:
        p = ChatParams(messages=HISTORY, max_tokens=8, tools=[WEATHER, ORDER], tool_choice="required")
        prompt = inst.llm.detokenize(inst.prompt(p)[0]).decode()
    finally:
        inst.formatter, inst.tool_format = kept
    assert "Tools: get_weather order_status" in prompt  # the template's own format
    assert '<tool_call>{"city": "Oslo", "unit": "celsius"}</tool_call>' in prompt  # arguments as an object
    assert "Arguments (JSON schema)" not in prompt and "Call one or more tools" in prompt  # only the format


def test_stop_sequences_cut_a_text_answer_not_its_json(llama: LlamaCppBackend) -> None:
    p = params("Say hello.", [ORDER], "auto", max_tokens=48, stop=["o"])
    text, finish = ask(llama, p)
    assert "o" not in text and (finish.reason == "tool_calls" or finish.reason in ("stop", "length"))


_leaf = st.sampled_from(
    [{"type": "string", "maxLength": 16}, {"type": "integer"}, {"type": "boolean"}, {"enum": ["x", "y"]}]
)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), _leaf, min_size=1, max_size=3),
    st.sampled_from(["Do it.", "What is the weather?", "Look up order 7."]),
)
def test_forced_calls_of_generated_tools_always_parse(
    llama: LlamaCppBackend, fields: dict[str, Any], prompt: str
) -> None:
    schema = {"type": "object", "properties": fields, "required": sorted(fields)}
    p = params(prompt, [tool("generated", "A tool.", schema)], "required", max_tokens=128)
    p.parallel_tool_calls = False
    _, finish = ask(llama, p)
    assert finish.reason == "tool_calls" and finish.tool_calls
    Draft202012Validator(schema).validate(json.loads(finish.tool_calls[0]["function"]["arguments"]))
