"""A schedule as callers see it, and its row in the ``schedules`` table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import Row

Kind = Literal["delay", "at", "cron"]
Status = Literal["pending", "running", "done", "failed", "cancelled"]
OPEN: tuple[Status, ...] = ("pending", "running")


@dataclass(frozen=True)
class Schedule:
    id: str
    owner: str
    task: str
    payload: dict[str, Any]
    kind: Kind
    cron: str | None
    next_run_us: int  # when it runs next (a running one: when it was due)
    attempts: int  # runs started for this occurrence
    max_attempts: int
    status: Status
    last_error: str | None
    created_us: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "schedule",
            "id": self.id,
            "owner": self.owner,
            "task": self.task,
            "payload": self.payload,
            "kind": self.kind,
            "cron": self.cron,
            "next_run_us": self.next_run_us,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "status": self.status,
            "last_error": self.last_error,
            "created_us": self.created_us,
        }


def from_row(r: Row[Any]) -> Schedule:
    return from_mapping(r._mapping)


def from_mapping(m: Mapping[Any, Any]) -> Schedule:
    return Schedule(
        id=m["id"],
        owner=m["owner"],
        task=m["task"],
        payload=orjson.loads(m["payload"]),
        kind=m["kind"],
        cron=m["cron"],
        next_run_us=m["next_run_us"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        status=m["status"],
        last_error=m["last_error"],
        created_us=m["created_us"],
    )
