"""Grammar-forced tool calls on the local model against unconstrained generation.

    .venv/bin/python bench/tool_grammar.py [--rounds 5]

SmolLM2-135M (the embedded default) on llama.cpp, one instance, temperature 0.
Each round generates, in turn: a plain answer (no grammar, ``max_tokens`` 48,
a prompt that runs long) and a forced call (``tool_choice`` naming a tool, the
grammar of inference/tool_calls). Reported: completion tokens per second of
each, median over the rounds, and their ratio; a forced call stops when its
JSON closes, so its tokens/s is what the grammar's per-token cost leaves.

Writes bench/results/tool_grammar.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import machine
from tollway.inference.backends.base import Cancel, ChatParams, Finish, Progress
from tollway.inference.backends.embedded import default_gguf
from tollway.inference.backends.llama_cpp import LlamaCppBackend, LlamaInstance
from tollway.inference.config import ModelConfig

RESULTS = Path(__file__).resolve().parent / "results" / "tool_grammar.json"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


def generate(backend: LlamaCppBackend, p: ChatParams) -> tuple[int, float, Finish]:
    backend.prompt_tokens(p)
    t0 = time.perf_counter()
    events = list(backend.instances[0].generate(p, Cancel(), Progress()))
    dt = time.perf_counter() - t0
    finish = events[-1]
    assert isinstance(finish, Finish)
    return finish.completion_tokens, dt, finish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    cfg = ModelConfig(name="smollm2", task="chat", backend="llama_cpp", n_ctx=2048)
    inst = LlamaInstance(cfg, default_gguf())
    backend = LlamaCppBackend(cfg, [inst])
    ask = [{"role": "user", "content": "What is the weather in Paris, in celsius? Explain how you know."}]
    plain = ChatParams(messages=ask, max_tokens=48, temperature=0)
    forced = ChatParams(
        messages=ask,
        max_tokens=48,
        temperature=0,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    generate(backend, plain)  # warm-up (and the grammar's compile, cached after)
    generate(backend, forced)
    rates: dict[str, list[float]] = {"plain": [], "forced_call": []}
    tokens: dict[str, list[int]] = {"plain": [], "forced_call": []}
    for i in range(a.rounds):
        for name, p in (("plain", plain), ("forced_call", forced)):
            n, dt, finish = generate(backend, p)
            if name == "forced_call":
                assert finish.reason == "tool_calls" and finish.tool_calls, finish
            rates[name].append(round(n / dt, 1))
            tokens[name].append(n)
            print(
                f"round {i + 1} {name:<11} {n} tokens in {dt * 1000:.0f} ms: {n / dt:.1f} tokens/s",
                flush=True,
            )
    inst.executor.shutdown()
    med = {k: statistics.median(v) for k, v in rates.items()}
    res: dict[str, Any] = {
        "command": f"python bench/tool_grammar.py --rounds {a.rounds}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "tokens_per_s": rates,
        "completion_tokens": tokens,
        "median_tokens_per_s": med,
        "forced_over_plain": round(med["forced_call"] / med["plain"], 2),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({"median_tokens_per_s": med, "forced_over_plain": res["forced_over_plain"]}))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
