"""Alerts (delivered as schedules); the eval loop's runs, grades and labelled examples.

Revision ID: 0021
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("dedupe", sa.String(400), nullable=False, unique=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fanned", sa.Integer, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("acked_at_us", sa.BigInteger, nullable=True),
        sa.Column("acked_by", sa.String(200), nullable=True),
    )
    op.create_index("ix_alerts_kind", "alerts", ["kind", "created_at_us"])
    op.create_index("ix_alerts_fanned", "alerts", ["fanned", "created_at_us"])
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("version_b", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("grader", sa.String(100), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("cost", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("finished_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_eval_runs_agent", "eval_runs", ["agent", "created_at_us"])
    op.create_table(
        "eval_grades",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("eval_runs.id"), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("arm", sa.String(8), nullable=False),
        sa.Column("escalated", sa.Integer, nullable=False),
        sa.Column("helpfulness", sa.Integer, nullable=True),
        sa.Column("safety", sa.Integer, nullable=True),
        sa.Column("groundedness", sa.Integer, nullable=True),
        sa.Column("checks", sa.Text, nullable=False),
        sa.Column("grader_output", sa.Text, nullable=False),
        sa.Column("cost", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_eval_grades_run", "eval_grades", ["run_id", "session_id", "arm"], unique=True)
    op.create_table(
        "eval_examples",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("messages", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_eval_examples_agent", "eval_examples", ["agent", "created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_eval_examples_agent", "eval_examples")
    op.drop_table("eval_examples")
    op.drop_index("ix_eval_grades_run", "eval_grades")
    op.drop_table("eval_grades")
    op.drop_index("ix_eval_runs_agent", "eval_runs")
    op.drop_table("eval_runs")
    op.drop_index("ix_alerts_fanned", "alerts")
    op.drop_index("ix_alerts_kind", "alerts")
    op.drop_table("alerts")
