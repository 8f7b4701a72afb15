"""Request ids, security headers and the last word on unexpected errors, as plain ASGI
middleware (cheap on the hot path).

`RequestContext` is the outermost middleware of the app: whatever an inner layer raises that
no handler turned into a response is logged and answered here (a generic 500), so that
answer carries the request id and the security headers like every other."""

from __future__ import annotations

import logging
import re
import uuid
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelworks.api.errors import error_response, unexpected
from modelworks.errors import BadRequest

log = logging.getLogger("modelworks.api")
_RID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
NO_STORE = (b"cache-control", b"no-store")  # unless the route set a Cache-Control of its own


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for k, v in scope["headers"]:
            if k == b"x-request-id" and _RID.fullmatch(v):
                rid = v
                break
        if not rid:
            rid = uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        started = False

        async def send_with_rid(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid))
                headers.extend(SECURITY_HEADERS)
                if all(k.lower() != b"cache-control" for k, _ in headers):
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        problem = _not_utf8(scope)
        if problem is not None:
            response = error_response(Request(scope), BadRequest(problem))
            await response(scope, receive, send_with_rid)
            return

        try:
            await self.app(scope, receive, send_with_rid)
        except Exception as exc:
            if started:  # too late for an answer: the server logs it and drops the connection
                log.error("request %s failed after its response started", rid.decode())
                raise
            await unexpected(Request(scope), exc)(scope, receive, send_with_rid)


def _not_utf8(scope: Scope) -> str | None:
    """What is wrong when the path or query string, once percent-decoded, is not UTF-8 (the
    server would otherwise read it with U+FFFD in place and echo it back); None when fine.
    Plain ASCII without escapes, the usual case, costs two byte scans."""
    query: bytes = scope.get("query_string", b"")
    raw_path: bytes = scope.get("raw_path") or b""
    for what, raw in (("path", raw_path), ("query string", query.replace(b"+", b" "))):
        if b"%" not in raw and raw.isascii():
            continue
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return (
                f"the request's {what} is not valid UTF-8 once percent-decoded; "
                "percent-encode UTF-8 text (e.g. é as %C3%A9)"
            )
    return None
