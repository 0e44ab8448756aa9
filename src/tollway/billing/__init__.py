"""Billing: plans, subscriptions, credit grants, entitlements, usage rollups and Stripe."""
