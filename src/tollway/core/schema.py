"""Table definitions (SQLAlchemy Core). Alembic migrations create them; the
test suite checks the migrated database matches this metadata exactly."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# Account flags (TigerBeetle's names).
DEBITS_MUST_NOT_EXCEED_CREDITS = 1
CREDITS_MUST_NOT_EXCEED_DEBITS = 2

ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("flags", Integer, nullable=False),
    Column("debits_pending", BigInteger, nullable=False),
    Column("debits_posted", BigInteger, nullable=False),
    Column("credits_pending", BigInteger, nullable=False),
    Column("credits_posted", BigInteger, nullable=False),
    Column("customer_id", String(64), nullable=True, index=True),
    Column("name", String(200), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    CheckConstraint(
        "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND credits_posted >= 0",
        name="ck_ledger_accounts_nonnegative",
    ),
    CheckConstraint(
        "(flags & 1) = 0 OR debits_pending + debits_posted <= credits_posted",
        name="ck_ledger_accounts_debits_bound",
    ),
    CheckConstraint(
        "(flags & 2) = 0 OR credits_pending + credits_posted <= debits_posted",
        name="ck_ledger_accounts_credits_bound",
    ),
)

# Transfer flags.
PENDING = 1
POST_PENDING = 2
VOID_PENDING = 4
EXPIRED = 8

ledger_transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("debit_account_id", String(64), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("credit_account_id", String(64), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("flags", Integer, nullable=False),
    # For a post/void: the pending transfer it resolves. Unique: a pending resolves once.
    Column("pending_id", String(64), nullable=True),
    Column("expires_at_us", BigInteger, nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("description", String(500), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    CheckConstraint("amount >= 0", name="ck_ledger_transfers_amount"),
    Index("ix_ledger_transfers_debit", "debit_account_id", "id"),
    # Partial unique indexes: most rows have neither, so they cost nothing there.
    Index(
        "ux_ledger_transfers_pending_id",
        "pending_id",
        unique=True,
        sqlite_where=text("pending_id IS NOT NULL"),
        postgresql_where=text("pending_id IS NOT NULL"),
    ),
    Index(
        "ux_ledger_transfers_idempotency_key",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("ix_ledger_transfers_credit", "credit_account_id", "id"),
)

# Pending transfers not yet posted, voided or expired, with what resolving them
# needs, so the hot path never reads the (large) transfers table. Deleted when
# resolved: this table holds only what is open. One b-tree (no expiry index; on
# SQLite clustered on the key): every charged request writes a row and deletes
# it, and each b-tree is a page in both commits (migration 0025).
ledger_pending = Table(
    "ledger_pending",
    metadata,
    Column("transfer_id", String(64), ForeignKey("ledger_transfers.id"), primary_key=True),
    Column("debit_account_id", String(64), nullable=False),
    Column("credit_account_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("description", String(500), nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

usage_events = Table(
    "usage_events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("transfer_id", String(64), ForeignKey("ledger_transfers.id"), nullable=True),
    Column("account_id", String(64), nullable=False),
    Column("customer_id", String(64), nullable=True, index=True),
    Column("meter", String(100), nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False, index=True),
    Column("model", String(100), nullable=True),
    Index("ix_usage_events_transfer_id", "transfer_id"),  # a transfer's usage (wallets/pnl.py)
)

customers = Table(
    "customers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=True),
    Column("account_id", String(64), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("limits", Text, nullable=True),  # JSON: rate limits and budgets over the defaults
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(64), ForeignKey("customers.id"), nullable=False, index=True),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
    Column("limits", Text, nullable=True),
)

# One row per AI request that got past authentication (the gateway's log).
request_log = Table(
    "request_log",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at_us", BigInteger, nullable=False, index=True),
    Column("key_id", String(64), nullable=True, index=True),
    Column("customer_id", String(64), nullable=True, index=True),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(100), nullable=True),
    Column("deployment", String(100), nullable=True),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("stream", Integer, nullable=False),
    Column("cache", String(8), nullable=True),  # HIT | MISS | BYPASS
    Column("attempts", Integer, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("mneurons", BigInteger, nullable=False),
    Column("cost", BigInteger, nullable=False),
    Column("latency_ms", BigInteger, nullable=False),  # microseconds would be overkill; see ttft
    Column("ttft_ms", BigInteger, nullable=True),
    Column("downgraded_from", String(100), nullable=True),
    Column("end_user", String(256), nullable=True),  # the request's `user`
    Column("tags", Text, nullable=True),  # the request's `metadata` (JSON, bounded)
    Column("trace_id", String(32), nullable=True),  # OpenTelemetry (hex), when known
)

# Billing (tollway.billing). A customer with no row is on the default plan.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("customer_id", String(64), ForeignKey("customers.id"), primary_key=True),
    Column("plan", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # trialing | active | past_due | canceled
    Column("anchor_us", BigInteger, nullable=False),  # billing cycle anchor
    Column("period_start_us", BigInteger, nullable=False),
    Column("period_end_us", BigInteger, nullable=False),
    Column("trial_end_us", BigInteger, nullable=True),
    Column("cancel_at_period_end", Integer, nullable=False),
    Column("pending_plan", String(64), nullable=True),  # a downgrade waiting for the period's end
    # Bumped by every billing change of the customer (plan, status, credit grants):
    # the request path reads it with the API key and refreshes what it caches.
    Column("rev", Integer, nullable=False),
    Column("stripe_customer_id", String(255), nullable=True, unique=True),
    Column("stripe_subscription_id", String(255), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    CheckConstraint(
        "status IN ('trialing', 'active', 'past_due', 'canceled')", name="ck_subscriptions_status"
    ),
)

# Prepaid credit: each grant is a ledger account drawn before the prepaid balance.
credit_grants = Table(
    "credit_grants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(64), ForeignKey("customers.id"), nullable=False, index=True),
    Column("account_id", String(64), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("priority", Integer, nullable=False),  # lower is drawn first
    Column("category", String(16), nullable=False),  # paid | promotional
    Column("name", String(200), nullable=False),
    Column("expires_at_us", BigInteger, nullable=True),
    Column("expired_at_us", BigInteger, nullable=True),
    Column("idempotency_key", String(255), nullable=True, unique=True),
    Column("created_at_us", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="ck_credit_grants_amount"),
    CheckConstraint("category IN ('paid', 'promotional')", name="ck_credit_grants_category"),
)

# Daily (UTC) usage per customer, feature (the usage event's meter) and model.
usage_rollups = Table(
    "usage_rollups",
    metadata,
    Column("day", String(8), primary_key=True),  # YYYYMMDD
    Column("customer_id", String(64), primary_key=True),  # '' for usage of no customer
    Column("feature", String(100), primary_key=True),
    Column("model", String(100), primary_key=True),  # '' when the usage names no model
    Column("events", BigInteger, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("anomaly", Integer, nullable=False),  # 1: the day is above k x the trailing median
    Column("updated_at_us", BigInteger, nullable=False),
)

# Stripe: the ids of what `tollway stripe sync` made, webhook events seen, and
# small durable state (the meter push cursor).
stripe_objects = Table(
    "stripe_objects",
    metadata,
    Column("kind", String(32), primary_key=True),  # product | price | meter | feature | customer
    Column("local_id", String(200), primary_key=True),
    Column("stripe_id", String(255), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

stripe_events = Table(
    "stripe_events",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    Column("outcome", String(500), nullable=False),
)

billing_state = Table(
    "billing_state",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

# Agent wallets (tollway.wallets): funded from the ledger, spent by delegated
# agent tokens within a policy, through authorizations that hold the money.
wallets = Table(
    "wallets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),  # a customer id, or a human's name
    Column("customer_id", String(64), ForeignKey("customers.id"), nullable=True, index=True),
    Column("account_id", String(64), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("policy", Text, nullable=False),  # JSON (tollway.wallets.policy.Policy)
    Column("evm_address", String(42), nullable=True),
    Column("evm_key", Text, nullable=True),  # encrypted at rest (tollway.wallets.keys)
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

agent_tokens = Table(
    "agent_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("wallet_id", String(64), ForeignKey("wallets.id"), nullable=False, index=True),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("limits", Text, nullable=False),  # JSON: the token's subset of the policy
    Column("created_at_us", BigInteger, nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
    Column("frozen_at_us", BigInteger, nullable=True),
    Column("frozen_reason", String(500), nullable=True),
    Column("used_at_us", BigInteger, nullable=True),  # a single-use token's one authorization
)

wallet_authorizations = Table(
    "wallet_authorizations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("wallet_id", String(64), nullable=False, index=True),
    Column("token_id", String(64), nullable=False, index=True),
    Column("idempotency_key", String(300), nullable=False, unique=True),  # token id + the caller's key
    Column("request_hash", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(8), nullable=False),
    Column("payee", String(255), nullable=False),
    Column("category", String(32), nullable=False),
    # approved | declined | pending_approval | captured | voided | expired
    Column("status", String(20), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("legs", Text, nullable=False),  # JSON: the hold's pending transfers
    Column("captured", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),  # the hold's, or the approval's timeout
    Column("memo", String(500), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_wallet_authorizations_status", "status", "expires_at_us"),
)

wallet_audit = Table(
    "wallet_audit",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("wallet_id", String(64), nullable=False, index=True),
    Column("token_id", String(64), nullable=True, index=True),
    Column("authorization_id", String(64), nullable=True),
    Column("event", String(32), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("detail", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

# An agent asks for its budget (tollway.wallets.budget): a bootstrap credential
# the owner hands it may only ask; the owner approves (possibly editing the
# caps) or denies; the delegated token is issued at the agent's first read after
# approval (its secret shown once).
wallet_bootstraps = Table(
    "wallet_bootstraps",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("wallet_id", String(64), ForeignKey("wallets.id"), nullable=False, index=True),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
)

wallet_budget_requests = Table(
    "wallet_budget_requests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("wallet_id", String(64), ForeignKey("wallets.id"), nullable=False, index=True),
    Column("requester", String(64), nullable=False),  # the bootstrap's or the agent token's id
    Column("raise_of", String(64), nullable=True),  # the token whose caps it asks to raise
    Column("asked", Text, nullable=False),  # JSON (tollway.wallets.budget.BudgetCaps)
    Column("purpose", String(1000), nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | issued | denied | expired
    Column("approved", Text, nullable=True),  # JSON: the caps the owner approved
    Column("token_id", String(64), nullable=True),  # the delegated token (its id fixed at approval)
    Column("decided_by", String(200), nullable=True),
    Column("reason", String(500), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("decided_at_us", BigInteger, nullable=True),
    Column("issued_at_us", BigInteger, nullable=True),
    Index("ix_wallet_budget_requests_status", "status", "expires_at_us"),
)

# Autopilot, opt-in per wallet (tollway.wallets.autopilot).
wallet_autopilot = Table(
    "wallet_autopilot",
    metadata,
    Column("wallet_id", String(64), ForeignKey("wallets.id"), primary_key=True),
    Column("settings", Text, nullable=False),  # JSON (tollway.wallets.autopilot.AutopilotSettings)
    Column("below_floor_since_us", BigInteger, nullable=True),  # when the check saw it below
    Column("updated_at_us", BigInteger, nullable=False),
)

SYSTEM_ACCOUNTS = {
    "sys_funding": ("funding", "Money entering tollway (top-ups, grants)"),
    "sys_revenue": ("revenue", "Earned revenue"),
    "sys_fees": ("fees", "Fees"),
    "sys_settlement": ("settlement", "Settlement in transit"),
    "sys_grants": ("funding", "Free allocations granted (and used back)"),
    "sys_budgets": ("funding", "Spend-limit budgets granted (and spent back)"),
    "sys_quotas": ("funding", "Plan quotas granted (and used back), in their own units"),
    "sys_wallet_limits": ("funding", "Wallet spending limits granted (and spent back)"),
}


# x402 rules imported through the admin API: when there are any, they replace
# the [[x402.rules]] of tollway.toml (every process picks them up).
x402_rules = Table(
    "x402_rules",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)


# x402 rules an agent made for hosts its wallet owns (tollway.x402.owned): they
# price its deployments at the edge, and their payments credit its wallet.
x402_agent_rules = Table(
    "x402_agent_rules",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("wallet_id", String(64), ForeignKey("wallets.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("host", String(253), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    UniqueConstraint("wallet_id", "name", name="uq_x402_agent_rules_wallet_name"),
    Index("ix_x402_agent_rules_host", "host"),
)


# x402 authorizations claimed by the paywall between verifying and settling
# (tollway.x402.claims): a live lease, or NULL once spent (the origin ran).
x402_claims = Table(
    "x402_claims",
    metadata,
    Column("key", String(250), primary_key=True),
    Column("token", String(64), nullable=False),
    Column("lease_until_us", BigInteger, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("payer", String(64), nullable=True),  # a live claim holds ``amount`` of the payer's balance
    Column("amount", BigInteger, nullable=True),
    Index("ix_x402_claims_payer", "payer", "lease_until_us"),
)


# Long calls' progress (tollway.charge.recovery): what a call produced so far,
# checkpointed while it runs, so a crash mid-call still charges it on recovery.
charge_progress = Table(
    "charge_progress",
    metadata,
    Column("hold_id", String(64), primary_key=True),
    Column("legs", Text, nullable=False),  # JSON: [[pending_id, "source"|"cap", unbounded|units], ...]
    Column("customer_id", String(64), nullable=True),
    Column("meter", String(64), nullable=False),
    Column("max_amount", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("metadata", Text, nullable=False),  # JSON: the usage event's
    Column("idempotency_key", String(250), nullable=True),
    Column("updated_at_us", BigInteger, nullable=False),
    Index("ix_charge_progress_updated", "updated_at_us"),
)


# Vector indexes (tollway.vectors): the index's config here; its vectors in
# the configured backend (embedded files, or pgvector tables).
vector_indexes = Table(
    "vector_indexes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(64), ForeignKey("customers.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("dimensions", Integer, nullable=False),
    Column("metric", String(16), nullable=False),
    Column("description", String(500), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_vector_indexes_customer_name", "customer_id", "name", unique=True),
)


# Provisioning (tollway.provision): what agents bought through the broker.
# Every row names the wallet that paid and the authorization that paid for it.
provision_domains = Table(
    "provision_domains",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(253), nullable=False, unique=True),  # A-label form
    Column("provider", String(32), nullable=False),
    Column("wallet_id", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False),  # active | deleted
    Column("renew_price", BigInteger, nullable=False),
    # The wallet authorization that paid for the current term (registration, then each renewal).
    Column("authorization_id", String(64), nullable=True),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

provision_records = Table(
    "provision_records",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("zone", String(253), nullable=False, index=True),
    Column("name", String(253), nullable=False, index=True),
    Column("type", String(8), nullable=False),
    Column("content", String(2048), nullable=False),
    Column("ttl", Integer, nullable=False),
    Column("priority", Integer, nullable=True),
    Column("provider_ref", String(64), nullable=False),
    Column("wallet_id", String(64), nullable=False),
    Column("authorization_id", String(64), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
)

provision_deployments = Table(
    "provision_deployments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("wallet_id", String(64), nullable=False, index=True),
    Column("provider", String(32), nullable=False),
    Column("live_version", Integer, nullable=True),
    Column("hostnames", Text, nullable=False),  # JSON list of bound hostnames
    Column("status", String(16), nullable=False),  # active | deleted
    Column("last_request_at_us", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

provision_versions = Table(
    "provision_versions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("deployment_id", String(64), ForeignKey("provision_deployments.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(8), nullable=False),  # asgi | wsgi | static
    Column("entrypoint", String(200), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # live | ready | failed
    Column("error", String(2000), nullable=True),
    Column("authorization_id", String(64), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_provision_versions_deployment", "deployment_id", "version", unique=True),
)

# An operator's override of a trademark block: this wallet may buy this name.
provision_overrides = Table(
    "provision_overrides",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(253), nullable=False),
    Column("wallet_id", String(64), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_provision_overrides_name_wallet", "name", "wallet_id", unique=True),
)

# A purchase's idempotency key, claimed before any money is held: one row per
# (wallet, key), with the fingerprint of the request it was first used for and
# its outcome, so concurrent or later calls with the key get that one outcome.
provision_claims = Table(
    "provision_claims",
    metadata,
    Column("wallet_id", String(64), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # sha256 of the canonical request
    Column("status", String(16), nullable=False),  # running | pending | done | failed
    Column("owner", String(64), nullable=False),  # the claim of the call doing the work now
    Column("lease_until_us", BigInteger, nullable=False),  # past it, a running claim is taken over
    Column("response", Text, nullable=True),  # JSON: the answer (done, pending) or the error (failed)
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

# --- recurring costs (issue 22 §4) ---
# Hosting metered per deployment: cumulative live worker time and routed
# requests (added by each process), and what was billed of them. A tick
# claims the next charge by compare-and-set on ``billed`` (``pending_key``:
# the charge being made, its wallet authorization's idempotency key).
provision_billing = Table(
    "provision_billing",
    metadata,
    Column("deployment_id", String(64), primary_key=True),
    Column("wallet_id", String(64), nullable=False, index=True),
    Column("worker_us", BigInteger, nullable=False),  # live worker microseconds, ever
    Column("requests", BigInteger, nullable=False),  # requests routed, ever
    Column("billed", BigInteger, nullable=False),  # micro-USD charged (or being charged), ever
    Column("last_interval", BigInteger, nullable=False),  # the last tick interval that billed
    Column("pending_key", String(200), nullable=True),
    Column("pending_amount", BigInteger, nullable=False),
    Column("pending_at_us", BigInteger, nullable=True),
    Column("updated_at_us", BigInteger, nullable=False),
)

# What a wallet could not pay for: a deployment or a domain whose recurring
# charge failed. Grace, then suspended, then reclaimed; paid: the row goes.
provision_dues = Table(
    "provision_dues",
    metadata,
    Column("kind", String(16), primary_key=True),  # deployment | domain
    Column("subject_id", String(64), primary_key=True),
    Column("wallet_id", String(64), nullable=False, index=True),
    Column("name", String(253), nullable=False),
    Column("amount", BigInteger, nullable=False),  # the charge that failed last
    Column("reason", String(64), nullable=False),  # its decline code
    Column("failed_at_us", BigInteger, nullable=False),  # the first failure
    Column("grace_until_us", BigInteger, nullable=False),
    Column("suspended_at_us", BigInteger, nullable=True),
    Column("reclaim_at_us", BigInteger, nullable=True),
    Column("updated_at_us", BigInteger, nullable=False),
)

# The AI binding's credential for each deployment (tollway.provision.ai_tokens): an
# agent token of the deployment's wallet, limited to ai_inference; its secret
# sealed with the wallet key (AES-256-GCM, the deployment id as associated data),
# or NULL when no wallet key is configured (then held in memory only, and minted
# again by a process that does not hold it). Revoked with the deployment.
provision_ai_bindings = Table(
    "provision_ai_bindings",
    metadata,
    Column("deployment_id", String(64), ForeignKey("provision_deployments.id"), primary_key=True),
    Column("wallet_id", String(64), nullable=False),
    Column("token_id", String(64), nullable=False),
    Column("sealed_secret", Text, nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
)

# --- agents (issue 9) ---
# Durable agents (tollway.agents): versioned definitions, sessions with their
# messages, tool log and human escalations. A turn is written in one
# transaction: it is fully recorded or absent.
agent_versions = Table(
    "agent_versions",
    metadata,
    Column("agent", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("body", Text, nullable=False),  # JSON: the definition
    Column("source", String(16), nullable=False),  # config | api
    Column("created_at_us", BigInteger, nullable=False),
)

agent_sessions = Table(
    "agent_sessions",
    metadata,
    Column("agent", String(64), primary_key=True),
    Column("id", String(128), primary_key=True),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("version", Integer, nullable=False),  # the definition's version it runs
    Column("status", String(16), nullable=False),  # active | escalated
    Column("turns", Integer, nullable=False),
    Column("next_seq", Integer, nullable=False),
    Column("summary", Text, nullable=False),
    Column("summary_through", Integer, nullable=False),  # messages below this seq are in the summary
    Column("state", Text, nullable=False),  # JSON: key-value state
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("mneurons", BigInteger, nullable=False),
    Column("cost", BigInteger, nullable=False),  # micro-USD
    Column("latency_us", BigInteger, nullable=False),
    Column("tool_calls", Integer, nullable=False),
    Column("retrievals", Integer, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

agent_messages = Table(
    "agent_messages",
    metadata,
    Column("agent", String(64), primary_key=True),
    Column("session_id", String(128), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("turn", Integer, nullable=False),
    Column("role", String(16), nullable=False),  # user | assistant | human
    Column("content", Text, nullable=False),
    Column("meta", Text, nullable=False),  # JSON: citations, usage, flags
    Column("created_at_us", BigInteger, nullable=False),
)

agent_tool_log = Table(
    "agent_tool_log",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("agent", String(64), nullable=False),
    Column("session_id", String(128), nullable=False),
    Column("turn", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("tool", String(64), nullable=False),
    Column("arguments", Text, nullable=False),
    Column("request", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("status", String(16), nullable=False),  # ok | error | invalid | timeout | refused
    Column("error", String(500), nullable=True),
    Column("latency_us", BigInteger, nullable=False),
    Column("cost", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_agent_tool_log_session", "agent", "session_id", "turn"),
)

agent_escalations = Table(
    "agent_escalations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("agent", String(64), nullable=False),
    Column("session_id", String(128), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # open | answered
    Column("detail", Text, nullable=False),
    Column("answer", Text, nullable=True),
    Column("answered_by", String(200), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("answered_at_us", BigInteger, nullable=True),
    Index("ix_agent_escalations_status", "status", "created_at_us"),
    Index("ix_agent_escalations_session", "agent", "session_id"),
)

# --- schedules (issue 9) ---
# Persisted timers (tollway.schedules): a process claims a due row by setting
# its lease; a row whose lease ran out (its process died) is claimed again.
schedules = Table(
    "schedules",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),  # who it belongs to, e.g. agent:support:sess_1
    Column("task", String(100), nullable=False),  # the registered handler
    Column("payload", Text, nullable=False),  # JSON object
    Column("kind", String(8), nullable=False),  # delay | at | cron
    Column("cron", String(100), nullable=True),
    Column("next_run_us", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),  # runs started for this occurrence
    Column("max_attempts", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # pending | running | done | failed | cancelled
    Column("last_error", Text, nullable=True),
    Column("lease_token", String(64), nullable=True),  # the running claim's
    Column("lease_until_us", BigInteger, nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Index("ix_schedules_due", "status", "next_run_us"),
    Index("ix_schedules_owner", "owner", "status"),
    Index("ix_schedules_owner_key", "owner", "idempotency_key", unique=True),
)

# The Responses API's stored responses (tollway.inference.response_store), per customer.
responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),  # resp_...
    Column("customer_id", String(64), ForeignKey("customers.id"), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),  # kept until then (the retention period)
    Column("body", Text, nullable=False),  # the Response object, as GET returns it (JSON)
    Column("items", Text, nullable=False),  # the conversation so far: input then output items (JSON)
    Index("ix_responses_expires", "expires_at_us"),
)

# The console (tollway.console): sign-in sessions, by the hash of the cookie's random id.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),  # sha256 of the cookie's session id
    Column("role", String(16), nullable=False),  # operator | customer
    Column("customer_id", String(64), nullable=True),  # a customer's session
    Column("key_id", String(64), nullable=True),  # the API key it signed in with (revoked: ended)
    Column("csrf", String(64), nullable=False),  # the session's CSRF token
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Index("ix_console_sessions_expires", "expires_at_us"),
)


# The console's hourly and daily rollups (tollway.console.rollups): the overview
# reads these, never the request log. Each has the same measures.
def _console_measures() -> list[Column[int]]:
    return [
        Column("requests", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),  # status >= 400
        Column("input_tokens", BigInteger, nullable=False),
        Column("output_tokens", BigInteger, nullable=False),
        Column("cost", BigInteger, nullable=False),
        Column("cache_hits", BigInteger, nullable=False),
        Column("latency_ms", BigInteger, nullable=False),  # the sum; / requests is the mean
        Column("rate_limited", BigInteger, nullable=False),  # 429s
        Column("budget_refused", BigInteger, nullable=False),  # budget_exceeded refusals
    ]


console_requests_hourly = Table(  # per hour, customer and model: a customer's own views
    "console_requests_hourly",
    metadata,
    Column("hour_us", BigInteger, primary_key=True),  # the hour's start, µs
    Column("customer_id", String(64), primary_key=True),  # '' for none
    Column("model", String(100), primary_key=True),  # '' for none
    *_console_measures(),
    Index("ix_console_requests_hourly_customer", "customer_id", "hour_us"),
)

console_models_hourly = Table(  # per hour and model: the overview's series, the gateway page
    "console_models_hourly",
    metadata,
    Column("hour_us", BigInteger, primary_key=True),
    Column("model", String(100), primary_key=True),
    *_console_measures(),
)

console_customers_daily = Table(  # per UTC day and customer: the overview's by-customer, Customers
    "console_customers_daily",
    metadata,
    Column("day_us", BigInteger, primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    *_console_measures(),
)

console_revenue_hourly = Table(
    "console_revenue_hourly",
    metadata,
    Column("hour_us", BigInteger, primary_key=True),
    Column("source", String(16), primary_key=True),  # subscriptions | metered | x402
    Column("events", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
)

console_state = Table(
    "console_state",
    metadata,
    Column("name", String(64), primary_key=True),  # e.g. the last subscription transfer rolled up
    Column("value", String(200), nullable=False),
)

# --- alerts and evals (issue 23 §4, §5) ---
# Alerts (tollway.observe.alerts): each raised once (its dedupe key is unique),
# then fanned out to the configured webhooks, one schedule each (tollway.alerts.delivery).
alerts = Table(
    "alerts",
    metadata,
    Column("id", String(64), primary_key=True),  # alt_...
    Column("kind", String(32), nullable=False),  # budget_threshold | usage_anomaly | ...
    Column("subject", String(200), nullable=False),  # what it is about: a key, a wallet, a session...
    Column("dedupe", String(400), nullable=False, unique=True),  # each alert once
    Column("payload", Text, nullable=False),  # JSON object
    Column("status", String(16), nullable=False),  # open | acked
    Column("fanned", Integer, nullable=False),  # 1 once its deliveries are made
    Column("created_at_us", BigInteger, nullable=False),
    Column("acked_at_us", BigInteger, nullable=True),
    Column("acked_by", String(200), nullable=True),
    Index("ix_alerts_kind", "kind", "created_at_us"),
    Index("ix_alerts_fanned", "fanned", "created_at_us"),
)

# The eval loop (tollway.evals): a run grades sampled sessions; a comparison
# replays them against another definition version.
eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", String(64), primary_key=True),  # evr_...
    Column("kind", String(16), nullable=False),  # run | compare
    Column("agent", String(64), nullable=False),
    Column("version", Integer, nullable=True),  # the version graded (None: every version)
    Column("version_b", Integer, nullable=True),  # compare: the version replayed
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("grader", String(100), nullable=False),  # the registry model that grades
    Column("summary", Text, nullable=False),  # JSON: averages, counts, deltas
    Column("cost", BigInteger, nullable=False),  # micro-USD charged to the operator
    Column("created_at_us", BigInteger, nullable=False),
    Column("finished_at_us", BigInteger, nullable=True),
    Index("ix_eval_runs_agent", "agent", "created_at_us"),
)

eval_grades = Table(
    "eval_grades",
    metadata,
    Column("id", String(64), primary_key=True),  # evg_...
    Column("run_id", String(64), ForeignKey("eval_runs.id"), nullable=False),
    Column("agent", String(64), nullable=False),
    Column("session_id", String(128), nullable=False),  # the stored session id graded (or replayed from)
    Column("version", Integer, nullable=False),
    Column("arm", String(8), nullable=False),  # a (as sampled) | b (replayed)
    Column("escalated", Integer, nullable=False),
    Column("helpfulness", Integer, nullable=True),  # 1..5, None when the grader gave nothing usable
    Column("safety", Integer, nullable=True),
    Column("groundedness", Integer, nullable=True),
    Column("checks", Text, nullable=False),  # JSON: the deterministic checks
    Column("grader_output", Text, nullable=False),
    Column("cost", BigInteger, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_eval_grades_run", "run_id", "session_id", "arm", unique=True),
)

# A person's reply to an escalation, with the conversation before it: a labelled example.
eval_examples = Table(
    "eval_examples",
    metadata,
    Column("id", String(64), primary_key=True),  # the escalation's id
    Column("agent", String(64), nullable=False),
    Column("session_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("messages", Text, nullable=False),  # JSON: OpenAI chat messages, the human reply last
    Column("created_at_us", BigInteger, nullable=False),
    Index("ix_eval_examples_agent", "agent", "created_at_us"),
)
