"""Several OS processes, each with its own Ledger and engine, on ONE database.

Six worker processes start at the same moment (each connects first, then
waits for a "go" line on stdin) and race to reserve a fixed amount from one
funded customer account until it is drained, posting half of their
reservations (in full) as they go.  At the same time they all top up a second
account under the SAME idempotency keys, and fight over the same set of
reservations on a third account (some processes post them, others void them).
Each process has its own group-commit writer, so the only thing keeping them
apart is the database: ``SELECT … FOR UPDATE`` and unique indexes on
PostgreSQL, ``BEGIN IMMEDIATE`` (with a busy timeout) on SQLite.

Invariants it tries to break:

- no overspend and no lost capacity: exactly floor(funds / amount)
  reservations succeed, across all processes, and what is left is
  funds mod amount;
- the account's debits_pending + debits_posted never exceed credits_posted;
- every acknowledged reservation and post is in the database exactly once
  (none lost, none applied twice, no phantom);
- an idempotency key commits once across processes: every process gets the
  same transfer for it, and the account is credited once per key;
- a reservation resolves (post or void) exactly once across processes;
- the ledger sums to zero (posted and pending).
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from conftest import settings_for
from tollway.core.schema import PENDING, POST_PENDING
from tollway.core.schema import ledger_pending as P
from tollway.core.schema import ledger_transfers as T
from tollway.ledger.types import Account
from tollway.runtime import Runtime

pytestmark = pytest.mark.slow

WORKERS = 6
AMOUNT = 7
CAPACITY = 1_500
FUNDS = AMOUNT * CAPACITY + AMOUNT - 1  # the remainder must never be reservable
BURST = 16  # reservations each process submits at once (one group-commit batch)
TOPUPS = 40  # keys, each sent by every process
TOPUP = 1_000
CONTESTED = 60  # reservations every process tries to resolve
HELD = 10  # the amount of each

# Runs in each worker process: python -c WORKER '<json config>'. Prints
# "ready" once connected, waits for a line on stdin, works, prints a JSON report.
WORKER = r"""
import asyncio, json, sys
from tollway.settings import Settings
from tollway.core.errors import TollwayError
from tollway.runtime import Runtime

cfg = json.loads(sys.argv[1])
LOST_RACE = {"pending_transfer_already_posted", "pending_transfer_already_voided"}


async def attempt(coro):
    try:
        return await coro
    except TollwayError as e:
        return e.code


async def main():
    settings = Settings.model_validate({"database": {"url": cfg["url"], "sqlite_synchronous": "NORMAL"}})
    rt = Runtime.build(settings)
    L = rt.ledger
    out = {"reserved": [], "posted": [], "topups": {}, "won": [], "lost": 0, "errors": {}}
    resolve = L.post if cfg["post"] else L.void
    try:
        await L.accounts([cfg["account"]])  # connect before the start signal
        await L.get_account(cfg["account"])
        print("ready", flush=True)
        sys.stdin.readline()  # everyone starts on the same line
        to_post, topups, contested = [], list(range(cfg["topups"])), list(cfg["contested"])
        for _ in range(10_000):
            tops, topups = topups[:4], topups[4:]
            fights, contested = contested[:4], contested[4:]
            calls = [("reserve", None, L.reserve(cfg["account"], "sys_revenue", cfg["amount"],
                                                 timeout_s=3600)) for _ in range(cfg["burst"])]
            calls += [("post", pid, L.post(pid)) for pid in to_post]
            calls += [("topup", k, L.transfer("sys_funding", cfg["topup_account"], cfg["topup"],
                                              idempotency_key=f"topup-{k}")) for k in tops]
            calls += [("fight", pid, resolve(pid)) for pid in fights]
            results = await asyncio.gather(*(attempt(c) for _, _, c in calls))
            to_post, reserved = [], 0
            for (what, arg, _), r in zip(calls, results):
                if what == "reserve" and r == "insufficient_funds":
                    continue
                if what == "fight" and r in LOST_RACE:
                    out["lost"] += 1
                    continue
                if isinstance(r, str):
                    out["errors"][r] = out["errors"].get(r, 0) + 1
                elif what == "reserve":
                    out["reserved"].append(r.id)
                    reserved += 1
                    if reserved % 2:  # post every other one (in full) next round
                        to_post.append(r.id)
                elif what == "post":
                    out["posted"].append(r.pending_id)
                elif what == "topup":
                    out["topups"][arg] = r.id
                else:
                    out["won"].append([r.pending_id, r.kind])
            if not reserved and not to_post and not topups and not contested:
                break
    finally:
        await rt.close()
    print(json.dumps(out), flush=True)


