"""The frameworks agents are built on, unchanged, by base URL against a real
``tollway serve``, over the Responses API: pydantic-ai with
``OpenAIResponsesModel`` and the OpenAI Agents SDK with its default Responses
model, each running a whole tool loop (the stand-in upstream calls
``get_weather``, then answers once it sees the tool's result)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import fake_upstream
from test_agent_frameworks import ANSWER, ASK, Served, served

__all__ = ["served"]  # the fixture, shared with test_agent_frameworks


@pytest.fixture(autouse=True)
def _answers_stop() -> Iterator[None]:
    """The stand-in's text answers end with "stop": one ended by its length is an
    incomplete response, which the Agents SDK takes as a failure."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fake_upstream, "FINISH", "stop")
        yield


def test_pydantic_ai_agent_with_the_responses_model(served: Served) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=served.url + "/v1", api_key=served.key)
    agent = Agent(OpenAIResponsesModel("up", provider=provider))
    cities: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return "sunny"

    result = agent.run_sync(ASK)
    assert cities == ["Paris"] and result.output == ANSWER
    assert served.spent() > 0


async def test_openai_agents_sdk_with_its_default_responses_model(served: Served) -> None:
    from openai import AsyncOpenAI

    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

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
        model=OpenAIResponsesModel(model="up", openai_client=client),
        tools=[get_weather],
    )
    result = await Runner.run(agent, ASK)
    assert cities == ["Paris"] and result.final_output == ANSWER
    assert served.spent() > 0


async def test_openai_agents_sdk_streamed_over_the_responses_model(served: Served) -> None:
    from openai import AsyncOpenAI

    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return "sunny"

    client = AsyncOpenAI(base_url=served.url + "/v1", api_key=served.key)
    model = OpenAIResponsesModel(model="up", openai_client=client)
    agent = Agent(name="weather", instructions="Answer with the tool.", model=model, tools=[get_weather])
    result = Runner.run_streamed(agent, ASK)
    async for _ in result.stream_events():
        pass
    assert cities == ["Paris"] and result.final_output == ANSWER
    assert served.spent() > 0
