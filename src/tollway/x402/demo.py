"""``tollway init --demo``: a paid demo route on devnet, ready to pay."""

from __future__ import annotations

import re

DEMO_RULE = """
# The demo: a paid route served by tollway's built-in demo origin.
# Pay it with any x402 client (README: "Pay for a request with x402").
[[x402.rules]]
name = "demo-weather"
methods = ["GET"]
path = "/demo/weather"
origin = "demo"
price = "$0.001"
description = "A weather report (tollway's demo origin)"
"""


def demo_config(text: str) -> tuple[str, str]:
    """The config with a fresh payTo address and the demo rule; and that address.
    (Only the address is kept: on devnet the revenue is in the ledger.)"""
    from eth_account import Account  # imported on first use: start-up stays fast

    pay_to = str(Account.create().address)
    out, n = re.subn(r'^pay_to = ""', f'pay_to = "{pay_to}"', text, count=1, flags=re.M)
    if n != 1:
        raise RuntimeError("the default config has no [x402] pay_to line")
    return out + DEMO_RULE, pay_to
