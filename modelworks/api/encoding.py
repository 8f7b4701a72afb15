"""Content encodings: gzip or deflate request bodies inflated as they stream in, a slice at a
time, with the route's cap applied to the inflated bytes (tritonclient's
`request_compression_algorithm`), and responses compressed for clients that accept it."""

from __future__ import annotations

import functools
import zlib
from typing import Any

from starlette.middleware.gzip import GZipResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelworks.errors import BadRequest, PayloadTooLarge, UnsupportedFormat

ENCODINGS = ("gzip", "deflate")
INFLATE_SLICE = 64 * 1024  # the most one step inflates: a bomb is stopped within this of the cap
# below this, compressing costs more time than it saves on a LAN (~0.1 ms per 8 KiB of JSON)
MIN_COMPRESS_BYTES = 16 * 1024
COMPRESS_LEVEL = 1  # JSON tensors: 97% of level 6's ratio at under half its CPU


def wire_cap(cap: int) -> int:
    """The most compressed bytes a body within `cap` can take: deflate adds at most 5 bytes
    per 64 KiB stored block, gzip 18 more in header and trailer."""
    return cap + cap // 8192 + 64


def _zlib_header(head: bytes) -> bool:
    return len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


class Inflate:
    """A `receive` that inflates a gzip or deflate body as it arrives, at most `INFLATE_SLICE`
    bytes per step, counting inflated bytes against `cap` (None: the handler caps them)."""

    def __init__(self, receive: Receive, encoding: str, cap: int | None) -> None:
        self.receive = receive
        self.encoding = encoding
        self.cap = cap
        self.inflater: Any = None  # zlib's decompressor, made when the first bytes show which
        self.pending = b""  # compressed bytes not inflated yet
        self.more = True  # the client has more of the body to send
        self.full = False  # the last step filled its slice: zlib may hold more output
        self.wire = 0
        self.size = 0

    async def __call__(self) -> Message:
        if not (self.pending or self.full):
            if not self.more:
                return await self.receive()  # the body is done: disconnects pass through
            message = await self.receive()
            if message["type"] != "http.request":
                return message
            self.pending = message.get("body", b"")
            self.more = message.get("more_body", False)
            self.wire += len(self.pending)
            if self.cap is not None and self.wire > wire_cap(self.cap):
                raise too_large(self.cap)
        body = self._step()
        more = self.more or bool(self.pending) or self.full
        return {"type": "http.request", "body": body, "more_body": more}

    def _start(self, head: bytes) -> Any:
        if self.encoding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" means zlib-wrapped (RFC 9110), but some clients send raw deflate
        return zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(head) else -zlib.MAX_WBITS)

    def _step(self) -> bytes:
        if self.inflater is None:
            if not self.pending and self.more:
                return b""
            self.inflater = self._start(self.pending)
        try:
            out: bytes = self.inflater.decompress(self.pending, INFLATE_SLICE)
        except zlib.error:
            raise BadRequest(
                f"the request body is not valid {self.encoding} data; compress the whole body "
                f"with {self.encoding}, or send it uncompressed without Content-Encoding"
            ) from None
        self.pending = self.inflater.unconsumed_tail
        self.full = len(out) == INFLATE_SLICE
        if self.inflater.eof and self.inflater.unused_data:
            if self.encoding != "gzip":
                raise BadRequest("data follows the end of the deflate stream; send one stream")
            # concatenated gzip members are one body (RFC 1952)
            self.pending = self.inflater.unused_data
            self.inflater = self._start(self.pending)
        elif not (self.inflater.eof or self.more or self.pending or self.full):
            raise BadRequest(
                f"the {self.encoding} body ends before its compressed stream does; "
                "send the whole compressed body"
            )
        self.size += len(out)
        if self.cap is not None and self.size > self.cap:
            raise too_large(self.cap, " once decompressed")
        return out


def content_coding(value: bytes) -> str:
    coding = value.strip().lower().decode("latin-1")
    coding = "gzip" if coding == "x-gzip" else coding  # the same coding (RFC 9110 8.4.1.3)
    if coding not in ENCODINGS:
        raise UnsupportedFormat(
            f"Content-Encoding {coding!r} is not supported; send the body uncompressed or "
            f"with Content-Encoding {' or '.join(ENCODINGS)}"
        )
    return coding


def too_large(cap: int, how: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body exceeds {cap} bytes for this route{how}", details={"limit": cap}
    )


class DeflateResponder(GZipResponder):
    content_encoding = "deflate"

    @property
    def compressor(self) -> Any:
        if self._compressor is None:
            self._compressor = zlib.compressobj(self.compresslevel, zlib.DEFLATED, zlib.MAX_WBITS)
        return self._compressor


@functools.lru_cache(maxsize=256)  # clients send the same few values again and again
def accepted(value: bytes) -> str | None:
    """gzip or deflate, whichever `Accept-Encoding` allows (gzip first); None for neither."""
    q: dict[str, float] = {}
    for part in value.decode("latin-1").lower().split(","):
        coding, _, params = part.partition(";")
        weight = 1.0
        name, _, number = params.strip().partition("=")
        if name.strip() == "q":
            try:
                weight = float(number)
            except ValueError:
                weight = 0.0
        q[coding.strip()] = weight
    for coding in ENCODINGS:
        if q.get(coding, q.get("*", 0.0)) > 0:
            return coding
    return None


class Compress:
    """Compresses responses of `minimum_size` bytes or more with gzip or deflate when the
    client accepts one (tritonclient's `response_compression_algorithm`, httpx, browsers).
    Binary tensor responses keep Inference-Header-Content-Length, which counts the inflated
    body; event streams and bodies already encoded pass untouched (Starlette's responder)."""

    def __init__(
        self, app: ASGIApp, minimum_size: int = MIN_COMPRESS_BYTES, level: int = COMPRESS_LEVEL
    ) -> None:
        self.app = app
        self.minimum_size = minimum_size
        self.level = level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"accept-encoding":
                    coding = accepted(value)
                    if coding is not None:
                        kind = GZipResponder if coding == "gzip" else DeflateResponder
                        responder = kind(self.app, self.minimum_size, compresslevel=self.level)
                        await responder(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)
