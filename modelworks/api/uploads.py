"""Streaming multipart uploads: the file part goes straight into the store's temp file,
hashed and size-capped while it arrives; nothing is spooled in memory or in /tmp.

Every way a body can break the multipart grammar (boundary, part headers, disposition,
names, closing delimiter, part count) is a 400 that says how to send the file instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote_to_bytes

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from modelworks.api.limits import TERMINAL_CONTROL
from modelworks.errors import (
    BadRequest,
    ClientGone,
    ModelworksError,
    PayloadTooLarge,
    UnsupportedFormat,
    ValidationFailed,
)
from modelworks.store import Upload

MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8 * 1024  # all header lines of one part together
MAX_PART_HEADERS = 16
MULTIPART_OVERHEAD = 64 * 1024
HOW = "send the model as multipart/form-data with a 'file' part: curl -F file=@model.onnx"
# RFC 2046 §5.1.1: 1 to 70 characters from this set, not ending in a space
BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EXTENDED_FILENAME = re.compile(rb"(?i)\bfilename\*\s*=\s*([^;]*)")


def malformed(problem: str) -> BadRequest:
    return BadRequest(f"malformed multipart body: {problem}; {HOW}")


@dataclass
class ReceivedForm:
    filename: str = ""
    file_seen: bool = False
    fields: dict[str, str] = field(default_factory=dict)


async def receive_file(
    request: Request, upload: Upload, file_field: str = "file", example: str = "model.onnx"
) -> ReceivedForm:
    """Read a multipart body; the `file_field` part is written into `upload`. `example` is
    the file name the error messages show in their curl command."""
    boundary = _boundary(request.headers.get("content-type", ""), example)
    declared = request.headers.get("content-length")
    limit = upload.max_bytes + MULTIPART_OVERHEAD
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"upload exceeds the limit of {upload.max_bytes} bytes "
            "(raise MODELWORKS_MAX_UPLOAD_BYTES on the server to accept larger files)",
            details={"limit": upload.max_bytes},
        )

    reader = _FormReader(upload, file_field)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except ClientDisconnect:
        raise ClientGone(
            "the client disconnected before the upload finished; nothing was stored"
        ) from None
    except ModelworksError:
        raise
    except ValueError:  # python-multipart's parse errors
        raise malformed("it does not follow the multipart grammar") from None
    if not reader.ended:
        raise malformed("it ends before its closing boundary; nothing was stored")
    form = reader.form
    if not form.file_seen:
        raise ValidationFailed(
            f"the multipart field '{file_field}' is required (curl -F {file_field}=@{example})"
        )
    if upload.size == 0:
        raise ValidationFailed("the uploaded file is empty")
    return form


def _boundary(content_type: str, example: str = "model.onnx") -> bytes:
    """The body's boundary, checked against RFC 2046 before a parser sees it."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise UnsupportedFormat(
            f"send the file as multipart/form-data in the field 'file' (curl -F file=@{example} …)"
        )
    boundary = {k.lower(): v for k, v in params.items()}.get(b"boundary", b"")
    if not boundary:
        raise malformed("the Content-Type header has no boundary")
    if len(boundary) > 70:
        raise malformed(f"its boundary is {len(boundary)} characters long (at most 70)")
    if not BOUNDARY.fullmatch(boundary):
        raise malformed("its boundary holds characters RFC 2046 does not allow")
    return boundary


def _text(raw: bytes, what: str) -> str:
    """A part's name or filename: UTF-8 without control characters (they end up in the
    registry, and PostgreSQL refuses NUL in text)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(f"the part's {what} is not UTF-8") from None
    if CONTROL.search(text):
        raise malformed(f"the part's {what} holds control characters")
    return text


def _extended_filename(disposition: bytes) -> str | None:
    """RFC 5987's `filename*=UTF-8''caf%C3%A9.onnx`, decoded strictly (the multipart parser
    drops it); None when the header has none."""
    found = EXTENDED_FILENAME.search(disposition)
    if found is None:
        return None
    charset, _, rest = found[1].partition(b"''")
    if charset.lower() not in (b"utf-8", b"us-ascii") or not rest:
        raise malformed("its filename* must be UTF-8''<percent-encoded UTF-8>")
    return _text(unquote_to_bytes(rest.strip(b'"')), "filename*")


class _FormReader:
    """Callbacks for python-multipart's streaming parser."""

    def __init__(self, upload: Upload, file_field: str) -> None:
        self.upload = upload
        self.file_field = file_field
        self.form = ReceivedForm()
        self.parts = 0
        self.part_name = ""
        self.part_is_file = False
        self.names: set[str] = set()  # field names seen: a repeated one is refused
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.header = b""
        self.value = b""
        self.buf = bytearray()
        self.ended = False

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise malformed(f"it has more than {MAX_PARTS} parts")
        self.headers.clear()
        self.header_bytes = 0
        self.buf = bytearray()
        self.part_name = ""
        self.part_is_file = False

    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_PART_HEADER_BYTES:
            raise malformed(f"a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self.value += data[start:end]

    def on_header_end(self) -> None:
        name = self.header.strip().lower()
        if name in self.headers:
            raise malformed(f"a part repeats its {name[:40].decode('latin-1')!r} header")
        self.headers[name] = self.value
        self.header = self.value = b""
        if len(self.headers) > MAX_PART_HEADERS:
            raise malformed(f"a part has more than {MAX_PART_HEADERS} headers")

    def on_headers_finished(self) -> None:
        raw = self.headers.get(b"content-disposition", b"")
        disposition, opts = parse_options_header(raw.decode("latin-1"))
        opts = {k.lower(): v for k, v in opts.items()}
        if disposition != b"form-data" or not opts.get(b"name"):
            raise malformed("each part needs 'Content-Disposition: form-data; name=\"…\"'")
        self.part_name = _text(opts[b"name"], "name")
        extended = _extended_filename(raw)
        self.part_is_file = b"filename" in opts or extended is not None
        if self.part_name == self.file_field:
            if self.form.file_seen:
                raise ValidationFailed(f"send exactly one '{self.file_field}' part")
            self.form.file_seen = True
            name = (
                extended if extended is not None else _text(opts.get(b"filename", b""), "filename")
            )
            # the client's file name is a label: its folders are not ours to keep
            self.form.filename = PurePosixPath(name.replace("\\", "/")).name[-255:]
        elif self.part_name in self.names:
            raise malformed(f"the field {self.part_name[:64]!r} appears twice; send it once")
        self.names.add(self.part_name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part_name == self.file_field:
            self.upload.write(memoryview(data)[start:end])
            return
        self.buf.extend(data[start:end])
        if len(self.buf) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"form field {self.part_name[:64]!r} is longer than {MAX_FIELD_BYTES} bytes"
            )

    def on_part_end(self) -> None:
        if self.part_name != self.file_field and not self.part_is_file:  # a text field
            try:
                value = self.buf.decode("utf-8")
            except UnicodeDecodeError:
                raise malformed(f"the field {self.part_name[:64]!r} is not UTF-8") from None
            if TERMINAL_CONTROL.search(value):  # shown in terminals: no escape sequences
                raise malformed(
                    f"the field {self.part_name[:64]!r} holds a control or bidirectional-override"
                    " character; send plain text"
                )
            self.form.fields[self.part_name] = value

    def on_end(self) -> None:
        self.ended = True  # only called once the closing boundary has been parsed
