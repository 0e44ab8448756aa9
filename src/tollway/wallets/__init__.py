"""Agent wallets: policies, delegated tokens, authorizations, approvals, audit and the broker."""
