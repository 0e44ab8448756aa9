"""Schedules: delay / at / cron, cancel, idempotency, retries with backoff,
leases between concurrent schedulers, and a process killed mid-run."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import settings_for
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
from tollway.core.schema import schedules as S
from tollway.core.storage import make_engine
from tollway.schedules import Schedule, Scheduler

T0 = 1_800_000_000_000_000  # 2027-01-15T08:00:00Z, on a whole minute
SEC = 1_000_000
OWNER = "agent:support:sess_1"


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    e = make_engine(settings_for(db_url).database)
    yield e
    await e.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


class Recorder:
    """A handler that records what it ran, and can fail the first N runs."""

    def __init__(self, fail: int = 0) -> None:
        self.runs: list[Schedule] = []
        self.fail = fail

    async def __call__(self, s: Schedule) -> None:
        self.runs.append(s)
        if len(self.runs) <= self.fail:
            raise RuntimeError(f"boom {len(self.runs)}")


def scheduler(
    engine: AsyncEngine, clock: ManualClock, *, fail: int = 0, **kw: Any
) -> tuple[Scheduler, Recorder]:
    s = Scheduler(engine, clock, **kw)
    rec = Recorder(fail)
    s.register("work", rec)
    return s, rec


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(S))).scalar_one())


# ------------------------------------------------------------------ kinds


async def test_delay_runs_once_after_its_delay(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, rec = scheduler(engine, clock)
    s = await sch.schedule(OWNER, "work", {"ticket": 42}, delay_s=10)
    assert (s.kind, s.status, s.next_run_us, s.attempts) == ("delay", "pending", T0 + 10 * SEC, 0)
    assert s.to_dict()["object"] == "schedule" and s.to_dict()["payload"] == {"ticket": 42}
    assert await sch.run_due() == 0
    clock.advance(9.999)
    assert await sch.run_due() == 0
    clock.advance(0.001)
    assert await sch.run_due() == 1
    assert [(r.id, r.payload, r.status, r.attempts) for r in rec.runs] == [
        (s.id, {"ticket": 42}, "running", 1)
    ]
    done = await sch.get(OWNER, s.id)
    assert done.status == "done" and done.last_error is None
    clock.advance(3600)
    assert await sch.run_due() == 0 and len(rec.runs) == 1
    assert await sch.list(OWNER) == []
    assert [x.id for x in await sch.list(OWNER, include_done=True)] == [s.id]


async def test_at_runs_at_its_time(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, rec = scheduler(engine, clock)
    now = await sch.schedule(OWNER, "work", {}, at_us=T0)
    later = await sch.schedule(OWNER, "work", {"n": 2}, at_us=T0 + 60 * SEC)
    assert [s.id for s in await sch.list(OWNER)] == [now.id, later.id]  # soonest first
    assert await sch.run_due() == 1 and rec.runs[0].id == now.id
    clock.advance(60)
    assert await sch.run_due() == 1 and rec.runs[1].id == later.id and rec.runs[1].kind == "at"


async def test_cron_repeats_in_utc(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, _ = scheduler(engine, clock)
    s = await sch.schedule(OWNER, "work", {}, cron="*/15  *  * * *")
    assert s.cron == "*/15 * * * *" and s.next_run_us == T0 + 15 * 60 * SEC
    daily = await sch.schedule(OWNER, "work", {}, cron="30 9 * * 1-5")  # weekdays 09:30 UTC
    assert dt.datetime.fromtimestamp(daily.next_run_us / SEC, dt.UTC) == dt.datetime(
        2027, 1, 15, 9, 30, tzinfo=dt.UTC
    )
    for i in range(1, 4):
        clock.advance(15 * 60)
        assert await sch.run_due() == 1
        again = await sch.get(OWNER, s.id)
        assert (again.status, again.attempts, again.next_run_us) == (
            "pending",
            0,
            T0 + (i + 1) * 15 * 60 * SEC,
        )
    clock.advance(3 * 3600)  # a late scheduler runs a missed cron once, then the next one is in the future
    assert await sch.run_due() == 2
    assert (await sch.get(OWNER, s.id)).next_run_us > clock.now_us()


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "param", "code"),
    [
        ({}, "delay_s", "invalid_schedule"),
        ({"delay_s": 1, "cron": "* * * * *"}, "cron", "invalid_schedule"),
        ({"delay_s": -1}, "delay_s", "invalid_schedule"),
        ({"delay_s": float("nan")}, "delay_s", "invalid_schedule"),
        ({"delay_s": True}, "delay_s", "invalid_schedule"),
        ({"delay_s": 1e12}, "delay_s", "invalid_schedule"),
        ({"at_us": T0 - 1}, "at_us", "invalid_schedule"),
        ({"at_us": 1.5}, "at_us", "invalid_schedule"),
        ({"cron": "* * * *"}, "cron", "invalid_cron"),
        ({"cron": "* * * * * *"}, "cron", "invalid_cron"),
        ({"cron": "61 * * * *"}, "cron", "invalid_cron"),
        ({"cron": "every day"}, "cron", "invalid_cron"),
        ({"cron": 5}, "cron", "invalid_cron"),
        ({"delay_s": 1, "task": "nope"}, "task", "unknown_task"),
        ({"delay_s": 1, "owner": ""}, "owner", "invalid_owner"),
        ({"delay_s": 1, "payload": [1]}, "payload", "invalid_payload"),
        ({"delay_s": 1, "payload": {"x": float("inf")}}, "payload", "invalid_payload"),
        ({"delay_s": 1, "payload": {"x": {1: 2}}}, "payload", "invalid_payload"),
        ({"delay_s": 1, "payload": {"x": object()}}, "payload", "invalid_payload"),
        ({"delay_s": 1, "payload": {"x": 2**70}}, "payload", "invalid_payload"),
        ({"delay_s": 1, "payload": {"x": "y" * 70_000}}, "payload", "invalid_payload"),
        ({"delay_s": 1, "max_attempts": 0}, "max_attempts", "invalid_max_attempts"),
        ({"delay_s": 1, "idempotency_key": ""}, "idempotency_key", "invalid_idempotency_key"),
    ],
)
async def test_bad_input_is_a_400_and_writes_nothing(
    engine: AsyncEngine, clock: ManualClock, kw: dict[str, Any], param: str, code: str
) -> None:
    sch, _ = scheduler(engine, clock)
    args: dict[str, Any] = {"owner": OWNER, "task": "work", "payload": {}, **kw}
    with pytest.raises(TollwayError) as e:
        await sch.schedule(args.pop("owner"), args.pop("task"), args.pop("payload"), **args)
    assert (e.value.status, e.value.code, e.value.param) == (400, code, param)
    assert await count(engine) == 0


# ---------------------------------------------------- cancel, get, owners


async def test_cancel(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, rec = scheduler(engine, clock)
    s = await sch.schedule(OWNER, "work", {}, delay_s=5)
    with pytest.raises(TollwayError) as e:
        await sch.cancel("agent:other:sess_2", s.id)
    assert e.value.status == 404
    with pytest.raises(TollwayError) as e:
        await sch.get("agent:other:sess_2", s.id)
    assert e.value.status == 404 and e.value.code == "schedule_not_found"
    cancelled = await sch.cancel(OWNER, s.id)
    assert cancelled.status == "cancelled"
    assert (await sch.cancel(OWNER, s.id)).status == "cancelled"  # again: the same answer
    clock.advance(10)
    assert await sch.run_due() == 0 and rec.runs == []
    done = await sch.schedule(OWNER, "work", {}, delay_s=0)
    await sch.run_due()
    with pytest.raises(TollwayError) as e:
        await sch.cancel(OWNER, done.id)
    assert e.value.status == 409 and e.value.code == "schedule_finished"
    with pytest.raises(TollwayError) as e:
        await sch.cancel(OWNER, "sched_missing")
    assert e.value.status == 404


async def test_cancel_during_a_run_stops_the_cron(engine: AsyncEngine, clock: ManualClock) -> None:
    sch = Scheduler(engine, clock)
    s: Schedule | None = None

    async def cancel_myself(run: Schedule) -> None:
        await sch.cancel(run.owner, run.id)

    sch.register("work", cancel_myself)
    s = await sch.schedule(OWNER, "work", {}, cron="* * * * *")
    clock.advance(60)
    assert await sch.run_due() == 1
    assert (await sch.get(OWNER, s.id)).status == "cancelled"
    clock.advance(600)
    assert await sch.run_due() == 0


async def test_owners_are_separate_and_listable(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, _ = scheduler(engine, clock)
    a = await sch.schedule("agent:a:s1", "work", {}, delay_s=1)
    b = await sch.schedule("agent:b:s1", "work", {}, delay_s=2)
    c = await sch.schedule("agent%:x", "work", {}, delay_s=3)
    assert [s.id for s in await sch.list("agent:a:s1")] == [a.id]
    assert [s.id for s in await sch.list_all()] == [a.id, b.id, c.id]
    assert [s.id for s in await sch.list_all(owner_prefix="agent:b:")] == [b.id]
    assert [s.id for s in await sch.list_all(owner_prefix="agent%")] == [c.id]  # LIKE characters are literal
    assert (await sch.find(b.id)).owner == "agent:b:s1"


async def test_idempotency_key(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, _ = scheduler(engine, clock)
    first = await sch.schedule(OWNER, "work", {"n": 1}, delay_s=5, idempotency_key="remind-1")
    clock.advance(1)
    again = await sch.schedule(OWNER, "work", {"n": 1}, delay_s=5, idempotency_key="remind-1")
    assert again == first
    other_owner = await sch.schedule("agent:x:y", "work", {"n": 1}, delay_s=5, idempotency_key="remind-1")
    assert other_owner.id != first.id
    with pytest.raises(TollwayError) as e:
        await sch.schedule(OWNER, "work", {"n": 2}, delay_s=5, idempotency_key="remind-1")
    assert e.value.status == 409 and e.value.param == "idempotency_key"
    assert await count(engine) == 2


async def test_concurrent_calls_with_one_key_make_one_schedule(
    engine: AsyncEngine, clock: ManualClock, db_url: str
) -> None:
    sch, _ = scheduler(engine, clock)
    other, _ = scheduler(make_engine(settings_for(db_url).database), clock)
    made = await asyncio.gather(
        *(
            (sch if i % 2 else other).schedule(OWNER, "work", {}, delay_s=1, idempotency_key="k")
            for i in range(8)
        )
    )
    await other.engine.dispose()
    assert len({s.id for s in made}) == 1 and await count(engine) == 1


# ----------------------------------------------------------------- retries


async def test_retries_back_off_then_fail(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, rec = scheduler(engine, clock, fail=10, backoff_s=2)
    s = await sch.schedule(OWNER, "work", {}, delay_s=0, max_attempts=3)
    assert await sch.run_due() == 1
    after1 = await sch.get(OWNER, s.id)
    assert (after1.status, after1.attempts, after1.next_run_us) == ("pending", 1, T0 + 2 * SEC)
    assert after1.last_error == "RuntimeError: boom 1"
    clock.advance(1.9)
    assert await sch.run_due() == 0
    clock.advance(0.1)
    assert await sch.run_due() == 1
    after2 = await sch.get(OWNER, s.id)
    assert (after2.status, after2.attempts, after2.next_run_us) == (
        "pending",
        2,
        T0 + 6 * SEC,
    )  # 2 s, then 4 s
    clock.advance(4)
    assert await sch.run_due() == 1
    failed = await sch.get(OWNER, s.id)
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 3, "RuntimeError: boom 3")
    clock.advance(3600)
    assert await sch.run_due() == 0 and len(rec.runs) == 3


async def test_a_retry_that_succeeds_is_done(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, _ = scheduler(engine, clock, fail=1, backoff_s=1)
    s = await sch.schedule(OWNER, "work", {}, delay_s=0)
    await sch.run_due()
    clock.advance(1)
    await sch.run_due()
    assert (await sch.get(OWNER, s.id)).status == "done"


async def test_backoff_is_capped(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, _ = scheduler(engine, clock, fail=10, backoff_s=10, max_backoff_s=15)
    s = await sch.schedule(OWNER, "work", {}, delay_s=0, max_attempts=5)
    for _ in range(3):
        clock.advance(15)
        await sch.run_due()
    got = await sch.get(OWNER, s.id)
    assert got.attempts == 3 and got.next_run_us == clock.now_us() + 15 * SEC


async def test_a_failing_cron_moves_on_to_its_next_occurrence(
    engine: AsyncEngine, clock: ManualClock
) -> None:
    sch, rec = scheduler(engine, clock, fail=2, backoff_s=1)
    s = await sch.schedule(OWNER, "work", {}, cron="0 * * * *", max_attempts=2)
    clock.advance(3600)
    await sch.run_due()
    clock.advance(1)
    await sch.run_due()
    got = await sch.get(OWNER, s.id)
    assert (got.status, got.attempts, got.last_error) == ("pending", 0, "RuntimeError: boom 2")
    assert got.next_run_us == T0 + 2 * 3600 * SEC
    clock.advance(3600)
    await sch.run_due()
    assert len(rec.runs) == 3 and (await sch.get(OWNER, s.id)).attempts == 0


async def test_a_slow_handler_times_out_and_is_retried(engine: AsyncEngine, clock: ManualClock) -> None:
    sch = Scheduler(engine, clock, timeout_s=0.05, backoff_s=1)

    async def hang(_: Schedule) -> None:
        await asyncio.sleep(10)

    sch.register("work", hang)
    s = await sch.schedule(OWNER, "work", {}, delay_s=0)
    await sch.run_due()
    got = await sch.get(OWNER, s.id)
    assert (got.status, got.attempts, got.last_error) == ("pending", 1, "TimeoutError")


async def test_the_run_loop_survives_handler_errors(engine: AsyncEngine, clock: ManualClock) -> None:
    sch = Scheduler(engine, clock)
    ok = asyncio.Event()

    async def bad(_: Schedule) -> None:
        raise ValueError("bad payload")

    async def good(_: Schedule) -> None:
        ok.set()

    sch.register("bad", bad)
    sch.register("good", good)
    await sch.schedule(OWNER, "bad", {}, delay_s=0)
    loop = asyncio.create_task(sch.run(0.01))
    await asyncio.sleep(0.1)
    await sch.schedule(OWNER, "good", {}, delay_s=0)
    await asyncio.wait_for(ok.wait(), 10)
    assert not loop.done()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop


# ----------------------------------------------- leases between processes


async def test_only_registered_tasks_are_claimed(engine: AsyncEngine, clock: ManualClock) -> None:
    sch, rec = scheduler(engine, clock)
    cli = Scheduler(engine, clock)  # e.g. the CLI: no handlers
    await sch.schedule(OWNER, "work", {}, delay_s=0)
    assert await cli.run_due() == 0
    assert await sch.run_due() == 1 and len(rec.runs) == 1


async def test_two_schedulers_never_run_a_row_twice(db_url: str, clock: ManualClock) -> None:
    engines = [make_engine(settings_for(db_url).database) for _ in range(2)]
    ran: Counter[str] = Counter()
    running: set[str] = set()
    overlaps: list[str] = []

    async def work(s: Schedule) -> None:
        if s.id in running:
            overlaps.append(s.id)
        running.add(s.id)
        ran[s.id] += 1
        await asyncio.sleep(0.002)
        running.discard(s.id)

    a, b = (Scheduler(e, clock) for e in engines)
    a.register("work", work)
    b.register("work", work)
    ids = [(await a.schedule(f"agent:x:{i}", "work", {"i": i}, delay_s=i % 3)).id for i in range(60)]
    for _ in range(3):
        clock.advance(1)
        await asyncio.gather(*(x.run_due(limit=7) for x in (a, b, a, b, a, b) for _ in range(3)))
    assert overlaps == [] and dict(ran) == dict.fromkeys(ids, 1)
    for e in engines:
        await e.dispose()


async def test_a_held_lease_blocks_others_until_it_runs_out(engine: AsyncEngine, db_url: str) -> None:
    clock = ManualClock(T0)
    slow_engine = make_engine(settings_for(db_url).database)
    slow = Scheduler(slow_engine, clock, lease_s=30)
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(_: Schedule) -> None:
        started.set()
        await release.wait()

    slow.register("work", stuck)
    other, rec = scheduler(engine, clock, lease_s=30)
    s = await other.schedule(OWNER, "work", {}, delay_s=0)
    first = asyncio.create_task(slow.run_due())
    await started.wait()
    assert (await other.get(OWNER, s.id)).status == "running"
    clock.advance(29)
    assert await other.run_due() == 0  # the lease holds
    clock.advance(2)
    assert await other.run_due() == 1  # it ran out: taken over (at least once)
    taken = await other.get(OWNER, s.id)
    assert (taken.status, taken.attempts) == ("done", 2) and len(rec.runs) == 1
    release.set()
    await first  # the first run's finish is fenced out by the new lease
    assert await other.get(OWNER, s.id) == taken
    await slow_engine.dispose()


# Runs in a child process: claims the due row and dies (SIGKILL) inside the handler.
CHILD = r"""
import asyncio, os, signal, sys
from tollway.core.clock import ManualClock
from tollway.settings import Settings
from tollway.core.storage import make_engine
from tollway.schedules import Scheduler

