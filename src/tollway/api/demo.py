"""``GET /demo/orders/{order_id}``: the demo shop's order status, the tool of
``tollway init --demo``'s support agent (:mod:`tollway.agents.demo`), served
while ``[agents] demo = true``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tollway.agents.demo import ORDERS
from tollway.api.jsonroute import JsonRoute
from tollway.core.errors import not_found

router = APIRouter(route_class=JsonRoute, tags=["demo"])


@router.get("/demo/orders/{order_id}", summary="The demo shop's order status (the support agent's tool)")
async def order_status(order_id: str) -> dict[str, Any]:
    order = ORDERS.get(order_id.upper())
    if order is None:
        raise not_found("order_not_found", f"no order {order_id!r}", "order_id")
    return {"order_id": order_id.upper(), **order}
