"""The frameworks agents are built on, unchanged, by base URL against a real
``tollway serve`` (in a thread): pydantic-ai with ``OpenAIChatModel``, the
OpenAI Agents SDK with its chat-completions model, and langchain-openai's
``bind_tools`` (``invoke`` and ``astream``) and ``with_structured_output``.

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


def test_pydantic_ai_agent_with_a_tool(served: Served) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=served.url + "/v1", api_key=served.key)
    agent = Agent(OpenAIChatModel("up", provider=provider))
    cities: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return "sunny"

    result = agent.run_sync(ASK)
    assert cities == ["Paris"] and result.output == ANSWER
    assert served.spent() > 0


async def test_openai_agents_sdk_with_its_chat_completions_model(served: Served) -> None:
    from openai import AsyncOpenAI

    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # no traces sent to OpenAI
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return "sunny"

    client = AsyncOpenAI(base_url=served.url + "/v1", api_key=served.key)
    agent = Agent(
        name="weather",
        instructions="Answer with the tool.",
        model=OpenAIChatCompletionsModel(model="up", openai_client=client),
        tools=[get_weather],
    )
    result = await Runner.run(agent, ASK)
    assert cities == ["Paris"] and result.final_output == ANSWER
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