url, now, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]


async def die(s):
    with open(marker, "w") as f:
        f.write(s.id)
    os.kill(os.getpid(), signal.SIGKILL)


async def main():
    engine = make_engine(Settings.model_validate({"database": {"url": url}}).database)
    sch = Scheduler(engine, ManualClock(now), lease_s=30)
    sch.register("work", die)
    await sch.run_due()


asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_process_killed_mid_run_leaves_the_row_to_run_again(
    engine: AsyncEngine, clock: ManualClock, db_url: str, tmp_path: Path
) -> None:
    sch, rec = scheduler(engine, clock, lease_s=30)
    s = await sch.schedule(OWNER, "work", {"job": "reindex"}, delay_s=0)
    marker = tmp_path / "ran"
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CHILD, db_url, str(T0), str(marker)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert marker.read_text() == s.id  # it died inside the handler
    mid = await sch.get(OWNER, s.id)
    assert (mid.status, mid.attempts) == ("running", 1)
    assert await sch.run_due() == 0  # its lease still holds
    clock.advance(31)
    assert await sch.run_due() == 1
    assert [r.payload for r in rec.runs] == [{"job": "reindex"}]
    done = await sch.get(OWNER, s.id)
    assert (done.status, done.attempts) == ("done", 2)
    assert done.last_error is not None and "lease expired" in done.last_error


