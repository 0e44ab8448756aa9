"""OpenAI-compatible request bodies (and the Workers AI ``/ai/run`` shape).

Strict types; parameters OpenAI defines but tollway does not implement are
accepted only with their neutral values, so a client is never silently
given something other than it asked for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str = Field(min_length=1, max_length=64)
    arguments: str  # JSON, as the model wrote it


class ToolCall(_Body):
    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, min_length=1)  # assistant
    tool_call_id: str | None = Field(None, min_length=1, max_length=200, validate_default=True)  # tool
    # None (or absent): only an assistant message that called tools. Validated
    # after the fields above, so it knows the message's role and calls.
    content: str | list[TextPart] | None = Field(None, validate_default=True)

    @field_validator("tool_calls")
    @classmethod
    def _calls_by_assistant(cls, v: list[ToolCall] | None, info: ValidationInfo) -> list[ToolCall] | None:
        if v is not None and info.data.get("role") != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        return v

    @field_validator("tool_call_id")
    @classmethod
    def _id_of_tool(cls, v: str | None, info: ValidationInfo) -> str | None:
        if (info.data.get("role") == "tool") != (v is not None):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        return v

    @field_validator("content")
    @classmethod
    def _content(cls, v: str | list[TextPart] | None, info: ValidationInfo) -> str | list[TextPart] | None:
        if v is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise PydanticCustomError(
                "missing", "Field required (null only in an assistant message with tool_calls)"
            )
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def chat(self) -> dict[str, Any]:
        """The message as tollway's chat (OpenAI's format) carries it to a model."""
        m: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text(),
        }
        if self.tool_calls is not None:
            m["content"] = self.text() or None
            m["tool_calls"] = [c.model_dump(mode="json") for c in self.tool_calls]
        if self.tool_call_id is not None:
            m["tool_call_id"] = self.tool_call_id
        return m


class FunctionDef(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaSpec(_Body):
    name: str = Field(max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """A schema that is not a JSON Schema is refused (400 invalid_schema) on every backend."""
        if v is not None:
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError
            from jsonschema.validators import validator_for

            try:
                validator_for(v, default=Draft202012Validator).check_schema(v)
            except SchemaError as e:
                where = "/".join(str(p) for p in e.path)
                at = f" (at {where})" if where else ""
                raise ValueError(f"is not a valid JSON Schema: {e.message}{at}") from None
        return v


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("json_schema.schema is required when type is 'json_schema'")
        return self


class ChatRequest(_Body):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, strict=False)
    top_p: float | None = Field(None, gt=0, le=1, strict=False)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    n: Literal[1] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, strict=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, strict=False)
    user: str | None = Field(None, max_length=256)  # the customer's end user: kept in the request log
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Accepted with the values that change nothing here (docs/inference.md#parameters).
    logprobs: Literal[False] | None = None
    store: bool | None = None  # chat completions are not stored (the Responses API stores)
    service_tier: Literal["auto", "default"] | None = None
    # Kept in the request log as its tags (OpenAI's bounds: 16 pairs, 64 / 512 characters).
    metadata: dict[str, str] | None = Field(None, max_length=16)

    @field_validator("metadata")
    @classmethod
    def _tags(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and any(len(k) > 64 or len(x) > 512 for k, x in v.items()):
            raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class EmbeddingsRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("input must not be empty")
        if len(items) > 2048:
            raise ValueError("at most 2048 inputs per request")
        if any(not s for s in items):
            raise ValueError("input strings must not be empty")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class RunRequest(BaseModel):
    """Workers AI-style input: ``{prompt}`` or ``{messages}`` for chat, ``{text}`` for embeddings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | None = Field(None, min_length=1)
    messages: list[Message] | None = Field(None, min_length=1)
    text: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, strict=False)
    stream: bool = False
