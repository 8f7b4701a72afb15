"""Errors become responses here, and only here: one JSON envelope for the management API,
`{"error": "<message>"}` for the protocol routes whose clients expect that shape, OpenAI's
error object for its routes. Every error answer names its `code` in the `x-error-code`
header too (the string shape has no room for it), so the SDK rebuilds the exact class.

An exception that is no ModelworksError is a fault of the server: `unexpected` logs it with
its traceback and answers a generic 500 quoting the request id. The outermost middleware
(`modelworks.api.middleware.RequestContext`) calls it, so that answer gets the request id
and security headers like any other."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from modelworks.api.metrics import note
from modelworks.api.protocols import protocol_of
from modelworks.errors import (
    CODE_HEADER,
    ERRORS_BY_STATUS,
    InternalError,
    ModelworksError,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)

log = logging.getLogger("modelworks.api")
MAX_RETRY_AFTER_S = 86400
OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
PREFIXES = ("/v1", "/v2")  # a path that exists under one of these suggests it on a 404
# OpenAI endpoints a user may try: this server has none of them, only embeddings and models
OPENAI_UNSERVED = ("/chat/completions", "/completions", "/responses")


def error_style(path: str, app: Any = None, method: str = "GET") -> str:
    """Which error body the clients of `path` expect: its protocol's (`Protocol.errors`, from
    the route it matches or, matching none, the protocol that owns it), else the Modelworks
    envelope.

    OIP v2, TF-Serving and Hugging Face task calls: `{"error": "<message>"}`.
    OpenAI (`/v1/embeddings`, `/v1/models[/{id}]`): `{"error": {"message", "type", "code"}}`.
    """
    return style_of({"type": "http", "path": path, "method": method, "app": app})


def style_of(scope: Scope) -> str:
    """The error body of the request in `scope` (see `error_style`)."""
    proto = protocol_of(scope)
    return proto.errors if proto is not None else "envelope"


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _route_match(request: Request, path: str, method: str | None = None) -> int:
    """0: no route has this path, 1: one has (another method), 2: one serves this method."""
    probe = {"type": "http", "path": path, "root_path": "", "method": method or request.method}
    return max((route.matches(probe)[0].value for route in request.app.routes), default=0)


def allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405: every method some route serves on this path (the router
    names only the first route that matched the path, which may be one of several)."""
    path = request.url.path
    return ", ".join(m for m in METHODS if _route_match(request, path, m) == 2)


def missing_route(request: Request) -> tuple[str, str]:
    """The message and error style of a 404 for an unknown path: what the caller probably
    meant when the path exists under a protocol prefix (an OpenAI `base_url` without `/v1`
    makes the client ask for `/embeddings`), else a plain 'no route'."""
    path = request.url.path
    origin = str(request.base_url).rstrip("/")
    if path.removeprefix("/v1") in OPENAI_UNSERVED:
        return (
            f"no route {path!r}: this server's OpenAI API serves {origin}/v1/embeddings and "
            "/v1/models (embeddings models), not text generation",
            "openai",
        )
    if not path.startswith(PREFIXES):
        found = [(_route_match(request, p + path), p) for p in PREFIXES]
        match, prefix = max(found, key=lambda f: f[0])
        if match:
            guess = prefix + path
            style = error_style(guess, request.app, request.method)
            advice = f"; set base_url to {origin}{prefix}" if style == "openai" else ""
            return f"no route {path!r}; did you mean {guess}?{advice}", style
    return f"no route {path!r}; see /docs for the API", style_of(request.scope)


def error_response(request: Request, exc: ModelworksError, style: str | None = None) -> Response:
    headers = {CODE_HEADER: exc.code}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    retry = exc.details.get("retry_after") if exc.details else None
    if retry is not None:  # whole seconds, at most a day (a client may sleep on it)
        headers["Retry-After"] = str(min(MAX_RETRY_AFTER_S, max(0, int(retry))))
    note(error=exc.code)
    style = style or style_of(request.scope)
    rid = getattr(request.state, "request_id", None)
    message = exc.message
    if exc.status == 500 and rid and style != "envelope" and rid not in message:
        message = f"{message} (request id {rid})"  # the envelope has a field for it
    if style == "string":
        body: dict[str, Any] = {"error": message}
    elif style == "openai":
        body = {
            "error": {
                "message": message,
                "type": OPENAI_TYPES.get(exc.status, "invalid_request_error"),
                "param": None,
                "code": exc.code,
            }
        }
        if 400 <= exc.status < 500 and exc.status not in (408, 409, 429):
            headers["x-should-retry"] = "false"
    else:
        body = exc.envelope()
        if rid:
            body["error"]["request_id"] = rid
    # exact `application/json` (no charset): the kserve client compares the header verbatim.
    # ASCII escapes: a message that echoes a lone surrogate still encodes (UTF-8 would raise)
    content = json.dumps(body, separators=(",", ":")).encode()
    return Response(content, status_code=exc.status, headers=headers, media_type="application/json")


def unexpected(request: Request, exc: BaseException) -> Response:
    """Log a fault of the server with its traceback; answer a generic 500 that reveals nothing
    of it but the request id to quote."""
    rid = getattr(request.state, "request_id", "")
    log.error("unhandled error (request %s)", rid, exc_info=exc)
    return error_response(
        request, InternalError(f"internal error; quote request id {rid} when reporting it")
    )


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ModelworksError)
    async def _mw(request: Request, exc: ModelworksError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()[:5]]
        # never echo the offending input back: it may be large or sensitive
        return error_response(
            request, ValidationFailed(_describe(errors), details={"errors": errors})
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        cls = ERRORS_BY_STATUS.get(exc.status_code, ModelworksError)
        style = None
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message, style = missing_route(request)
        elif exc.status_code == 405:
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
            message = (
                f"method {request.method} is not allowed on {request.url.path!r}; "
                f"use {headers['Allow']}"
            )
        else:
            message = str(exc.detail)
        resp = error_response(request, cls(message), style)
        if cls.status != exc.status_code:  # a status no class has: its code is not this one's
            del resp.headers[CODE_HEADER]
        resp.status_code = exc.status_code
        resp.headers.update(headers)
        return resp

    @app.exception_handler(MemoryError)
    async def _memory(request: Request, exc: MemoryError) -> Response:
        # the process's data limit (modelworks.memory) refused an allocation: this request
        # fails, the server goes on
        from modelworks import memory

        memory.trim()
        return error_response(
            request, ServiceUnavailable(memory.refusal_message(), details={"retry_after": 1})
        )

    # no handler for Exception: Starlette would answer it from its ServerErrorMiddleware,
    # outside every middleware of ours; RequestContext, the outermost, calls `unexpected`
