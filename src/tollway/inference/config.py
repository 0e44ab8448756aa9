"""``[inference]`` and the model registry ``[[models]]``: what inference reads of ``tollway.toml``."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import Field, field_validator, model_validator

from tollway.core.config import LedgerConfig, Section, valid_amount


class InferenceConfig(Section):
    # Workers AI's published defaults: 10,000 free neurons a day, $0.011 per 1,000 after.
    free_neurons_per_day: int = Field(10_000, ge=0)
    usd_per_1000_neurons: str = "$0.011"
    # A reservation for a call is released after this if the process dies mid-call.
    hold_timeout_seconds: int = Field(600, ge=1)

    @field_validator("usd_per_1000_neurons")
    @classmethod
    def _price(cls, v: str) -> str:
        return valid_amount(v)


_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$"


class RetryConfig(Section):
    """How a deployment is retried before the router falls back to the next one."""

    max_attempts: int = Field(2, ge=1, le=20)
    backoff: Literal["constant", "linear", "exponential"] = "exponential"
    backoff_ms: int = Field(100, ge=0, le=60_000)  # first wait; linear adds it, exponential doubles it
    max_backoff_ms: int = Field(5_000, ge=0, le=600_000)
    attempt_timeout_seconds: float = Field(60, gt=0)


class DeploymentConfig(Section):
    """One place a routed model runs: a registry model (local or upstream) and its weight."""

    model: str = Field(pattern=_MODEL_NAME)
    weight: int = Field(1, ge=0, le=1_000_000)


class ModelConfig(Section):
    """One entry of the model registry (``[[models]]``)."""

    name: str = Field(pattern=_MODEL_NAME)
    task: Literal["chat", "embeddings"]
    backend: Literal["llama_cpp", "sentence_transformers", "openai", "anthropic", "router"]
    # Local backends: a GGUF file (llama_cpp) or model directory (sentence_transformers);
    # empty means the embedded default shipped in a PyPI package.
    path: str = ""
    n_ctx: int = Field(2048, ge=128, le=1_048_576)
    n_threads: int = Field(0, ge=0, description="0 = one per core (llama_cpp), torch's default (embeddings)")
    instances: int = Field(1, ge=1, le=64)
    queue_max: int = Field(32, ge=0, le=100_000)
    max_tokens: int = Field(512, ge=1)
    batch_size: int = Field(32, ge=1, le=4096)
    # openai backend: any OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI).
    base_url: str = ""
    api_key_env: str = ""
    upstream_model: str = ""
    timeout_seconds: float = Field(120, gt=0)
    # Rates, in neurons per million tokens (embeddings: input only). A router
    # has none of its own: each call is priced by the deployment that served it.
    neurons_per_m_input: int = Field(0, ge=0)
    neurons_per_m_output: int = Field(0, ge=0)
    # backend = "router": the deployments, tried by weight, each with ``retry``.
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.backend == "llama_cpp" and self.task != "chat":
            raise ValueError("backend llama_cpp serves task 'chat'")
        if self.backend == "sentence_transformers" and self.task != "embeddings":
            raise ValueError("backend sentence_transformers serves task 'embeddings'")
        if self.backend == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("backend openai needs base_url = 'http(s)://…/v1'")
        if self.backend == "anthropic" and (self.task != "chat" or not self.base_url.startswith("http")):
            raise ValueError("backend anthropic serves task 'chat' and needs base_url = 'http(s)://…'")
        if (self.backend == "router") != bool(self.deployments):
            raise ValueError("deployments = [...] is for backend 'router', which needs at least one")
        if self.backend == "router" and not any(d.weight for d in self.deployments):
            raise ValueError("a router needs a deployment with weight > 0")
        return self


def default_models() -> list[ModelConfig]:
    """The embedded defaults: both ship inside PyPI packages, nothing is downloaded.
    Rates are Workers AI's for the nearest published models (llama-3.2-1b-instruct:
    2,457 / 18,252 neurons per M in/out tokens; bge-small-en-v1.5: 1,841 per M)."""
    return [
        ModelConfig(
            name="smollm2-135m-instruct",
            task="chat",
            backend="llama_cpp",
            n_ctx=2048,
            max_tokens=512,
            neurons_per_m_input=2457,
            neurons_per_m_output=18252,
        ),
        ModelConfig(
            name="all-minilm-l6-v2",
            task="embeddings",
            backend="sentence_transformers",
            n_ctx=256,
            # One torch thread: on a small machine torch's OpenMP pool otherwise
            # slows llama.cpp for the life of the process (docs/benchmarks.md).
            n_threads=1,
            neurons_per_m_input=1841,
        ),
    ]


def check_registry(v: list[ModelConfig]) -> list[ModelConfig]:
    """Unique names; a router's deployments are non-router models of its task."""
    names = [m.name for m in v]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate model name {sorted(dup)[0]!r}")
    by_name = {m.name: m for m in v}
    for m in v:
        for d in m.deployments:
            target = by_name.get(d.model)
            if target is None or target.backend == "router":
                raise ValueError(f"model {m.name!r}: deployment {d.model!r} is not a non-router model")
            if target.task != m.task:
                raise ValueError(f"model {m.name!r}: deployment {d.model!r} serves {target.task}")
    return v


class InferenceSettings(Protocol):
    """What inference reads of the whole configuration (``tollway.settings.Settings`` is one)."""

    @property
    def inference(self) -> InferenceConfig: ...

    @property
    def models(self) -> list[ModelConfig]: ...

    @property
    def ledger(self) -> LedgerConfig: ...