async def test_a_row_whose_last_attempt_died_is_failed(
    engine: AsyncEngine, clock: ManualClock, db_url: str
) -> None:
    dead_engine = make_engine(settings_for(db_url).database)
    dead = Scheduler(dead_engine, clock, lease_s=5)
    started = asyncio.Event()

    async def hang(_: Schedule) -> None:
        started.set()
        await asyncio.sleep(3600)

    dead.register("work", hang)
    sch, rec = scheduler(engine, clock, lease_s=5)
    s = await sch.schedule(OWNER, "work", {}, delay_s=0, max_attempts=1)
    run = asyncio.create_task(dead.run_due())
    await started.wait()
    run.cancel()  # as good as dead: it stops renewing and never finishes
    with pytest.raises(asyncio.CancelledError):
        await run
    clock.advance(6)
    assert await sch.run_due() == 0 and rec.runs == []
    failed = await sch.get(OWNER, s.id)
    assert (failed.status, failed.attempts, failed.last_error) == (
        "failed",
        1,
        "lease expired: the process running it stopped",
    )
    await dead_engine.dispose()


# ------------------------------------------------------------- the server


async def test_the_server_runs_due_schedules(db_url: str) -> None:
    """The Runtime's scheduler runs in the app's lifespan, beside the other loops."""
    from tollway.api.app import create_app
    from tollway.runtime import Runtime

    rt = Runtime.build(settings_for(db_url, schedules={"tick_seconds": 0.01}))
    ran = asyncio.Event()

    async def ping(s: Schedule) -> None:
        assert s.payload == {"hello": "world"}
        ran.set()

    rt.scheduler.register("ping", ping)
    app = create_app(rt=rt)
    async with app.router.lifespan_context(app):
        s = await rt.scheduler.schedule("system:test", "ping", {"hello": "world"}, delay_s=0)
        await asyncio.wait_for(ran.wait(), 10)
        for _ in range(100):
            if (await rt.scheduler.get("system:test", s.id)).status == "done":
                break
            await asyncio.sleep(0.01)
        assert (await rt.scheduler.get("system:test", s.id)).status == "done"


