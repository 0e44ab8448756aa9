"""One error type for the whole service.

Every error that leaves tollway — over HTTP, from the CLI, or raised from the
library — is a :class:`TollwayError` with a stable ``code``.  Over HTTP it is
rendered as ``{"error": {"type", "code", "message", "param"}}``.
"""

from __future__ import annotations

from typing import Any


class ErrorType:
    """The ``type`` field: the family an error belongs to (Stripe-style)."""

    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    PERMISSION = "permission_error"
    NOT_FOUND = "not_found_error"
    CONFLICT = "conflict_error"
    PAYMENT = "payment_error"
    RATE_LIMIT = "rate_limit_error"
    API = "api_error"


_STATUS = {
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.AUTHENTICATION: 401,
    ErrorType.PERMISSION: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.CONFLICT: 409,
    ErrorType.PAYMENT: 402,
    ErrorType.RATE_LIMIT: 429,
    ErrorType.API: 500,
}


class TollwayError(Exception):
    """A typed error with a stable machine-readable ``code``."""

    def __init__(
        self,
        type: str,
        code: str,
        message: str,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.status = status if status is not None else _STATUS.get(type, 400)
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
            }
        }

    def __repr__(self) -> str:
        return f"TollwayError({self.code!r}, {self.message!r}, param={self.param!r})"


def invalid(code: str, message: str, param: str | None = None) -> TollwayError:
    return TollwayError(ErrorType.INVALID_REQUEST, code, message, param)


def not_found(code: str, message: str, param: str | None = None) -> TollwayError:
    return TollwayError(ErrorType.NOT_FOUND, code, message, param)


def conflict(code: str, message: str, param: str | None = None) -> TollwayError:
    return TollwayError(ErrorType.CONFLICT, code, message, param)


def unauthenticated(code: str, message: str) -> TollwayError:
    return TollwayError(ErrorType.AUTHENTICATION, code, message)


def forbidden(code: str, message: str) -> TollwayError:
    return TollwayError(ErrorType.PERMISSION, code, message)


def payment(code: str, message: str, param: str | None = None) -> TollwayError:
    return TollwayError(ErrorType.PAYMENT, code, message, param)
