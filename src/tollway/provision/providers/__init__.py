"""Provisioning providers: ``local`` (tollway itself) and ``cloudflare`` (the official SDK)."""
