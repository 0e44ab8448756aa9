"""The request log records a request's `user` and its `metadata` (as tags).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as t:
        t.add_column(sa.Column("end_user", sa.String(256), nullable=True))
        t.add_column(sa.Column("tags", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as t:
        t.drop_column("tags")
        t.drop_column("end_user")
