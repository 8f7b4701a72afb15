"""The one exception tree. Each error knows its HTTP status and a stable `code`.

    ModelworksError
    ├── BadRequest (400)           ── InvalidInput (400), ClientGone (400)
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
    ├── InternalError (500)        ── CorruptArtifact (500) ── DecryptionFailed (500)
    └── ServerUnreachable (503, raised by the SDK: nothing answered)

Every class lives here and registers itself by `code` as it is defined (a class that names
no `code` of its own shares its parent's and is not a class the SDK can tell apart, so each
one names one); the API turns them into each protocol's error shape in one place
(`modelworks.api.errors`), and the SDK rebuilds the same class from the code, or from the
HTTP status where a protocol's shape carries no code.
"""

from __future__ import annotations

from typing import Any, ClassVar

# code -> class, filled as each class is defined; see ModelworksError.__init_subclass__
ERRORS_BY_CODE: dict[str, type[ModelworksError]] = {}


class ModelworksError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a code belongs to the first class that claims it: a second class claiming it would
        # come back from the SDK as the first (the test of every subclass names it)
        ERRORS_BY_CODE.setdefault(cls.code, cls)

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(ModelworksError):
    status = 400
    code = "bad_request"


class InvalidInput(BadRequest):
    """An inference input does not match the model's signature, or the model cannot run on it."""

    code = "invalid_input"


class TaskMismatch(BadRequest):
    """The call asks a model for what its task or signature cannot give (a classification of
    a model with no score output, rows for a model with several inputs)."""

    code = "task_mismatch"


class ClientGone(BadRequest):
    """The client disconnected before its request body arrived whole."""

    code = "client_disconnected"


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


class CorruptArtifact(InternalError):
    """A stored artifact is missing or does not match its digest."""

    code = "corrupt_artifact"


class DecryptionFailed(CorruptArtifact):
    """An encrypted artifact does not decrypt with the store's key (wrong key, or damaged)."""

    code = "decryption_failed"


class ServerUnreachable(ModelworksError):
    """Raised by the SDK when nothing answers at the server's URL (no server sends it)."""

    status = 503
    code = "server_unreachable"


# status -> the first class defined with it (the most general: a subclass comes after its
# parent), for answers whose shape carries no code; derived, so a new status needs no edit
ERRORS_BY_STATUS: dict[int, type[ModelworksError]] = {}
for _cls in ERRORS_BY_CODE.values():
    ERRORS_BY_STATUS.setdefault(_cls.status, _cls)
del _cls

# the response header that carries the code on every error answer, whatever the body's shape
CODE_HEADER = "x-error-code"


def error_class(status: int, *codes: Any) -> type[ModelworksError]:
    """The class of an error answer: by the first of `codes` that is known, else by status."""
    for code in codes:
        if isinstance(code, str) and code in ERRORS_BY_CODE:
            return ERRORS_BY_CODE[code]
    return ERRORS_BY_STATUS.get(status, ModelworksError)


def error_from_envelope(status: int, body: Any, code: str | None = None) -> ModelworksError:
    """Rebuild the exception a server sent (used by the SDK), from any of the error shapes
    the server answers (see `modelworks.api.errors.error_style`):

    - the Modelworks envelope `{"error": {"code", "message", "details"}}`;
    - OpenAI's `{"error": {"message", "type", "param", "code"}}`;
    - OIP v2's, TF-Serving's and the Hugging Face tasks' `{"error": "<message>"}`, which
      carry no code: the `x-error-code` header (passed as `code`) does, else the status
      decides.
    """
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        cls = error_class(status, err.get("code"), code)
        details = err.get("details")
        message = err.get("message", "")
        return cls(str(message), details=details if isinstance(details, dict) else None)
    cls = error_class(status, code)
    if isinstance(err, str):
        return cls(err)
    return cls(f"server answered HTTP {status}")