# --------------------------------------------------------------------- CLI


def test_cli_lists_and_cancels(tmp_path: Path, db_url: str) -> None:
    import json

    from typer.testing import CliRunner

    from tollway.cli.main import app

    async def seed() -> list[Schedule]:
        e = make_engine(settings_for(db_url).database)
        sch = Scheduler(e, ManualClock(T0))
        sch.register("remind", Recorder())
        made = [
            await sch.schedule("agent:support:s1", "remind", {"n": 1}, delay_s=60),
            await sch.schedule("agent:billing:s2", "remind", {"n": 2}, cron="0 9 * * *"),
        ]
        await e.dispose()
        return made

    one, two = asyncio.run(seed())
    runner = CliRunner()
    cfg = tmp_path / "tollway.toml"
    assert runner.invoke(app, ["init", "--path", str(cfg), "--json"]).exit_code == 0
    cfg.write_text(cfg.read_text().replace('url = "sqlite:///.tollway/tollway.db"', f'url = "{db_url}"'))

    def run(*args: str, code: int = 0) -> Any:
        r = runner.invoke(app, ["--config", str(cfg), "schedules", *args, "--json"])
        assert r.exit_code == code, r.output
        return json.loads(r.stdout)

    assert [s["id"] for s in run("list")["data"]] == [one.id, two.id]
    assert [s["id"] for s in run("list", "--owner", "agent:billing:")["data"]] == [two.id]
    assert run("cancel", two.id)["status"] == "cancelled"
    assert [s["id"] for s in run("list")["data"]] == [one.id]
    assert {s["status"] for s in run("list", "--all")["data"]} == {"pending", "cancelled"}
    assert run("cancel", "sched_nope", code=1)["error"]["code"] == "schedule_not_found"
    table = runner.invoke(app, ["--config", str(cfg), "schedules", "list"])
    assert table.exit_code == 0 and one.id in table.stdout and "agent:support:s1" in table.stdout


