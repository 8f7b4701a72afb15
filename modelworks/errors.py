"""The one exception tree. Each error knows its HTTP status and a stable `code`.

    ModelworksError
    ├── BadRequest (400)           ── InvalidInput (400)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── MethodNotAllowed (405)
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── UnsupportedFormat (415)
    ├── ValidationFailed (422)
    ├── TooManyRequests (429)
    ├── ServiceUnavailable (503)
    ├── DeadlineExceeded (504)
    ├── InsufficientStorage (507)
    └── InternalError (500)

The API turns these into one JSON envelope in one place; the SDK maps envelopes back to the
same classes by `code`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModelworksError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(ModelworksError):
    status = 400
    code = "bad_request"


class InvalidInput(BadRequest):
    """An inference input does not match the model's signature."""

    code = "invalid_input"


class Unauthorized(ModelworksError):
    status = 401
    code = "unauthorized"


class Forbidden(ModelworksError):
    status = 403
    code = "forbidden"


class NotFound(ModelworksError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ModelworksError):
    """The path exists, not with this method; the answer's `Allow` header lists those it takes."""

    status = 405
    code = "method_not_allowed"


class Conflict(ModelworksError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ModelworksError):
    status = 413
    code = "payload_too_large"


class UnsupportedFormat(ModelworksError):
    status = 415
    code = "unsupported_format"


class ValidationFailed(ModelworksError):
    status = 422
    code = "validation_failed"


class TooManyRequests(ModelworksError):
    status = 429
    code = "too_many_requests"


class ServiceUnavailable(ModelworksError):
    status = 503
    code = "service_unavailable"


class DeadlineExceeded(ModelworksError):
    """The request's deadline passed while it queued or while its model ran."""

    status = 504
    code = "deadline_exceeded"


class InsufficientStorage(ModelworksError):
    """The server's disk is full; nothing the client sends differently will help."""

    status = 507
    code = "insufficient_storage"


class InternalError(ModelworksError):
    status = 500
    code = "internal_error"


ERRORS_BY_CODE: dict[str, type[ModelworksError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        InvalidInput,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedFormat,
        ValidationFailed,
        TooManyRequests,
        ServiceUnavailable,
        DeadlineExceeded,
        InsufficientStorage,
        InternalError,
    )
}
ERRORS_BY_STATUS: dict[int, type[ModelworksError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedFormat,
    422: ValidationFailed,
    429: TooManyRequests,
    503: ServiceUnavailable,
    504: DeadlineExceeded,
    507: InsufficientStorage,
}


def error_from_envelope(status: int, body: Any) -> ModelworksError:
    """Rebuild the exception a server sent (used by the SDK)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        cls = ERRORS_BY_CODE.get(
            str(err.get("code")), ERRORS_BY_STATUS.get(status, ModelworksError)
        )
        return cls(str(err.get("message", "")), details=err.get("details") or None)
    if isinstance(body, dict) and isinstance(body.get("error"), str):  # protocol routes
        return ERRORS_BY_STATUS.get(status, ModelworksError)(body["error"])
    return ERRORS_BY_STATUS.get(status, ModelworksError)(f"server answered HTTP {status}")
