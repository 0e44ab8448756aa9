"""The most one request to an AI route can cost: x402's price for a rule with
``price_by = "ai_max_cost"``."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tollway.api.errors import validation_error
from tollway.api.shapes import chat_params
from tollway.core.errors import invalid
from tollway.inference.schemas import ChatRequest, EmbeddingsRequest
from tollway.runtime import Runtime


async def quote(rt: Runtime, path: str, body: Any) -> int:
    """The request's maximum cost in micro-USD, from the same ``plan_chat`` /
    ``plan_embed`` the charge uses. A bad body is refused here, with the
    route's own error, before anyone is asked to pay."""
    svc = rt.inference
    try:
        if path == "/v1/embeddings":
            emb = EmbeddingsRequest.model_validate(body)
            return (await svc.plan_embed(svc.model(emb.model, "embeddings"), emb.texts()))[1]
        if path == "/v1/chat/completions":
            chat = ChatRequest.model_validate(body)
            cfg = svc.model(chat.model, "chat")
            params = chat_params(chat.messages, chat)
            return (await svc.plan_chat(cfg, params, chat.requested_max_tokens()))[1]
    except ValidationError as e:
        raise validation_error(RequestValidationError(e.errors())) from None
    raise invalid("unsupported_route", f"{path} cannot be priced by its maximum cost", "path")
