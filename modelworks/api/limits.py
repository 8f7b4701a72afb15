"""Request-size limits enforced while the body streams in, and a JSON depth guard.

Each route family has its own cap: inference bodies `MODELWORKS_MAX_REQUEST_BYTES`,
management bodies 1 MiB; model uploads are capped by their handler at
`MODELWORKS_MAX_UPLOAD_BYTES` as the file streams into the store. A declared Content-Length over
the cap is refused before a byte is read; a body that grows past it is cut off mid-stream.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelworks.api.errors import error_response
from modelworks.errors import BadRequest, PayloadTooLarge
from modelworks.settings import Settings

MANAGEMENT_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
_UPLOAD = re.compile(r"^/api/v1/models/[^/]+/versions/?$")
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def check_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` before a parser recurses into it."""
    depth = 0
    in_string = False
    skip = -1
    for m in _STRUCTURE.finditer(body):
        pos = m.start()
        if pos < skip:
            continue  # the character right after a backslash is escaped
        ch = m.group()
        if in_string:
            if ch == b"\\":
                skip = pos + 2
            elif ch == b'"':
                in_string = False
            continue
        if ch == b'"':
            in_string = True
        elif ch in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise BadRequest(f"JSON nested deeper than {limit} levels; flatten the request")
        elif ch in (b"]", b"}"):
            depth -= 1


def loads(body: bytes, *, allow_nan: bool = False) -> Any:
    """Parse a request body: depth-checked, and finite numbers only unless `allow_nan`."""
    check_depth(body)

    def reject(token: str) -> Any:
        raise BadRequest(f"{token} is not a valid JSON number; send finite numbers only")

    try:
        if allow_nan:
            return json.loads(body)
        return json.loads(body, parse_constant=reject)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("the request body is not valid JSON") from None


def cap_for(path: str, method: str, settings: Settings) -> int | None:
    """The body cap of a route; None for uploads, whose handler caps the file itself."""
    if method == "POST" and _UPLOAD.match(path):
        return None
    if path.startswith(("/v2/", "/v1/", "/models/")):
        return settings.max_request_bytes
    return MANAGEMENT_BODY_BYTES


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        cap = cap_for(scope["path"], scope["method"], self.settings)
        if cap is None:
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(
            f"request body exceeds {cap} bytes for this route", details={"limit": cap}
        )
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await error_response(Request(scope), BadRequest("invalid Content-Length"))(
                        scope, receive, send
                    )
                    return
                if int(value) > cap:
                    await error_response(Request(scope), too_large)(scope, receive, send)
                    return
        seen = 0
        management = cap == MANAGEMENT_BODY_BYTES
        if management:
            # small JSON bodies: read them whole, check nesting, then hand them on
            chunks = []
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > cap:
                    await error_response(Request(scope), too_large)(scope, receive, send)
                    return
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            try:
                check_depth(body)
            except BadRequest as exc:
                await error_response(Request(scope), exc)(scope, receive, send)
                return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise too_large
            return message

        await self.app(scope, counted, send)
