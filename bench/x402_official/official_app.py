"""The official x402 stack for bench/x402.py: FastAPI with the SDK's
``PaymentMiddlewareASGI`` and ``HTTPFacilitatorClient``, pointed at tollway's
standalone facilitator, protecting ``GET /weather`` at 1000 units of the
devnet asset. The handler answers in-process (no origin hop): if anything,
that favours this stack.

    X402_FACILITATOR=http://127.0.0.1:8787/x402 X402_PAY_TO=0x… \\
        uvicorn official_app:app --app-dir bench/x402_official --port 9100

(It lives in its own directory: bench/x402.py would shadow the ``x402`` package.)
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.responses import Response
from x402 import x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient, PaymentOption, RouteConfig
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.mechanisms.evm.exact import ExactEvmServerScheme
from x402.schemas import AssetAmount

NETWORK = "eip155:31337"
ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
WEATHER = b'{"city":"Lisbon","forecast":"sunny","temperature_c":21}'

server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=os.environ["X402_FACILITATOR"])))
server.register(NETWORK, ExactEvmServerScheme())
price = AssetAmount(amount="1000", asset=ASSET, extra={"name": "USD Coin", "version": "2"})
routes = {
    "GET /weather": RouteConfig(
        accepts=[
            PaymentOption(scheme="exact", pay_to=os.environ["X402_PAY_TO"], price=price, network=NETWORK)
        ],
        description="bench",
        mime_type="application/json",
    )
}
app = FastAPI()


@app.get("/weather")
async def weather() -> Response:
    return Response(WEATHER, media_type="application/json")


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
