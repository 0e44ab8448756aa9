"""GGUF chat models with llama-cpp-python.

Generation runs token by token (``Llama.generate``) in a worker thread, so
tollway counts prompt and completion tokens exactly, stops within one token
when the client goes away, and applies stop sequences and JSON-Schema
grammars itself.  Each instance serves one generation at a time
(:class:`~tollway.inference.pool.InstancePool` hands them out).

Tool calls: the model answers in the grammar of
:func:`tollway.inference.tool_calls.answer_schema` (exactly what
``tool_choice`` allows), with the tools in the prompt (the chat template's
own tool format when it has one), and its output is parsed into
``Finish.tool_calls`` or text.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tollway.core.errors import invalid
from tollway.inference import tool_calls
from tollway.inference.backends.base import (
    Cancel,
    ChatEvent,
    ChatParams,
    Delta,
    Finish,
    Progress,
    load_failed,
)
from tollway.inference.backends.embedded import default_gguf
from tollway.inference.config import ModelConfig
from tollway.inference.pool import InstancePool

_DEFAULT_TEMPERATURE = 0.7
_DEFAULT_TOP_P = 0.95
_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a fresh seed per sampler


def no_weight_repacking() -> None:
    """Load models without llama.cpp's extra CPU buffer types (weights repacked
    for AMX and similar kernels): on AMX hardware ``ggml_backend_amx_mul_mat``
    segfaults at random during generation (ggml-org/llama.cpp#20824; seen here
    in the test suite). ``Llama()`` takes no such argument, so the default model
    parameters it starts from are wrapped, once, for this process."""
    import llama_cpp.llama_cpp as lc  # the module Llama() reads its defaults from

    default = lc.llama_model_default_params
    if getattr(default, "tollway_no_repacking", False):
        return

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    params.tollway_no_repacking = True  # type: ignore[attr-defined]
    lc.llama_model_default_params = params


class LlamaInstance:
    """One loaded model (not thread-safe: one generation at a time)."""

    def __init__(self, cfg: ModelConfig, path: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        threads = cfg.n_threads or (os.cpu_count() or 1)
        # Every llama.cpp call for this instance runs on one persistent thread:
        # OpenMP keeps a team of spinning workers per calling thread, and teams
        # left behind by other threads would compete for the same cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{cfg.name}")
        no_weight_repacking()
        self.llm = Llama(
            model_path=str(path),
            n_ctx=cfg.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{path} has no chat template (tokenizer.chat_template)")
        eos_id = self.llm.token_eos()
        bos_id = self.llm.token_bos()
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm.detokenize([eos_id], special=True).decode("utf-8", "ignore"),
            bos_token=self.llm.detokenize([bos_id], special=True).decode("utf-8", "ignore")
            if bos_id >= 0
            else "",
            stop_token_ids=[eos_id],
        )
        self.tool_format = "tools" in template  # the template renders tools itself

    def prompt(self, params: ChatParams) -> tuple[list[int], list[str]]:
        """The prompt's token ids (tools included) and the template's stops."""
        messages = params.messages
        if tool_calls.has_tool_history(messages):
            render = tool_calls.template_messages if self.tool_format else tool_calls.plain_messages
            messages = render(messages)
        tools = params.tools if self.tool_format and params.tools else None
        if tool_calls.active(params.tools, params.tool_choice):
            assert params.tools is not None
            note = tool_calls.prompt_note(params.tools, params.tool_choice, listing=tools is None)
            messages = tool_calls.with_note(messages, note)
        r = self.formatter(messages=messages, tools=tools)  # type: ignore[arg-type]
        tokens = self.llm.tokenize(r.prompt.encode("utf-8"), add_bos=True, special=True)
        stops = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        return tokens, stops

    def _prime(self, tokens: list[int]) -> None:
        """Evaluate the prompt up to its last token, so that the last token is always
        evaluated alone on the cache.

        llama.cpp keeps the previous prompt's cache and evaluates only what differs.
        A prompt evaluated in one batch gives its last token logits a few bits off
        those of the same token evaluated alone on the cached prefix, and a seeded
        request at a high temperature turns that into another answer: the same
        seed and prompt answered differently the second time. Split this way,
        the same prompt gets the same logits, cached or not."""
        import numpy as np

        llm = self.llm
        m = min(llm.n_tokens, len(tokens))
        same = llm.input_ids[:m] == np.asarray(tokens[:m])
        cached = m if bool(same.all()) else int(same.argmin())
        if cached < len(tokens) - 1:
            llm.n_tokens = cached  # eval drops the cache past it
            llm.eval(tokens[cached:-1])

    def generate(self, params: ChatParams, cancel: Cancel, progress: Progress) -> Iterator[ChatEvent]:
        """Blocking generator: yields Deltas then exactly one Finish."""
        from llama_cpp import llama_vocab_is_eog
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        vocab = self.llm._model.vocab
        tokens, template_stops = params.prepared or self.prompt(params)
        progress.prompt_tokens = len(tokens)
        tools = tool_calls.active(params.tools, params.tool_choice)
        # With tools the output is the answer's JSON: stop sequences apply to its text, once parsed.
        stops = [s for s in (template_stops if tools else params.stop + template_stops) if s]
        grammar = params.grammar
        if grammar is None and tools:
            grammar = compile_schema(answer_schema(params), "tools")
        elif grammar is None and params.json_schema is not None:
            grammar = compile_schema(params.json_schema)
        elif grammar is None and params.json_object:
            grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        # Every call sets the seed: llama.cpp keeps it on the shared model, so a
        # seed left by one request would fix the sampling of every later one.
        self.llm.set_seed(_RANDOM_SEED if params.seed is None else params.seed % _RANDOM_SEED)
        self._prime(tokens)
        temperature = _DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
        gen = self.llm.generate(
            tokens,
            temp=temperature,
            top_p=_DEFAULT_TOP_P if params.top_p is None else params.top_p,
            presence_penalty=params.presence_penalty or 0.0,
            frequency_penalty=params.frequency_penalty or 0.0,
            grammar=grammar,
        )
        text = TextAssembler(stops)
        produced = 0
        reason = "length"
        # A tool answer is parsed whole; a text answer streams, cut by the stop sequences.
        held: list[str] | None = [] if tools else None
        content = tool_calls.ContentStream()
        said = TextAssembler(params.stop)
        try:
            for tok in gen:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if llama_vocab_is_eog(vocab, tok):
                    reason = "stop"
                    break
                produced += 1
                progress.completion_tokens = produced
                piece, stopped = text.feed(self.llm.detokenize([tok], special=False))
                if held is not None:
                    held.append(piece)
                    piece, cut = said.feed(content.feed(piece).encode())
                    stopped = stopped or cut
                if piece:
                    yield Delta(piece)
                if stopped:
                    reason = "stop"
                    break
                if produced >= params.max_tokens:
                    break
        finally:
            gen.close()
        rest = text.flush() if reason != "stop" or not text.stopped else ""
        if held is not None and not said.stopped:
            if reason == "cancelled":
                yield Finish(reason, len(tokens), produced)
                return
            answer = tool_calls.parse("".join(held) + rest)
            if answer.calls:
                yield Finish("tool_calls", len(tokens), produced, answer.calls)
                return
            rest, stopped = said.feed(answer.text[content.sent :].encode())
            rest += "" if stopped else said.flush()
            reason = "stop" if stopped else reason
        elif held is not None:
            rest = ""
        if rest:
            yield Delta(rest)
        yield Finish(reason, len(tokens), produced)


def answer_schema(params: ChatParams) -> dict[str, Any]:
    """The schema a tool-calling answer is held to (``params.tools`` active)."""
    assert params.tools is not None
    return tool_calls.answer_schema(
        params.tools, params.tool_choice, params.parallel_tool_calls, params.json_schema
    )


SCHEMA_PARAM = "response_format.json_schema.schema"
# What llama.cpp's converter says, and the keyword it is about.
_KEYWORDS = (("pattern", "pattern"), ("ref", "$ref"), ("Unrecognized schema", "type"))


def compile_schema(schema: dict[str, Any], param: str = SCHEMA_PARAM) -> Any:
    """The llama.cpp grammar for a JSON schema, or ``400 unsupported_schema``
    naming the keyword it cannot compile. A ``pattern`` without ``^``/``$``
    is anchored: every string the anchored pattern matches also matches the
    schema's (unanchored) one, so the output stays valid. Grammars are cached
    by schema (an agent's tools, a client's tools: the same every call)."""
    try:
        return _compiled(json.dumps(schema))  # key order kept: it orders the output
    except Exception as e:  # the converter asserts, or raises ValueError/KeyError/RecursionError
        why = str(e).split("\n")[-1][:200] or type(e).__name__
        keyword = next((k for hint, k in _KEYWORDS if hint.lower() in why.lower()), None)
        what = f"keyword {keyword!r}" if keyword else "schema"
        raise invalid(
            "unsupported_schema",
            f"the local model's grammar cannot compile this {what}: {why}",
            param,
        ) from None


@functools.lru_cache(maxsize=64)
def _compiled(schema: str) -> Any:
    """A grammar is an immutable GBNF string: safe to share between calls and threads."""
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(_anchored(json.loads(schema))), verbose=False)


def _anchored(node: Any) -> Any:
    if isinstance(node, list):
        return [_anchored(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _anchored(v) for k, v in node.items()}
    p = node.get("pattern")
    if isinstance(p, str) and isinstance(node.get("type", "string"), str):
        out["pattern"] = ("" if p.startswith("^") else "^") + p + ("" if p.endswith("$") else "$")
    return out


class TextAssembler:
    """Turns token bytes into text: holds back incomplete UTF-8 and only the
    tail that could still grow into a stop sequence; cuts at the first stop.
    Text that cannot start a stop goes out at once (time to first token)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.raw = b""
        self.pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> tuple[str, bool]:
        self.raw += data
        try:
            decoded = self.raw.decode("utf-8")
            self.raw = b""
        except UnicodeDecodeError as e:
            if e.reason != "unexpected end of data":
                decoded = self.raw.decode("utf-8", "replace")
                self.raw = b""
            else:
                decoded = self.raw[: e.start].decode("utf-8")
                self.raw = self.raw[e.start :]
        self.pending += decoded
        for s in self.stops:
            i = self.pending.find(s)
            if i >= 0:
                out, self.pending = self.pending[:i], ""
                self.stopped = True
                return out, True
        keep = self._stop_prefix_len()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of ``pending`` that begins some stop sequence."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        out = self.pending + self.raw.decode("utf-8", "replace")
        self.pending, self.raw = "", b""
        return out


