"""What a dataset file is, and the limits on reading one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from modelworks.errors import UnsupportedFormat

FORMATS = ("csv", "parquet", "jsonl", "images")
EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".zip": "images",
}
ACCEPTED = "CSV (.csv), Parquet (.parquet), JSON Lines (.jsonl) or a zip of image folders (.zip)"


@dataclass(frozen=True)
class Limits:
    max_columns: int = 1000
    max_cell_bytes: int = 64 * 1024
    max_classes: int = 1000
    max_images: int = 100_000
    max_image_pixels: int = 40_000_000  # per image: decompression bombs stop here
    max_extract_bytes: int = 8 * 1024**3  # what an image zip may unpack to
    preview_rows: int = 20


def detect_format(filename: str, head: bytes) -> str:
    """The format of an upload: by its first bytes where they tell (Parquet, zip), else by
    its file name's extension."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "images"
    ext = PurePosixPath(filename.lower()).suffix
    fmt = EXTENSIONS.get(ext)
    if fmt is None or fmt in ("parquet", "images"):  # their magic would have matched
        if fmt == "parquet":
            return "parquet"  # let the reader say what is wrong with it
        raise UnsupportedFormat(
            f"cannot tell the format of {shown(filename or 'the upload')}: upload {ACCEPTED}"
        )
    return fmt


def shown(value: Any, limit: int = 40) -> str:
    """A value for a message: short and escaped."""
    text = str(value)
    return repr(text if len(text) <= limit else f"{text[:limit]}…")
