"""Validation of a safetensors file's header before any loader reads it.

Written from the format: 8 bytes of little-endian header length, a JSON object of tensors
(dtype, shape, data_offsets) and an optional `__metadata__` string map, then the data region,
which the tensors must tile exactly (sorted by offset, no overlap, no hole, nothing past its
end). Sizes are computed with Python integers, so no product can wrap around.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from modelworks.errors import ValidationFailed
from modelworks.registry import strict_json

# the reference implementation refuses headers over 100 MB; 32 MiB already holds far more than
# MAX_TENSORS entries and bounds what parsing one header costs in memory
MAX_HEADER_BYTES = 32 * 1024**2
MAX_TENSORS = 100_000
MAX_RANK = 64
MAX_DIM = 2**63 - 1
# element width in bits; sub-byte types are packed
DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
TENSOR_KEYS = {"dtype", "shape", "data_offsets"}
RESAVE = "re-save it with safetensors (save_pretrained(dir, safe_serialization=True))"


def _refuse(member: str, problem: str) -> ValidationFailed:
    return ValidationFailed(
        f"{member!r} is not a valid safetensors file: {problem}; {RESAVE}",
        details={"member": member},
    )


def _read_header(path: Path, member: str) -> tuple[dict[str, Any], int]:
    """The parsed header and the size of the data region that follows it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _refuse(member, "it is shorter than the 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES:
            raise _refuse(member, f"its header declares {length} bytes (limit {MAX_HEADER_BYTES})")
        if 8 + length > size:
            raise _refuse(member, f"its header length ({length} bytes) runs past the end of file")
        raw = fh.read(length)
    if not raw.startswith(b"{"):
        raise _refuse(member, "its header is not a JSON object")
    try:
        header = strict_json.loads(raw.decode("utf-8"))
    except strict_json.Refused as refused:  # what the Rust loader would refuse
        raise _refuse(member, f"its header {refused.reason}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse(member, "its header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _refuse(member, "its header is not a JSON object")
    return header, size - 8 - length


def _short(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:40]}…"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_metadata(member: str, value: object) -> None:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _refuse(member, "'__metadata__' must map strings to strings")


def _tensor_span(member: str, name: str, info: object, data_size: int) -> tuple[int, int]:
    """Check one tensor entry; return its (begin, end) offsets in the data region."""
    shown = _short(name)
    if not isinstance(info, dict) or set(info) != TENSOR_KEYS:
        raise _refuse(member, f"tensor {shown!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _refuse(member, f"tensor {shown!r} has unknown dtype {_short(str(dtype))!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape)
    ):
        raise _refuse(
            member, f"tensor {shown!r} needs a shape of at most {MAX_RANK} non-negative integers"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets)):
        raise _refuse(member, f"tensor {shown!r} needs data_offsets [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _refuse(
            member,
            f"tensor {shown!r} has data_offsets [{begin}, {end}] outside the "
            f"{data_size}-byte data region",
        )
    elements = math.prod(shape)
    if elements > MAX_DIM:
        raise _refuse(member, f"tensor {shown!r} has a shape whose element count overflows int64")
    bits = elements * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        raise _refuse(
            member,
            f"tensor {shown!r} declares {elements} {dtype} elements but spans {end - begin} bytes",
        )
    return begin, end


def check_safetensors(path: Path, member: str) -> int:
    """Validate the header of the safetensors file at `path`; return its tensor count.

    `member` names the file in messages (never the server path).
    """
    header, data_size = _read_header(path, member)
    if "__metadata__" in header:
        _check_metadata(member, header.pop("__metadata__"))
    if len(header) > MAX_TENSORS:
        raise _refuse(member, f"it holds more than {MAX_TENSORS} tensors")
    spans = sorted(
        (*_tensor_span(member, name, info, data_size), name) for name, info in header.items()
    )
    cursor = 0
    for begin, end, name in spans:
        if begin < cursor:
            raise _refuse(member, f"tensor {_short(name)!r} overlaps the tensor before it")
        if begin > cursor:
            raise _refuse(member, f"there are unused bytes before tensor {_short(name)!r}")
        cursor = end
    if cursor != data_size:
        raise _refuse(
            member, f"its tensors cover {cursor} of the {data_size} bytes after the header"
        )
    return len(spans)