class LlamaCppBackend:
    provider = "llama_cpp"

    def __init__(self, cfg: ModelConfig, instances: list[LlamaInstance]) -> None:
        self.cfg = cfg
        self.instances = instances
        self.pool: InstancePool[LlamaInstance] = InstancePool(cfg.name, instances, cfg.queue_max)

    @staticmethod
    def load(cfg: ModelConfig) -> list[LlamaInstance]:
        """Load the model's instances. Blocking: call from a worker thread."""
        try:
            path = Path(cfg.path) if cfg.path else default_gguf()
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            with path.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise ValueError(f"{path} is not a GGUF file")
            return [LlamaInstance(cfg, path) for _ in range(cfg.instances)]
        except Exception as e:
            raise load_failed(cfg.name, f"{type(e).__name__}: {e}") from e

    def prompt_tokens(self, params: ChatParams) -> int:
        # Checked and compiled before any money moves: 400 if it cannot be.
        if params.tools is not None or params.tool_choice is not None:
            tool_calls.check(params.tools, params.tool_choice)
        params.prepared = self.instances[0].prompt(params)  # every instance shares the tokenizer
        if tool_calls.active(params.tools, params.tool_choice):
            params.grammar = compile_schema(answer_schema(params), "tools")
        elif params.json_schema is not None:
            params.grammar = compile_schema(params.json_schema)
        return len(params.prepared[0])

    async def stream(
        self, params: ChatParams, cancel: Cancel, progress: Progress
    ) -> AsyncIterator[ChatEvent]:
        async with self.pool.acquire() as inst:
            async for ev in _in_thread(inst.generate(params, cancel, progress), cancel, inst.executor):
                yield ev


