"""Durable agents: versioned definitions, sessions, messages, tool log, escalations.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _us(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "agent_versions",
        sa.Column("agent", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        _us("created_at_us"),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("agent", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("turns", sa.Integer, nullable=False),
        sa.Column("next_seq", sa.Integer, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("summary_through", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        _us("input_tokens"),
        _us("output_tokens"),
        _us("mneurons"),
        _us("cost"),
        _us("latency_us"),
        sa.Column("tool_calls", sa.Integer, nullable=False),
        sa.Column("retrievals", sa.Integer, nullable=False),
        _us("created_at_us"),
        _us("updated_at_us"),
    )
    op.create_index("ix_agent_sessions_customer_id", "agent_sessions", ["customer_id"])
    op.create_table(
        "agent_messages",
        sa.Column("agent", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("turn", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        _us("created_at_us"),
    )
    op.create_table(
        "agent_tool_log",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("turn", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        _us("latency_us"),
        _us("cost"),
        _us("created_at_us"),
    )
    op.create_index("ix_agent_tool_log_session", "agent_tool_log", ["agent", "session_id", "turn"])
    op.create_table(
        "agent_escalations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("answered_by", sa.String(200), nullable=True),
        _us("created_at_us"),
        _us("answered_at_us", nullable=True),
    )
    op.create_index("ix_agent_escalations_status", "agent_escalations", ["status", "created_at_us"])
    op.create_index("ix_agent_escalations_session", "agent_escalations", ["agent", "session_id"])


def downgrade() -> None:
    op.drop_index("ix_agent_escalations_session", table_name="agent_escalations")
    op.drop_index("ix_agent_escalations_status", table_name="agent_escalations")
    op.drop_table("agent_escalations")
    op.drop_index("ix_agent_tool_log_session", table_name="agent_tool_log")
    op.drop_table("agent_tool_log")
    op.drop_table("agent_messages")
    op.drop_index("ix_agent_sessions_customer_id", table_name="agent_sessions")
    op.drop_table("agent_sessions")
    op.drop_table("agent_versions")
