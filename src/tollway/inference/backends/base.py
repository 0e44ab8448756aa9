"""What every backend provides, in one vocabulary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tollway.core.errors import ErrorType, TollwayError, invalid


@dataclass(slots=True)
class ChatParams:
    messages: list[dict[str, Any]]  # role and content; tool_calls / tool_call_id in a tool loop
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # enforce this JSON Schema
    json_object: bool = False  # any JSON object
    tools: list[dict[str, Any]] | None = None  # OpenAI function calling: [{"type": "function", ...}]
    # OpenAI's tool_choice: "auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = True  # the caller reads tokens as they come (an upstream may answer whole otherwise)
    # What the backend worked out while counting the prompt (llama_cpp: the
    # token ids and template stops), so generation does not redo it.
    prepared: Any = None
    grammar: Any = None  # llama_cpp: the compiled json_schema grammar


@dataclass(slots=True)
class Delta:
    """A piece of generated text (one or more tokens)."""

    text: str


@dataclass(slots=True)
class Finish:
    reason: str  # stop | length | cancelled | tool_calls
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's message.tool_calls, when the model made any


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call as it streams, in OpenAI's shape: the first piece of
    call ``index`` carries its ``id`` and ``name``, later ones argument fragments.
    The whole calls also come in :attr:`Finish.tool_calls`. (Joins
    :data:`ChatEvent` once the chat route streams tool calls.)"""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


ChatEvent = Delta | Finish


class Cancel:
    """A stop flag a generation checks between tokens, from any thread (a bool
    write is atomic under the GIL). Cheaper than a ``threading.Event``, which
    builds a condition and a lock, and one is made for every call."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass(slots=True)
class Progress:
    """Tokens so far, updated as they are produced: what a cut-short call is charged."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatBackend(Protocol):
    provider: str

    def prompt_tokens(self, params: ChatParams) -> int:
        """Exact prompt tokens, or a safe upper bound when the backend cannot count."""
        ...

    def stream(self, params: ChatParams, cancel: Cancel, progress: Progress) -> AsyncIterator[ChatEvent]:
        """Generate; ends with one :class:`Finish`. Stops early once ``cancel`` is set."""
        ...


def context_exceeded(tokens: int, n_ctx: int, param: str) -> TollwayError:
    return invalid(
        "context_length_exceeded",
        f"the input is {tokens} tokens; this model's context is {n_ctx} tokens",
        param,
    )


def load_failed(model: str, why: str) -> TollwayError:
    return TollwayError(
        ErrorType.API, "model_load_failed", f"model {model!r} could not be loaded: {why}", status=500
    )


class UpstreamError(TollwayError):
    """A provider failed; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, provider: str, why: str, retryable: bool) -> None:
        super().__init__(
            ErrorType.API, "upstream_error", f"upstream provider {provider!r} failed: {why}", status=502
        )
        self.provider = provider
        self.retryable = retryable
        self.attempts = 1  # the router sets how many were made in all when every one failed


def upstream_failed(provider: str, why: str, *, retryable: bool = True) -> UpstreamError:
    return UpstreamError(provider, why, retryable)
