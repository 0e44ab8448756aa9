"""``tollway init --demo``'s support-triage agent: a small knowledge base
shipped with tollway (``demo_kb/*.md``), one tool — an order-status endpoint
tollway itself serves at ``GET /demo/orders/{order_id}`` (``tollway.api.demo``)
while ``[agents] demo = true`` — and escalation to a person when a customer asks for one."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from tollway.agents.memory import ingest
from tollway.core.errors import TollwayError
from tollway.inference.service import Caller

log = logging.getLogger("tollway.agents")

AGENT = "support"
OWNER = "cus_demo_support"  # the customer owning the demo knowledge base
INDEX = "support-kb"

ORDERS: dict[str, dict[str, Any]] = {
    "A1001": {"status": "shipped", "carrier": "UPS", "tracking": "1Z999AA10123456784", "eta": "in 2 days"},
    "A1002": {"status": "processing", "carrier": None, "tracking": None, "eta": "ships tomorrow"},
    "A1003": {"status": "delivered", "carrier": "USPS", "tracking": "9400100000000000000000", "eta": None},
}


def demo_config() -> str:
    """The ``[agents]`` section ``tollway init --demo`` appends. The tool's URL
    is a path: this server, on whatever port it serves."""
    return f'''
# The demo support agent (docs/agents.md). Its tool is served by tollway
# itself, on this machine: tool_allow lets agents' tools reach it.
[agents]
demo = true
tool_allow = ["127.0.0.1/32"]

[[agents.definitions]]
name = "{AGENT}"
model = "smollm2-135m-instruct"
system_prompt = """You are the support agent of a small online shop. Answer briefly, \
using the knowledge given. To check an order, call the order_status tool with its id (like A1001)."""
max_steps = 3
max_tokens = 128
budget = {{ usd = "$0.05" }}
retrieval = {{ index = "{INDEX}", owner = "{OWNER}", top_k = 2 }}
guardrails = {{ escalate_keywords = ["lawyer", "chargeback"] }}

[agents.definitions.memory]
max_context_tokens = 1500
summarize_after_turns = 6
keep_recent_turns = 3
ttl_seconds = 604800

[[agents.definitions.tools]]
name = "order_status"
description = "The status, carrier and tracking number of an order."
method = "GET"
url = "/demo/orders/{{order_id}}"
timeout_seconds = 5

[agents.definitions.tools.parameters]
type = "object"
required = ["order_id"]
additionalProperties = false
properties = {{ order_id = {{ type = "string", pattern = "^[A-Za-z][0-9]{{4}}$" }} }}
'''


def documents() -> list[dict[str, Any]]:
    """The shipped knowledge base, one document per file."""
    kb = resources.files("tollway.agents") / "demo_kb"
    return [
        {"id": f.name.removesuffix(".md"), "text": f.read_text(), "metadata": {"source": f.name}}
        for f in sorted(kb.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".md")
    ]


async def seed(rt: Any) -> dict[str, Any] | None:
    """Create the knowledge base's owner and ingest the shipped documents, once
    (at start-up while ``[agents] demo = true``; a no-op when already there)."""
    spec = next((a for a in rt.settings.agents.definitions if a.name == AGENT), None)
    if spec is None or not spec.retrieval.index:
        return None
    owner_id = spec.retrieval.owner
    try:
        owner = await rt.customers.get(owner_id)
    except TollwayError:
        owner = await rt.customers.create("Demo shop (support knowledge base)", id=owner_id)
    try:
        await rt.vectors.index(owner_id, spec.retrieval.index)
        return None  # already ingested
    except TollwayError as e:
        if e.code != "unknown_index":
            raise
    out = await ingest(rt.vectors, rt.inference, Caller(owner.id, owner.account_id), spec, documents())
    log.info("demo: ingested %d chunks into %s", out["chunks"], spec.retrieval.index)
    return out
