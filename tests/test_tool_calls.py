"""The one tool-calling mechanism for grammar-constrained models
(tollway.inference.tool_calls), pure: the answer schema allows exactly what
``tool_choice`` allows, every answer it allows parses into OpenAI tool calls
whose arguments validate against their tool's schema, and bad tools are 400s
naming the parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tollway.core.errors import TollwayError
from tollway.inference import tool_calls as tc
from tollway.inference.backends.llama_cpp import compile_schema


def tool(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name, "description": f"the {name} tool"}
    if params is not None:
        fn["parameters"] = params
    return {"type": "function", "function": fn}


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ORDER = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
TOOLS = [tool("weather", CITY), tool("order", ORDER)]


def valid(schema: dict[str, Any], answer: Any) -> bool:
    return bool(Draft202012Validator(schema).is_valid(answer))


def one_call(name: str, args: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": args}]}


def test_auto_allows_text_or_calls_of_tools_it_has() -> None:
    s = tc.answer_schema(TOOLS, "auto")
    Draft202012Validator.check_schema(s)
    assert valid(s, {"content": "hello"})
    assert valid(s, one_call("weather", {"city": "Paris"}))
    assert valid(
        s,
        {
            "tool_calls": [
                *one_call("weather", {"city": "Oslo"})["tool_calls"],
                {"name": "order", "arguments": {"id": 1}},
            ]
        },
    )
    assert not valid(s, one_call("nope", {}))
    assert not valid(s, one_call("order", {"id": "one"}))  # arguments held to the tool's schema
    assert not valid(s, {"tool_calls": []})
    assert valid(tc.answer_schema(TOOLS, None), {"content": "hi"})  # no tool_choice is auto


def test_required_named_and_not_parallel() -> None:
    required = tc.answer_schema(TOOLS, "required")
    assert not valid(required, {"content": "hello"}) and valid(required, one_call("order", {"id": 2}))
    named = tc.answer_schema(TOOLS, {"type": "function", "function": {"name": "order"}})
    assert valid(named, one_call("order", {"id": 2}))
    assert not valid(named, one_call("weather", {"city": "Paris"}))
    assert not valid(named, {"tool_calls": [one_call("order", {"id": 1})["tool_calls"][0]] * 2})
    single = tc.answer_schema(TOOLS, "auto", parallel=False)
    assert valid(single, one_call("order", {"id": 2}))
    assert not valid(single, {"tool_calls": [one_call("order", {"id": 1})["tool_calls"][0]] * 2})
    assert not tc.active(TOOLS, "none") and not tc.active(None, "auto") and tc.active(TOOLS, None)


def test_a_text_answer_can_be_held_to_the_response_format() -> None:
    s = tc.answer_schema(TOOLS, "auto", text_schema=ORDER)
    assert valid(s, {"content": {"id": 3}}) and not valid(s, {"content": "three"})
    assert tc.parse('{"content": {"id": 3}}').text == '{"id": 3}'


def test_parse_text_and_calls_in_openai_shape() -> None:
    assert tc.parse('{"content": "hi \\"you\\""}') == tc.Answer('hi "you"')
    a = tc.parse('{"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]}')
    [c] = a.calls
    assert a.text == "" and c["type"] == "function" and c["id"].startswith("call_")
    assert c["function"] == {"name": "weather", "arguments": json.dumps({"city": "Paris"})}
    two = tc.parse(json.dumps({"tool_calls": [{"name": "order", "arguments": {"id": i}} for i in (1, 2)]}))
    assert [json.loads(c["function"]["arguments"])["id"] for c in two.calls] == [1, 2]
    assert len({c["id"] for c in two.calls}) == 2


def test_output_cut_short_keeps_what_is_whole_or_is_a_clear_error() -> None:
    assert tc.parse('{"content": "the status is sh').text == "the status is sh"
    assert tc.parse('{"content": "caf\\u00').text == "caf"  # cut inside an escape
    whole = '{"name": "order", "arguments": {"id": 1}}'
    a = tc.parse(f'{{"tool_calls": [{whole}, {whole}, {{"name": "ord')  # a small model repeating itself
    assert [c["function"]["name"] for c in a.calls] == ["order"]  # whole calls kept, the same call once
    for cut in ('{"tool_calls": [{"name": "order", "argu', '{"tool_c', ""):
        with pytest.raises(TollwayError) as e:
            tc.parse(cut)
        assert (e.value.code, e.value.param, e.value.status) == ("tool_call_truncated", "max_tokens", 400)


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([{"type": "retrieval"}], None, "tools[0].type"),
        ([{"type": "function"}], None, "tools[0].function"),
        ([tool("has space")], None, "tools[0].function.name"),
        ([tool("x" * 65)], None, "tools[0].function.name"),
        ([tool("x\n")], None, "tools[0].function.name"),
        ([tool("a"), tool("a")], None, "tools[1].function.name"),
        ([tool("a", {"type": "object", "properties": 3})], None, "tools[0].function.parameters"),
        ([tool("a", [])], None, "tools[0].function.parameters"),  # type: ignore[arg-type]
        ([tool("a")], "sometimes", "tool_choice"),
        ([tool("a")], {"type": "function", "function": {"name": "b"}}, "tool_choice"),
        ([tool("a")], {"type": "function"}, "tool_choice"),
        (None, "required", "tool_choice"),
    ],
)
def test_bad_tools_are_400_naming_the_parameter(
    tools: list[dict[str, Any]] | None, choice: Any, param: str
) -> None:
    with pytest.raises(TollwayError) as e:
        tc.check(tools, choice)
    assert e.value.status == 400 and e.value.param == param, e.value.message


def test_good_tools_pass() -> None:
    tc.check(TOOLS, "auto")
    tc.check(TOOLS, {"type": "function", "function": {"name": "order"}})
    tc.check([tool("no_params")], "required")
    tc.check(None, None)


def test_defs_of_each_tool_are_hoisted_where_refs_resolve() -> None:
    """Pydantic-made schemas (pydantic-ai, langchain) use $defs; nested in the
    answer schema their $refs would point nowhere."""
    item = {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}
    a = {"type": "object", "properties": {"item": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": item}}
    b = {
        "type": "object",
        "properties": {"n": {"$ref": "#/definitions/Item"}},
        "definitions": {"Item": ORDER},
    }
    s = tc.answer_schema([tool("a", a), tool("b", b)], "required")
    assert set(s["$defs"]) == {"t0_Item", "t1_Item"}
    assert valid(s, one_call("a", {"item": {"sku": "X"}})) and not valid(s, one_call("a", {"item": {}}))
    assert valid(s, one_call("b", {"n": {"id": 1}})) and not valid(s, one_call("b", {"n": {"id": "1"}}))


def test_tool_history_renders_as_text_for_a_plain_template() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    msgs = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert tc.has_tool_history(msgs) and not tc.has_tool_history(msgs[:1])
    plain = tc.plain_messages(msgs)
    assert [m["role"] for m in plain] == ["user", "assistant", "user"]
    assert json.loads(plain[1]["content"]) == one_call(
        "weather", {"city": "Oslo"}
    )  # the format it answers in
    assert plain[2]["content"] == "Result of tool weather:\nsunny"
    templated = tc.template_messages(msgs)
    assert (
        templated[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
        and templated[1]["content"] == ""
    )
    assert msgs[1]["content"] is None  # the caller's messages are not changed


def test_the_prompt_note_lists_tools_and_the_answer_format() -> None:
    note = tc.prompt_note(TOOLS, "auto", listing=True)
    assert "- weather: the weather tool" in note and '"content"' in note
    forced = tc.prompt_note(TOOLS, {"type": "function", "function": {"name": "order"}}, listing=False)
    assert "weather" not in forced and "Call the tool order" in forced
    sys = tc.with_note(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "NOTE"
    )
    assert sys[0]["content"] == "Be brief.\n\nNOTE" and len(sys) == 2
    assert tc.with_note([{"role": "user", "content": "hi"}], "NOTE")[0] == {
        "role": "system",
        "content": "NOTE",
    }


# Hypothesis: tool schemas of the shapes agents use, and answers made from them.

_leaf = st.sampled_from(
    [
        ({"type": "string"}, st.text(max_size=8)),
        ({"type": "integer"}, st.integers()),
        ({"type": "number"}, st.floats(allow_nan=False, allow_infinity=False)),
        ({"type": "boolean"}, st.booleans()),
        ({"enum": ["a", "b", "c"]}, st.sampled_from(["a", "b", "c"])),
        ({"type": "array", "items": {"type": "integer"}}, st.lists(st.integers(), max_size=3)),
    ]
)
_names = st.from_regex(r"[a-zA-Z0-9_-]{1,12}", fullmatch=True)


@st.composite
def tool_and_args(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    fields = draw(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), _leaf, max_size=4))
    params = {
        "type": "object",
        "properties": {k: s for k, (s, _) in fields.items()},
        "required": sorted(fields),
    }
    args = {k: draw(v) for k, (_, v) in fields.items()}
    return params, args


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_names, tool_and_args()), min_size=1, max_size=4, unique_by=lambda t: t[0]), st.data()
)
def test_every_answer_the_schema_allows_parses_into_valid_calls(
    made: list[tuple[str, tuple[dict[str, Any], dict[str, Any]]]], data: st.DataObject
) -> None:
    tools = [tool(name, params) for name, (params, _) in made]
    tc.check(tools, "required")
    choice = data.draw(
        st.sampled_from(["auto", "required", {"type": "function", "function": {"name": made[0][0]}}])
    )
    schema = tc.answer_schema(tools, choice, parallel=data.draw(st.booleans()))
    Draft202012Validator.check_schema(schema)
    assert compile_schema(schema, "tools") is not None  # llama.cpp's grammar takes it
    picked = made[:1] if isinstance(choice, dict) else data.draw(st.lists(st.sampled_from(made), min_size=1))
    answer = {"tool_calls": [{"name": n, "arguments": a} for n, (_, a) in picked]}
    if not valid(schema, answer):  # only more calls than allowed
        assert len(picked) > 1
        return
    parsed = tc.parse(json.dumps(answer))
    own = {n: p for n, (p, _) in made}
    assert parsed.calls
    for c in parsed.calls:
        assert valid(own[c["function"]["name"]], json.loads(c["function"]["arguments"]))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30), st.lists(st.integers(1, 7), max_size=40), st.booleans())
def test_a_text_answer_streams_as_it_is_written(text: str, cuts: list[int], ascii_only: bool) -> None:
    """Whatever the pieces the tokens make (escapes and surrogate pairs split
    included), the streamed text is the answer's text, and a call streams none."""
    for output, expected in (
        (json.dumps({"content": text}, ensure_ascii=ascii_only), text),
        (json.dumps({"tool_calls": [{"name": "order", "arguments": {"id": text}}]}), ""),
        ('{\n  "content": ' + json.dumps(text) + "}", text),
    ):
        stream, streamed, at = tc.ContentStream(), "", 0
        for n in [*cuts, len(output)]:
            streamed += stream.feed(output[at : at + n])
            at += n
        whole = tc.parse(output)
        assert whole.text == expected and whole.text.startswith(streamed)
        assert streamed + whole.text[stream.sent :] == expected