async def _in_thread(
    gen: Iterator[Any], cancel: Cancel, executor: ThreadPoolExecutor, flush_s: float = 0.03
) -> AsyncIterator[Any]:
    """Drive a blocking generator on ``executor``'s thread, handing items to the loop.

    Wake-ups are coalesced: the producer schedules one only when none is
    pending, and after the first item at most every ``flush_s``.  On a small
    machine every extra runnable thread (the event loop, the client reading the
    stream) steals a core from llama.cpp's spinning workers, so tokens travel
    in small bursts instead of one wake-up each; the first is never delayed.
    """
    loop = asyncio.get_running_loop()
    buf: deque[Any] = deque()
    ready = asyncio.Event()
    scheduled = threading.Event()
    done = object()

    def wake() -> None:
        scheduled.clear()
        ready.set()

    last = [0.0]

    def push(item: Any, final: bool = False) -> None:
        buf.append(item)
        now = time.monotonic()
        # The first token goes out at once; later ones at most every flush_s.
        if not scheduled.is_set() and (final or now - last[0] >= flush_s):
            last[0] = now
            scheduled.set()
            loop.call_soon_threadsafe(wake)

    def run() -> None:
        try:
            for item in gen:
                push(item)
        except BaseException as e:  # handed to the consumer
            push(e, final=True)
        finally:
            push(done, final=True)

    worker = loop.run_in_executor(executor, run)
    try:
        while True:
            await ready.wait()
            ready.clear()
            while buf:
                item = buf.popleft()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        cancel.set()  # a consumer that stops early stops the generation
        await asyncio.shield(worker)
