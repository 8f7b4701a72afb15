"""Streaming multipart uploads: the file part goes straight into the store's temp file,
hashed and size-capped while it arrives; nothing is spooled in memory or in /tmp."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from modelworks.errors import BadRequest, PayloadTooLarge, UnsupportedFormat, ValidationFailed
from modelworks.store import Upload

MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 16
MULTIPART_OVERHEAD = 64 * 1024


class ClientGone(BadRequest):
    code = "client_disconnected"


@dataclass
class ReceivedForm:
    filename: str = ""
    file_seen: bool = False
    fields: dict[str, str] = field(default_factory=dict)


async def receive_file(request: Request, upload: Upload, file_field: str = "file") -> ReceivedForm:
    """Read a multipart body; the `file_field` part is written into `upload`."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UnsupportedFormat(
            "send the model as multipart/form-data with the file in the field 'file' "
            "(curl -F file=@model.onnx …)"
        )
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
    except (PayloadTooLarge, ValidationFailed, UnsupportedFormat, BadRequest):
        raise
    except Exception:
        raise BadRequest("malformed multipart body; send it as multipart/form-data") from None
    if not reader.ended:
        raise BadRequest(
            "malformed multipart body: it ends before its closing boundary; nothing was stored"
        )
    form = reader.form
    if not form.file_seen:
        raise ValidationFailed(
            f"the multipart field '{file_field}' is required (curl -F {file_field}=@model.onnx)"
        )
    if upload.size == 0:
        raise ValidationFailed("the uploaded file is empty")
    return form


class _FormReader:
    """Callbacks for python-multipart's streaming parser."""

    def __init__(self, upload: Upload, file_field: str) -> None:
        self.upload = upload
        self.file_field = file_field
        self.form = ReceivedForm()
        self.parts = 0
        self.part_name = ""
        self.headers: dict[bytes, bytes] = {}
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
            raise ValidationFailed(f"too many multipart parts (at most {MAX_PARTS})")
        self.headers.clear()
        self.buf = bytearray()
        self.part_name = ""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header.lower()] = self.value
        self.header = self.value = b""

    def on_headers_finished(self) -> None:
        _disp, opts = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.part_name = opts.get(b"name", b"").decode(errors="replace")
        if self.part_name == self.file_field:
            if self.form.file_seen:
                raise ValidationFailed(f"send exactly one '{self.file_field}' part")
            self.form.file_seen = True
            self.form.filename = opts.get(b"filename", b"").decode(errors="replace")[-255:]

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part_name == self.file_field:
            self.upload.write(memoryview(data)[start:end])
            return
        self.buf.extend(data[start:end])
        if len(self.buf) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"form field {self.part_name!r} is longer than {MAX_FIELD_BYTES} bytes"
            )

    def on_part_end(self) -> None:
        if self.part_name and self.part_name != self.file_field:
            self.form.fields[self.part_name] = self.buf.decode(errors="replace")

    def on_end(self) -> None:
        self.ended = True  # only called once the closing boundary has been parsed
