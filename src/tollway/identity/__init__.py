"""Customers, API keys and the admin token."""
