"""Request-size limits enforced while the body streams in, content encodings, and the one
JSON reader of request bodies: depth-guarded, UTF-8 only, each key once per object, and
strings that are valid Unicode (no lone surrogates), so no protocol sees anything else.

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
from modelworks.api.protocols import protocol_of
from modelworks.errors import (
    BadRequest,
    ModelworksError,
    UnsupportedFormat,
)
from modelworks.settings import Settings

MANAGEMENT_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
# uploads, whose handlers cap the file themselves (MODELWORKS_MAX_UPLOAD_BYTES)
_UPLOAD = re.compile(r"^/api/v1/(models/[^/]+/versions|datasets)/?$")
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')
_BIG_EXPONENT = re.compile(r"[eE][+-]?0*[0-9]{3}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# what a terminal acts on when the CLI prints a stored text: C0 controls but tab and newlines,
# DEL, C1 controls (8-bit CSI), and the bidirectional overrides and isolates
BODY_PROBLEM = "body_problem"  # request state: a body refused after authentication
TERMINAL_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_WALKED = (str, dict, list)
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
    """Parse a request body: UTF-8, depth-checked, each key once per object, text that is
    valid Unicode, and finite numbers only unless `allow_nan`."""
    check_depth(body)
    text = utf8(body)
    try:
        data = _parse(text, allow_nan)
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None
    check_text(data, text)
    return data


def check_json(body: bytes) -> Any:
    """What `loads` refuses beyond syntax, for a body another parser reads afterwards
    (FastAPI's, on the management API, which keeps its own syntax errors). Returns the
    parsed body, or None when it is no JSON."""
    text = utf8(body)
    try:
        data = _parse(text, allow_nan=False)
    except (ValueError, RecursionError):
        return None
    check_text(data, text)
    return data


def terminal_control(data: Any) -> str | None:
    """What is wrong when a parsed management body's texts hold what a terminal acts on
    (they are shown by the CLI and the console); None when fine."""
    found = _first_match(data, TERMINAL_CONTROL)
    if found is None:
        return None
    return (
        f"{_where(*found)} holds a control or bidirectional-override character; "
        "send plain text (tabs and newlines are fine)"
    )


def utf8(body: bytes) -> str:
    """JSON between systems is UTF-8 (RFC 8259). `json.loads(bytes)` would also guess UTF-16
    or UTF-32 (whose ASCII holds NUL bytes, which UTF-8 JSON never does) and let raw surrogate
    bytes through; a leading byte order mark is dropped."""
    nul = body.find(b"\x00")
    if nul >= 0:
        raise _not_utf8(f"a NUL byte, as in UTF-16 or UTF-32, at byte {nul}")
    try:
        return body.decode().removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise _not_utf8(f"{exc.reason} at byte {exc.start}") from None


def _not_utf8(why: str) -> BadRequest:
    return BadRequest(f"the request body is not UTF-8 ({why}); send JSON encoded as UTF-8")


def _parse(text: str, allow_nan: bool) -> Any:
    if allow_nan:
        # where Infinity is a token, a literal past float64's range (1e400) must not read
        # as one: refuse it, as TF-Serving does (elsewhere the tensor checks refuse
        # infinities, naming the input); checked per number only when such an exponent
        # is there, as that is slow on big tensors
        exact = float if _BIG_EXPONENT.search(text) is None else _in_range
        return json.loads(text, parse_float=exact, object_pairs_hook=unique_keys)
    return json.loads(text, parse_constant=_not_a_number, object_pairs_hook=unique_keys)


def _not_a_number(token: str) -> Any:
    raise BadRequest(f"{token} is not a valid JSON number; send finite numbers only")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with each key once. Parsers disagree on which of two equal keys wins (Python
    keeps the last, others the first), so a check and the code after it could read different
    values: a duplicate is refused. One call per object, about 0.3 µs."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(
                    f"the key {_shown_key(key)} appears twice in one JSON object; "
                    "send each key once"
                )
            seen.add(key)
    return obj


def check_text(data: Any, text: str) -> None:
    """Refuse a lone surrogate (`"\\ud800"` is valid JSON but no text: it cannot be encoded,
    stored or echoed) in any string or key, naming where it is. Only an escape can make one
    in UTF-8 JSON, so a body without `\\uD800`-`\\uDFFF` escapes is not walked."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return
    found = _lone_surrogate(data)
    if found is not None:
        raise BadRequest(
            f"{_where(*found)} is not valid Unicode text (a lone surrogate); send UTF-8 text"
        )


def _lone_surrogate(value: Any) -> tuple[list[str | int], bool] | None:
    """Where the first lone surrogate is: the path to its string or key, and whether it is
    in a key. None if there is none."""
    return _first_match(value, _SURROGATE)


def _first_match(value: Any, pattern: re.Pattern[str]) -> tuple[list[str | int], bool] | None:
    """Where the first string or key holding `pattern` is, and whether it is a key."""
    if type(value) is str:
        return ([], False) if pattern.search(value) else None
    if type(value) is dict:
        items: Any = value.items()
        for key in value:
            if pattern.search(key):
                return [], True
    elif type(value) is list:
        items = enumerate(value)
    else:
        return None
    for step, item in items:
        if type(item) in _WALKED:
            found = _first_match(item, pattern)
            if found is not None:
                return [step, *found[0]], found[1]
    return None


def _where(path: list[str | int], in_key: bool) -> str:
    """`input[3]`, `inputs[0].name`, `a key of parameters`: what a client can find."""
    shown = ""
    for step in path:
        if isinstance(step, int):
            shown += f"[{step}]"
        elif _PLAIN_KEY.fullmatch(step):
            shown += f".{step}" if shown else step
        else:
            shown += f"[{_shown_key(step)}]"
    if in_key:
        return f"a key of {shown or 'the body'}"
    return shown or "the body"


def _shown_key(key: str) -> str:
    return repr(key if len(key) <= 40 else f"{key[:40]}…")


def _in_range(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadRequest(f"{text} is beyond the range of a 64-bit float; send a smaller number")
    return value


def cap_for(scope: Scope, settings: Settings) -> int | None:
    """The body cap of a request: its protocol's (inference bodies), the management API's,
    or None for uploads, whose handler caps the file itself."""
    proto = protocol_of(scope)
    if proto is not None:
        return settings.max_request_bytes if proto.inference else MANAGEMENT_BODY_BYTES
    if scope["method"] == "POST" and _UPLOAD.match(scope["path"]):
        return None
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
    text (what `curl -d` sends), is read as JSON; another explicit type is refused. Either
    way a duplicated key, a lone surrogate or bytes that are not UTF-8 are a 400."""
    media = (ctype or b"").split(b";", 1)[0].strip().lower()
    if not body:
        return scope
    keyless = auth and all(n != b"authorization" for n, _ in scope["headers"])
    if keyless or not _routed(scope):
        return scope  # its 401, 404 or 405 comes first
    typed = media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )
    if not typed and media not in JSON_ALIKE:
        raise UnsupportedFormat(
            f"this route takes a JSON body, not {media.decode('latin-1')}; "
            "send Content-Type: application/json"
        )
    problem = terminal_control(check_json(body))  # parsed once for both checks
    if problem is not None:  # refused once the key is checked: a bad key still gets its 401
        scope = {**scope, "state": {**scope.get("state", {}), BODY_PROBLEM: problem}}
    if typed:
        return scope
    try:
        json.loads(body)
    except ValueError:
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
        proto = protocol_of(scope)
        inference = proto is not None and proto.inference  # streamed to the handler, not read
        cap = cap_for(scope, self.settings)
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
            if cap is not None and not inference:
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