# -------------------------------------------------------------- invariants

Op = tuple[str, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("delay"), st.integers(0, 120)),
        st.tuples(st.just("cron"), st.integers(0, 2)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.integers(1, 90)),
        st.tuples(st.just("run"), st.integers(1, 5)),
        st.tuples(st.just("flaky"), st.integers(0, 1)),
    ),
    max_size=40,
)
CRONS = ["* * * * *", "*/2 * * * *", "0 * * * *"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops)
async def test_random_histories_keep_the_invariants(engine: AsyncEngine, steps: list[Op]) -> None:
    """Whatever the order of schedules, cancels, failures, time and runs: nothing
    runs before it is due, after it is cancelled, or after it is done; a one-off
    runs at most max_attempts times; and, time given, every open one-off is done."""
    async with engine.begin() as conn:
        await conn.execute(S.delete())
    clock = ManualClock(T0)
    sch = Scheduler(engine, clock, backoff_s=1, max_backoff_s=8)
    runs: Counter[str] = Counter()
    fail = [False]
    closed: dict[str, str] = {}  # id -> done | cancelled, as seen

    async def work(s: Schedule) -> None:
        assert s.next_run_us <= clock.now_us(), "ran before it was due"
        assert s.id not in closed, f"ran after it was {closed.get(s.id)}"
        runs[s.id] += 1
        if fail[0]:
            raise RuntimeError("flaky")

    sch.register("work", work)
    made: list[Schedule] = []
    for op, n in steps:
        if op == "delay":
            made.append(await sch.schedule(OWNER, "work", {}, delay_s=n, max_attempts=3))
        elif op == "cron":
            made.append(await sch.schedule(OWNER, "work", {}, cron=CRONS[n], max_attempts=3))
        elif op == "cancel" and made:
            s = made[n % len(made)]
            try:
                closed[s.id] = (await sch.cancel(OWNER, s.id)).status
            except TollwayError as e:
                assert e.code == "schedule_finished"
        elif op == "advance":
            clock.advance(n)
        elif op == "run":
            await sch.run_due(limit=n)
        elif op == "flaky":
            fail[0] = bool(n)
        for s in await sch.list(OWNER, include_done=True):
            if s.status in ("done", "failed"):
                closed.setdefault(s.id, s.status)
            if s.kind != "cron":
                assert runs[s.id] <= s.max_attempts
    fail[0] = False
    for _ in range(12):  # time enough for every backoff
        clock.advance(60)
        while await sch.run_due():
            pass
    for s in await sch.list(OWNER, include_done=True):
        if s.kind != "cron":
            assert s.status in ("done", "failed", "cancelled"), s
            assert (s.status == "done") == (s.id not in closed or closed[s.id] == "done")
