"""Provisioning: domains, DNS records, deployments and their versions, trademark overrides.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provision_domains",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(253), nullable=False, unique=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("wallet_id", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("renew_price", sa.BigInteger, nullable=False),
        sa.Column("authorization_id", sa.String(64), nullable=True),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "provision_records",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("zone", sa.String(253), nullable=False, index=True),
        sa.Column("name", sa.String(253), nullable=False, index=True),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("content", sa.String(2048), nullable=False),
        sa.Column("ttl", sa.Integer, nullable=False),
        sa.Column("priority", sa.Integer, nullable=True),
        sa.Column("provider_ref", sa.String(64), nullable=False),
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("authorization_id", sa.String(64), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "provision_deployments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("wallet_id", sa.String(64), nullable=False, index=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("live_version", sa.Integer, nullable=True),
        sa.Column("hostnames", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_request_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "provision_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("deployment_id", sa.String(64), sa.ForeignKey("provision_deployments.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("entrypoint", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("authorization_id", sa.String(64), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Index("ix_provision_versions_deployment", "deployment_id", "version", unique=True),
    )
    op.create_table(
        "provision_overrides",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Index("ix_provision_overrides_name_wallet", "name", "wallet_id", unique=True),
    )


def downgrade() -> None:
    for t in (
        "provision_overrides",
        "provision_versions",
        "provision_deployments",
        "provision_records",
        "provision_domains",
    ):
        op.drop_table(t)
