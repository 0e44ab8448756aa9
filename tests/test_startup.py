"""`tollway serve` starts fast: what start-up imports is checked, not timed.

Libraries that only some requests need (the eth libraries for x402 and
wallet signatures, aiohttp for outbound fetches, jsonschema for tool
arguments, Alembic for migrations) are imported on first use; a server
starting on a current database loads none of them. The measured time to a
healthy /healthz is in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LAZY = (
    "eth_account",
    "eth_keys",
    "eth_utils",
    "web3",
    "aiohttp",
    "jsonschema",
    "alembic",
    "stripe",
    "numpy",
    "usearch",
    "jinja2",  # the console's templates: on its first page
    "rich",  # the CLI's tables and messages: when one is printed
)

PROBE = """
import asyncio, json, sys
from tollway.api.app import create_app
from tollway.cli.main import app  # the CLI that runs `serve`
from tollway.settings import Settings
from tollway.runtime import Runtime

url = sys.argv[1]
async def main():
    if sys.argv[2] == "migrate":  # the first start, in its own process
        rt = Runtime.build(Settings(database={"url": url}))
        await rt.migrate()
        await rt.close()
        return
    application = create_app(Settings(database={"url": url}))  # every later start
    async with application.router.lifespan_context(application):
        pass
asyncio.run(main())
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_start_up_imports_no_library_only_some_requests_need(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tollway.db'}"
    for step in ("migrate", "start"):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, url, step],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & set(LAZY), sorted(loaded & set(LAZY))


GC_PROBE = """
import asyncio, gc, sys
from tollway.cli import run
url = sys.argv[1]
sys.argv = ["tollway", "--version"]  # a command other than serve
try:
    run()
except SystemExit as e:
    assert e.code in (0, None), e.code
cli = gc.isenabled()
from tollway.api.app import create_app
from tollway.settings import Settings
async def main():
    gc.disable()  # as `tollway serve` starts (tollway.cli.run)
    application = create_app(Settings(database={"url": url}))
    async with application.router.lifespan_context(application):
        return gc.isenabled(), gc.get_threshold()
on, threshold = asyncio.run(main())
print(cli, on, ",".join(map(str, threshold)))
"""


def test_the_collector_is_off_only_while_the_command_loads(tmp_path: Path) -> None:
    """`tollway` loads with the cyclic collector off; a command other than serve
    runs with it on, and serve turns it on once start-up is frozen, with its
    youngest generation collected less often."""
    out = subprocess.run(
        [sys.executable, "-c", GC_PROBE, f"sqlite:///{tmp_path / 'tollway.db'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # `tollway --version` alone works; serve's youngest generation is collected
    # every 10,000 allocations (CPython: 700), the older ones as CPython's.
    assert out.stdout.split() == ["0.1.0", "True", "True", "10000,10,10"]
