"""Request-size limits enforced while the body streams in, content encodings, and a JSON
depth guard.

Each route family has its own cap: inference bodies `MODELWORKS_MAX_REQUEST_BYTES`,
management bodies 1 MiB; model uploads are capped by their handler at
`MODELWORKS_MAX_UPLOAD_BYTES` as the file streams into the store. A declared Content-Length over
the cap is refused before a byte is read; a body that grows past it is cut off mid-stream.
A gzip or deflate body is inflated as it streams in (`encoding.Inflate`) and the cap applies
to the inflated bytes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelworks.api.encoding import Inflate, content_coding, too_large, wire_cap
from modelworks.api.errors import error_response
from modelworks.errors import (
    BadRequest,
    ModelworksError,
    UnsupportedFormat,
)
from modelworks.settings import Settings

MANAGEMENT_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
INFERENCE_PREFIXES = ("/v2/", "/v1/", "/models/")
_UPLOAD = re.compile(r"^/api/v1/models/[^/]+/versions/?$")
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')
_BIG_EXPONENT = re.compile(rb"[eE][+-]?0*[0-9]{3}")
# what `curl -d` and bare clients send with a JSON body; read as JSON on the management API
JSON_ALIKE = (b"", b"application/x-www-form-urlencoded", b"text/plain")


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
            # where Infinity is a token, a literal past float64's range (1e400) must not read
            # as one: refuse it, as TF-Serving does (elsewhere the tensor checks refuse
            # infinities, naming the input); checked per number only when such an exponent
            # is there, as that is slow on big tensors
            exact = float if _BIG_EXPONENT.search(body) is None else _in_range
            return json.loads(body, parse_float=exact)
        return json.loads(body, parse_constant=reject)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("the request body is not valid JSON") from None


def _in_range(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadRequest(f"{text} is beyond the range of a 64-bit float; send a smaller number")
    return value


def cap_for(path: str, method: str, settings: Settings) -> int | None:
    """The body cap of a route; None for uploads, whose handler caps the file itself."""
    if method == "POST" and _UPLOAD.match(path):
        return None
    if path.startswith(INFERENCE_PREFIXES):
        return settings.max_request_bytes
    return MANAGEMENT_BODY_BYTES


def _without(scope: Scope, *names: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in scope["headers"] if n not in names]


def _routed(scope: Scope) -> bool:
    """Whether some route takes this method and path: if none does, its 404 or 405 comes
    before any complaint about the body."""
    router = getattr(scope.get("app"), "router", None)
    return any(r.matches(scope)[0] is Match.FULL for r in getattr(router, "routes", ()))


def as_json(scope: Scope, ctype: bytes | None, body: bytes, auth: bool = True) -> Scope:
    """Management routes take JSON. A body with no Content-Type, or sent as a form or plain
    text (what `curl -d` sends), is read as JSON; another explicit type is refused."""
    media = (ctype or b"").split(b";", 1)[0].strip().lower()
    if not body or media == b"application/json":
        return scope
    if media.startswith(b"application/") and media.endswith(b"+json"):
        return scope
    keyless = auth and all(n != b"authorization" for n, _ in scope["headers"])
    if keyless or not _routed(scope):
        return scope  # its 401, 404 or 405 comes first
    if media not in JSON_ALIKE:
        raise UnsupportedFormat(
            f"this route takes a JSON body, not {media.decode('latin-1')}; "
            "send Content-Type: application/json"
        )
    try:
        json.loads(body)
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise BadRequest(
            "the request body is not JSON; send a JSON object with "
            "Content-Type: application/json (curl -H 'Content-Type: application/json' -d '{...}')"
        ) from None
    headers = [*_without(scope, b"content-type"), (b"content-type", b"application/json")]
    return {**scope, "headers": headers}


def _counted(receive: Receive, cap: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise too_large(cap)
        return message

    return counted


async def _read_whole(receive: Receive, cap: int) -> bytes:
    chunks = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        seen += len(chunks[-1])
        if seen > cap:
            raise too_large(cap)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        cap = cap_for(path, scope["method"], self.settings)
        length = encoding = ctype = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-encoding":
                encoding = value
            elif name == b"content-type":
                ctype = value
        body = None
        inflate = encoding is not None and encoding.strip().lower() not in (b"", b"identity")
        try:
            if inflate:
                receive = Inflate(receive, content_coding(encoding or b""), cap)
                # handlers see the inflated body, whose length is not the one declared
                scope = {
                    **scope,
                    "headers": _without(scope, b"content-length", b"content-encoding"),
                }
            if cap is not None and length is not None:
                if not length.isdigit():
                    raise BadRequest("invalid Content-Length")
                if int(length) > (wire_cap(cap) if inflate else cap):
                    raise too_large(cap)
            if cap is not None and not path.startswith(INFERENCE_PREFIXES):
                # small JSON bodies: read them whole, check nesting, then hand them on
                body = await _read_whole(receive, cap)
                check_depth(body)
                if path.startswith("/api/"):
                    scope = as_json(scope, ctype, body, self.settings.auth)
            elif cap is not None and not inflate:
                receive = _counted(receive, cap)  # Inflate counts what it inflates
        except ModelworksError as exc:
            await error_response(Request(scope), exc)(scope, receive, send)
            return
        if body is None:
            await self.app(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
