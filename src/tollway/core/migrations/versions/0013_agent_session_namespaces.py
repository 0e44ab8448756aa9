"""Agents: each customer names its sessions in its own namespace. A session's
stored id becomes ``{id}~{blake2b(customer_id, 6 bytes)}`` (what
``tollway.agents.store.scoped`` computes), in the sessions and every table
that names them. A session's budget account is named from its stored id, so
a migrated session starts a new budget account.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _scoped(customer_id: str, session_id: str) -> str:
    digest = hashlib.blake2b(customer_id.encode(), digest_size=6).hexdigest()
    return f"{session_id}~{digest}"


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT agent, id, customer_id FROM agent_sessions")).all()
    for agent, sid, customer in rows:
        if "~" in sid:
            continue
        new = _scoped(customer, sid)
        if len(new) > 128:  # an id of 116-128 characters: kept as it was (unreachable by its customer)
            continue
        _rename(conn, agent, sid, new)


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT agent, id FROM agent_sessions")).all()
    for agent, new in rows:
        if "~" not in new:
            continue
        sid = new.rsplit("~", 1)[0]
        _rename(conn, agent, new, sid)


def _rename(conn: sa.Connection, agent: str, old: str, new: str) -> None:
    """Give a session a new stored id, in its table and every table that names it."""
    args = {"agent": agent, "old": old, "new": new}
    conn.execute(sa.text("UPDATE agent_sessions SET id = :new WHERE agent = :agent AND id = :old"), args)
    for table in ("agent_messages", "agent_tool_log", "agent_escalations"):
        conn.execute(
            sa.text(f"UPDATE {table} SET session_id = :new WHERE agent = :agent AND session_id = :old"), args
        )
    conn.execute(
        sa.text("UPDATE schedules SET owner = :new_owner WHERE owner = :old_owner"),
        {"new_owner": f"agent:{agent}:{new}", "old_owner": f"agent:{agent}:{old}"},
    )
