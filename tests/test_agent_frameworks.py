"""The frameworks agents are built on, unchanged, by base URL against a real
``tollway serve`` (in a thread), over chat completions and over the Responses
API: pydantic-ai with ``OpenAIChatModel`` and ``OpenAIResponsesModel``, the
OpenAI Agents SDK with its chat-completions model and its default Responses
model (run and streamed), and langchain-openai's ``bind_tools`` (``invoke``
and ``astream``) and ``with_structured_output``.

The model behind tollway is an OpenAI-compatible stand-in that answers tool
calls deterministically (``get_weather`` with ``{"city": "Paris"}``, then a
text answer once it sees the tool's result), so each framework runs a whole
tool loop: the model calls the tool, the framework runs it, the model
answers. Every call is charged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import fake_upstream
from conftest import ADMIN, settings_for
from fake_upstream import WORDS, FakeUpstream, model
from threaded import ThreadServer, free_port
from tollway.api.app import create_app

ANSWER = "".join(WORDS)
ASK = "What is the weather in Paris?"


class Served:
    def __init__(self, url: str, key: str, account: str) -> None:
        self.url, self.key, self.account = url, key, account

    def spent(self) -> int:
        a = httpx.get(f"{self.url}/admin/ledger/accounts/{self.account}", headers=ADMIN).json()
        return int(a["debits_posted"])


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Served]:
    with FakeUpstream() as up:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = settings_for(
            db_url,
            models=[model("up", up.url)],
            provision={"edge_port": 0},
            inference={"free_neurons_per_day": 0},
        )
        with ThreadServer(create_app(settings), port=port), httpx.Client(base_url=url, timeout=30) as h:
            c = h.post("/admin/customers", json={"name": "Ada"}, headers=ADMIN).json()
            fund = {"debit_account_id": "sys_funding", "credit_account_id": c["account_id"], "amount": 10**8}
            assert h.post("/admin/ledger/transfers", json=fund, headers=ADMIN).status_code == 200
            key = h.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN).json()["key"]
            yield Served(url, key, c["account_id"])


@pytest.fixture(params=["chat", "responses"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which of tollway's APIs the framework's model speaks: chat completions or
    Responses. Over Responses the stand-in's text answers end with "stop": one
    ended by its length is an incomplete response, which the Agents SDK takes
    as a failure. (Ask for it before ``served``: the stand-in reads it as it starts.)"""
    if request.param == "responses":
        monkeypatch.setattr(fake_upstream, "FINISH", "stop")
    return str(request.param)


def test_pydantic_ai_agent_with_a_tool(api: str, served: Served) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=served.url + "/v1", api_key=served.key)
    kind = OpenAIChatModel if api == "chat" else OpenAIResponsesModel
    agent = Agent(kind("up", provider=provider))
    cities: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return "sunny"

    result = agent.run_sync(ASK)
    assert cities == ["Paris"] and result.output == ANSWER
    assert served.spent() > 0


@pytest.mark.parametrize("streamed", [False, True])
async def test_openai_agents_sdk(api: str, served: Served, streamed: bool) -> None:
    """With its chat-completions model, or its default Responses model; run, or streamed."""
    from openai import AsyncOpenAI

    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # no traces sent to OpenAI
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return "sunny"

    client = AsyncOpenAI(base_url=served.url + "/v1", api_key=served.key)
    kind = OpenAIChatCompletionsModel if api == "chat" else OpenAIResponsesModel
    agent = Agent(
        name="weather",
        instructions="Answer with the tool.",
        model=kind(model="up", openai_client=client),
        tools=[get_weather],
    )
    if streamed:
        run = Runner.run_streamed(agent, ASK)
        async for _ in run.stream_events():
            pass
        final = run.final_output
    else:
        final = (await Runner.run(agent, ASK)).final_output
    assert cities == ["Paris"] and final == ANSWER
    assert served.spent() > 0


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str


async def test_langchain_openai_bind_tools_invoke_astream_and_structured_output(served: Served) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="up", base_url=served.url + "/v1", api_key=served.key)  # type: ignore[arg-type]
    bound = llm.bind_tools([GetWeather])
    msg: Any = bound.invoke(ASK)
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("GetWeather", {"city": "Paris"})]

    merged: Any = None
    async for chunk in bound.astream(ASK):
        merged = chunk if merged is None else merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("GetWeather", {"city": "Paris"})]

    structured = llm.with_structured_output(GetWeather, method="function_calling")
    assert structured.invoke(ASK) == GetWeather(city="Paris")
    assert served.spent() > 0
