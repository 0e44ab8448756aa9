"""x402: HTTP 402 payments (v1 and v2), the ``exact`` EVM scheme, a built-in facilitator."""