asyncio.run(main())
"""


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


async def _setup(url: str) -> tuple[str, str, str, list[str]]:
    """The drained account, the topped-up one, and the contested reservations (and their account)."""
    rt = Runtime.build(settings_for(url))
    L = rt.ledger
    try:
        spender = await L.create_account("customer", name="shared")
        await L.transfer("sys_funding", spender.id, FUNDS)
        topped = await L.create_account("customer", name="topped-up")
        holder = await L.create_account("customer", name="contested")
        await L.transfer("sys_funding", holder.id, CONTESTED * HELD)
        held = [await L.reserve(holder.id, "sys_revenue", HELD, timeout_s=3600) for _ in range(CONTESTED)]
        return spender.id, topped.id, holder.id, [t.id for t in held]
    finally:
        await rt.close()


async def _final(url: str, spender: str) -> tuple[dict[str, Account], Counter[str]]:
    """All balances, and transfer rows counted (the spender's by flags)."""
    rt = Runtime.build(settings_for(url))
    try:
        accounts = {a.id: a for a in await rt.ledger.accounts()}
        rows: Counter[str] = Counter()
        async with rt.engine.connect() as conn:
            q = sql_select(T.c.flags, func.count()).where(T.c.debit_account_id == spender).group_by(T.c.flags)
            for flags, n in await conn.execute(q):
                rows[f"spender flags={flags}"] = n
            q = sql_select(T.c.credit_account_id, func.count()).group_by(T.c.credit_account_id)
            for account, n in await conn.execute(q):
                rows[f"credits to {account}"] = n
            q = sql_select(T.c.pending_id, func.count()).where(T.c.pending_id.is_not(None))
            for pid, n in await conn.execute(q.group_by(T.c.pending_id)):
                rows[f"resolutions of {pid}"] = n
            rows["open"] = (await conn.execute(sql_select(func.count()).select_from(P))).scalar_one()
        return accounts, rows
    finally:
        await rt.close()


def test_processes_share_one_database_safely(db_url: str, tmp_path: Path) -> None:
    spender, topped, holder, contested = asyncio.run(_setup(db_url))
    procs: list[subprocess.Popen[str]] = []
    logs = []
    try:
        for i in range(WORKERS):
            cfg = {
                "url": db_url,
                "account": spender,
                "amount": AMOUNT,
                "burst": BURST,
                "topup_account": topped,
                "topup": TOPUP,
                "topups": TOPUPS,
                # Half walk the contested reservations forwards, half backwards;
                # posters and voiders alternate, so each one is fought over.
                "contested": contested if i % 2 else contested[::-1],
                "post": i % 4 < 2,
            }
            log = (tmp_path / f"worker{i}.log").open("w")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-X", "faulthandler", "-c", WORKER, json.dumps(cfg)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
        for i, p in enumerate(procs):
            line = _readline(p, 60)
            assert line.strip() == "ready", f"worker {i} did not start:\n{_log(tmp_path, i)}"
        t0 = time.perf_counter()
        for p in procs:  # the start line: every worker is already connected
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports: list[dict[str, Any]] = []
        for i, p in enumerate(procs):
            stdout, _ = p.communicate(timeout=240)
            assert p.returncode == 0, f"worker {i} exited with {p.returncode}:\n{_log(tmp_path, i)}"
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()

    errors = [r["errors"] for r in reports if r["errors"]]
    assert errors == [], f"unexpected refusals: {errors}"
    accounts, rows = asyncio.run(_final(db_url, spender))
    assert sum(x.credits_posted - x.debits_posted for x in accounts.values()) == 0
    assert sum(x.credits_pending - x.debits_pending for x in accounts.values()) == 0

    # The drained account: exactly its capacity was reserved, over all processes.
    reserved = [i for r in reports for i in r["reserved"]]
    posted = [i for r in reports for i in r["posted"]]
    assert len(set(reserved)) == len(reserved) == CAPACITY, (len(reserved), CAPACITY)
    assert set(posted) <= set(reserved) and len(set(posted)) == len(posted)
    per_process = [len(r["reserved"]) for r in reports]
    assert sum(1 for n in per_process if n) >= 2, f"no contention: {per_process}"
    a = accounts[spender]
    assert a.credits_posted == FUNDS
    assert a.debits_pending + a.debits_posted <= a.credits_posted
    held, taken = len(reserved) - len(posted), len(posted)
    assert (a.debits_pending, a.debits_posted) == (held * AMOUNT, taken * AMOUNT)
    assert a.available == FUNDS % AMOUNT
    assert rows[f"spender flags={PENDING}"] == len(reserved)
    assert rows[f"spender flags={POST_PENDING}"] == len(posted)

    # Shared idempotency keys: one transfer per key, the same one for everybody.
    for k in range(TOPUPS):
        ids = {r["topups"][str(k)] for r in reports}
        assert len(ids) == 1, f"key topup-{k} gave {ids}"
    assert rows[f"credits to {topped}"] == TOPUPS
    assert accounts[topped].credits_posted == TOPUPS * TOPUP

    # Contested reservations: each resolved exactly once.
    won = [(pid, kind) for r in reports for pid, kind in r["won"]]
    assert sorted(pid for pid, _ in won) == sorted(contested)
    assert sum(r["lost"] for r in reports) == (WORKERS - 1) * CONTESTED
    assert all(rows[f"resolutions of {pid}"] == 1 for pid in contested)
    h = accounts[holder]
    n_posted = sum(1 for _, kind in won if kind == "post_pending")
    assert (h.debits_pending, h.debits_posted) == (0, n_posted * HELD)
    assert rows["open"] == held

    kinds = Counter(kind for _, kind in won)
    print(
        f"\n{WORKERS} processes in {elapsed:.2f}s: reservations per process {per_process}, "
        f"{len(posted)} posts; contested {dict(kinds)}"
    )


def _log(tmp_path: Path, i: int) -> str:
    return (tmp_path / f"worker{i}.log").read_text()[-3000:]
