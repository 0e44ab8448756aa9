"""An agent's knowledge and memory: documents chunked with overlap, embedded
and stored in the agent's vector index (tollway.vectors); the top-k chunks
retrieved for each turn (cited by id); and the context sent to the model,
capped by tokens, with older turns folded into a summary."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tollway.agents.spec import AgentSpec
from tollway.agents.store import Message, Session
from tollway.core.errors import TollwayError, invalid
from tollway.inference.service import Caller, Inference
from tollway.observe import tracing
from tollway.vectors.service import Vectors

MAX_DOC_CHARS = 1_000_000
_DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}$")


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str
    text: str
    score: float
    doc: str

    def cite(self) -> dict[str, Any]:
        return {"id": self.id, "doc": self.doc, "score": round(self.score, 4)}


def chunk(text: str, size: int, overlap: int) -> list[str]:
    """Windows of at most ``size`` characters, each starting ``overlap``
    characters before the previous one ended; cuts fall on whitespace when
    there is some in the window's last quarter."""
    text = text.strip()
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + size * 3 // 4, end)
            nl = text.rfind("\n", start + size * 3 // 4, end)
            cut = max(space, nl)
            if cut > start:
                end = cut
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return out


async def ingest(
    vectors: Vectors, inference: Inference, owner: Caller, spec: AgentSpec, docs: Any
) -> dict[str, Any]:
    """Chunk, embed (charged to ``owner``) and upsert ``docs`` ([{id, text, metadata?}])
    into the agent's index, created on first use. Re-ingesting a document
    replaces its chunks' vectors."""
    r = spec.retrieval
    if not r.index:
        raise invalid("retrieval_not_configured", f"agent {spec.name!r} has no retrieval.index", "agent")
    if not isinstance(docs, list) or not docs:
        raise invalid("invalid_documents", "documents is a non-empty list of {id, text}", "documents")
    items: list[dict[str, Any]] = []
    for i, d in enumerate(docs):
        p = f"documents[{i}]"
        if not isinstance(d, dict) or set(d) - {"id", "text", "metadata"}:
            raise invalid("invalid_documents", "each document is {id, text, metadata?}", p)
        if not isinstance(d.get("id"), str) or not _DOC_ID.match(d["id"]):
            raise invalid("invalid_document_id", "id: letters, digits and _.:- (at most 48)", f"{p}.id")
        text = d.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_DOC_CHARS:
            raise invalid(
                "invalid_text", f"text is a non-empty string of at most {MAX_DOC_CHARS}", f"{p}.text"
            )
        meta = d.get("metadata") or {}
        if not isinstance(meta, dict):
            raise invalid("invalid_metadata", "metadata is an object", f"{p}.metadata")
        for j, piece in enumerate(chunk(text, r.chunk_chars, r.overlap_chars)):
            items.append(
                {"id": f"{d['id']}#{j}", "text": piece, "metadata": {**meta, "doc": d["id"], "text": piece}}
            )
    cfg = inference.model(vectors.embeddings_model, "embeddings")
    vecs, m = await inference.embed(owner, cfg, [it["text"] for it in items])
    try:
        await vectors.index(owner.customer_id, r.index)
    except TollwayError as e:
        if e.code != "unknown_index":
            raise
        await vectors.create_index(
            owner.customer_id, r.index, len(vecs[0]), "cosine", f"knowledge base of agent {spec.name}"
        )
    await vectors.upsert(
        owner.customer_id,
        r.index,
        [
            {"id": it["id"], "values": v, "metadata": it["metadata"]}
            for it, v in zip(items, vecs, strict=True)
        ],
    )
    return {"object": "agent.ingest", "documents": len(docs), "chunks": len(items), "charged": m.charged}


async def retrieve(vectors: Vectors, caller: Caller, spec: AgentSpec, query: str) -> tuple[list[Chunk], int]:
    """The top-k chunks for ``query`` (the embedding charged to ``caller``) and what it cost."""
    with tracing.span("retrieval") as sp:
        found, charged = await _retrieve(vectors, caller, spec, query)
        if sp is not None:
            sp.set_attribute("tollway.retrieval.index", spec.retrieval.index)
            sp.set_attribute("tollway.retrieval.top_k", spec.retrieval.top_k)
            sp.set_attribute("tollway.retrieval.chunks", len(found))
            sp.set_attribute("tollway.charge_micros", charged)
        return found, charged


async def _retrieve(vectors: Vectors, caller: Caller, spec: AgentSpec, query: str) -> tuple[list[Chunk], int]:
    r = spec.retrieval
    inference = vectors.inference
    assert inference is not None
    cfg = inference.model(vectors.embeddings_model, "embeddings")
    vecs, m = await inference.embed(caller, cfg, [query[:2000]])
    try:
        found = await vectors.query(r.owner, r.index, vecs[0], topK=r.top_k, returnMetadata="all")
    except TollwayError as e:
        if e.code == "unknown_index":  # nothing ingested yet
            return [], m.charged
        raise
    out = []
    for match in found["matches"]:
        meta = match.get("metadata") or {}
        out.append(
            Chunk(match["id"], str(meta.get("text", "")), float(match["score"]), str(meta.get("doc", "")))
        )
    return out, m.charged


# ---------------------------------------------------------------------- context


def as_chat(m: Message) -> dict[str, Any]:
    """A stored message as the model sees it (a human's reply speaks for the agent)."""
    return {"role": "user" if m.role == "user" else "assistant", "content": m.content}


def context(
    spec: AgentSpec,
    session: Session,
    chunks: list[Chunk],
    user_text: str,
    count: Callable[[list[dict[str, Any]]], int],
    extra_system: str = "",
) -> list[dict[str, Any]]:
    """System prompt, summary, retrieved chunks, then as many recent messages
    as fit in ``memory.max_context_tokens`` (oldest dropped first), then the
    new message. ``count`` gives a message list's tokens."""
    system = spec.system_prompt
    if session.summary:
        system += "\n\nSummary of the conversation so far:\n" + session.summary
    if chunks:
        system += "\n\nRelevant knowledge (cite the [id] you use):\n" + "\n".join(
            f"[{c.id}] {c.text}" for c in chunks
        )
    if session.state:
        system += "\n\nSession state: " + ", ".join(f"{k}={v}" for k, v in session.state.items())
    if extra_system:
        system += "\n\n" + extra_system
    head = [{"role": "system", "content": system}]
    tail = [{"role": "user", "content": user_text}]
    history = [as_chat(m) for m in session.recent]
    budget = spec.memory.max_context_tokens
    lo = 0
    while lo < len(history) and count(head + history[lo:] + tail) > budget:
        lo += 1
    return head + history[lo:] + tail


def to_summarize(spec: AgentSpec, session: Session) -> list[Message]:
    """The messages to fold into the summary now (none until ``summarize_after_turns``)."""
    mem = spec.memory
    if not mem.summarize_after_turns:
        return []
    turns = sorted({m.turn for m in session.recent})
    if len(turns) <= mem.summarize_after_turns:
        return []
    keep_from = turns[-mem.keep_recent_turns]
    return [m for m in session.recent if m.turn < keep_from]


def summary_prompt(previous: str, messages: list[Message]) -> list[dict[str, Any]]:
    lines = "\n".join(f"{'user' if m.role == 'user' else 'agent'}: {m.content}" for m in messages)
    prior = f"Summary so far:\n{previous}\n\n" if previous else ""
    return [
        {
            "role": "system",
            "content": "Summarize the conversation in a few sentences: facts, requests, decisions. "
            "Write only the summary.",
        },
        {"role": "user", "content": f"{prior}Conversation:\n{lines}"},
    ]
