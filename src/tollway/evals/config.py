"""``[evals]``: the eval loop (see tollway.evals and docs/observability.md)."""

from __future__ import annotations

from pydantic import Field

from tollway.core.config import Section


class EvalsConfig(Section):
    """How sessions are sampled and graded, who pays, and the weekly run."""

    grader: str = "smollm2-135m-instruct"  # a chat model of the registry
    # The customer grader calls (and replays) are charged to: the operator's own,
    # created on first use (fund it like any customer: its plan's allowance, credit).
    payer: str = "cus_operator"
    sample_share: float = Field(0.1, ge=0.0, le=1.0)  # of the sessions, graded at random
    max_sessions: int = Field(200, ge=1, le=10_000)  # per run, escalated sessions first
    window_days: int = Field(7, ge=1, le=366)  # sessions active in the last days
    max_transcript_chars: int = Field(6000, ge=500)  # the transcript the grader reads
    max_chunk_chars: int = Field(800, ge=100)  # of each cited chunk
    grader_max_tokens: int = Field(120, ge=20, le=2000)
    # How often a server keeps new escalation answers as examples (before memory ttl_seconds purges them).
    harvest_seconds: float = Field(300.0, gt=0)
    weekly: bool = False  # a weekly run of every agent on tollway.schedules
    weekly_cron: str = "0 3 * * 1"  # when (UTC): Mondays 03:00
