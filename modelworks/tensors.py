"""Tensors as the Open Inference Protocol names them: datatypes, JSON decoding, validation.

Element counts are computed with Python integers and capped before anything is allocated.

BYTES elements are carried as the exact bytes received, but every runtime here takes them as
text: ONNX Runtime's Python binding holds string tensors as UTF-8 `str` (it `str()`s a `bytes`
element, cuts an `S` element at its first NUL, and decodes string outputs as strict UTF-8), and
text models tokenize. So BYTES inputs must be UTF-8, and anything else is refused with a 400
(`as_text`) rather than changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelworks.errors import InvalidInput, PayloadTooLarge

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
DATATYPE_OF = {np.dtype(t).str: name for name, t in NUMPY_TYPES.items() if name != "BYTES"}


def datatype_of(arr: np.ndarray) -> str:
    if arr.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    return DATATYPE_OF[
        arr.dtype.newbyteorder("<").str if arr.dtype.byteorder == ">" else arr.dtype.str
    ]


def element_count(name: str, shape: Any, max_elements: int) -> int:
    """Product of `shape`, checked dimension by dimension; never overflows, never allocates.
    A zero dimension (`[0, 4]`) is refused: a tensor has at least one element."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > 32:
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dimensions; at most 32 are allowed"
        )
    count = 1
    for d in shape:
        if d < 0:
            raise InvalidInput(
                f"input {name!r}: shape dimensions must be non-negative, got {shape}"
            )
        count *= d
        if count > max_elements:
            raise PayloadTooLarge(
                f"input {name!r} declares more than {max_elements} elements; "
                "split the request into smaller batches",
                details={"limit": max_elements},
            )
    if count == 0:
        # no protocol here gives an empty batch a meaning; refused before any model sees it
        raise InvalidInput(
            f"input {name!r} has no elements (shape {shape}); send at least one row of data"
        )
    return count


def from_json(name: str, datatype: Any, shape: Any, data: Any, max_elements: int) -> np.ndarray:
    """Decode one OIP JSON tensor (nested or flat row-major data) into a numpy array."""
    if not isinstance(datatype, str) or datatype not in NUMPY_TYPES:
        raise InvalidInput(
            f"input {name!r}: unsupported datatype {datatype!r}; "
            f"use one of {', '.join(NUMPY_TYPES)} "
            "(FP16/BF16 need the binary tensor extension)"
        )
    count = element_count(name, shape, max_elements)
    if data is None:
        raise InvalidInput(f"input {name!r}: 'data' is missing")
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} elements but 'data' holds {len(flat)}"
        )
    try:
        if datatype == "BYTES":
            arr = np.empty(count, dtype=np.object_)
            for i, item in enumerate(flat):
                if not isinstance(item, str):
                    raise InvalidInput(f"input {name!r}: BYTES elements must be strings")
                arr[i] = encode_text(name, i, item)
        elif datatype == "BOOL":
            if not all(isinstance(x, bool) for x in flat):
                raise InvalidInput(f"input {name!r}: BOOL elements must be true or false")
            arr = np.asarray(flat, dtype=np.bool_)
        else:
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in flat):
                raise InvalidInput(f"input {name!r}: {datatype} elements must be numbers")
            with np.errstate(over="ignore"):
                arr = np.asarray(flat, dtype=NUMPY_TYPES[datatype])
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InvalidInput(
                    f"input {name!r}: values must be finite numbers that fit {datatype}"
                    + (" (at most ±3.4e38)" if datatype == "FP32" else "")
                )
    except (ValueError, OverflowError, TypeError) as exc:
        raise InvalidInput(
            f"input {name!r}: data does not fit datatype {datatype} ({exc})"
        ) from None
    return arr.reshape(shape)


def encode_text(name: str, i: int, text: str) -> bytes:
    """A JSON string as UTF-8; a lone surrogate (`"\\ud800"`) has no UTF-8 form."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"BYTES element {i} of input {name!r} is not valid Unicode text (a lone surrogate "
            f"at character {exc.start}); send UTF-8 text"
        ) from None


def as_text(name: str, arr: np.ndarray) -> list[str]:
    """The elements of a BYTES tensor as text, or a 400 naming the first that is not UTF-8."""
    out: list[str] = []
    for i, x in enumerate(arr.reshape(-1)):
        if isinstance(x, bytes):
            try:
                out.append(x.decode())
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"BYTES element {i} of input {name!r} is not UTF-8 ({exc.reason} at byte "
                    f"{exc.start}); this model takes text, and its runtime carries only UTF-8: "
                    "send UTF-8 text (encode binary data, e.g. as base64, before sending it)"
                ) from None
        else:
            text = str(x)
            encode_text(name, i, text)
            out.append(text)
    return out


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        if any(isinstance(x, list) for x in data):
            raise InvalidInput("tensor data is ragged: nest every row to the same depth")
        return data
    out: list[Any] = []
    for row in data:
        if not isinstance(row, list):
            raise InvalidInput("tensor data is ragged: nest every row to the same depth")
        out.extend(_flatten(row))
    return out


def check_against_signature(signature: dict[str, Any], feeds: dict[str, np.ndarray]) -> None:
    """Names, datatypes and shapes must match the model's inputs; the error names the fix."""
    expected = {i["name"]: i for i in signature.get("inputs", [])}
    described = ", ".join(
        f"{i['name']}: {i['datatype']} {i['shape']}" for i in signature.get("inputs", [])
    )
    for name in feeds:
        if name not in expected:
            raise InvalidInput(
                f"unknown input {name!r}; the model expects {described}",
                details={"inputs": list(expected.values())},
            )
    for name, spec in expected.items():
        if name not in feeds:
            raise InvalidInput(
                f"missing input {name!r}; the model expects {described}",
                details={"inputs": list(expected.values())},
            )
        arr = feeds[name]
        got = datatype_of(arr)
        if got != spec["datatype"]:
            raise InvalidInput(
                f"input {name!r} has datatype {got}; the model expects {spec['datatype']} "
                f"(signature: {described})",
                details={"inputs": list(expected.values())},
            )
        shape = spec["shape"]
        if len(shape) != arr.ndim or any(
            e not in (-1, g) for e, g in zip(shape, arr.shape, strict=False)
        ):
            raise InvalidInput(
                f"input {name!r} has shape {list(arr.shape)}; the model expects {shape} "
                f"(-1 = any size; signature: {described})",
                details={"inputs": list(expected.values())},
            )
        if got == "BYTES":
            as_text(name, arr)  # checked here: in the runtime it would fail the whole batch


def from_binary(name: str, datatype: Any, shape: Any, blob: bytes, max_elements: int) -> np.ndarray:
    """Decode one tensor of the binary tensor extension (little-endian, row-major)."""
    if not isinstance(datatype, str) or datatype not in NUMPY_TYPES:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
    count = element_count(name, shape, max_elements)
    if datatype == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        view = memoryview(blob)
        offset = 0
        for i in range(count):
            if offset + 4 > len(view):
                raise InvalidInput(f"input {name!r}: BYTES data ends before element {i}")
            length = int.from_bytes(view[offset : offset + 4], "little")
            offset += 4
            if offset + length > len(view):
                raise InvalidInput(
                    f"input {name!r}: BYTES element {i} claims {length} bytes, "
                    "past the end of its data"
                )
            arr[i] = bytes(view[offset : offset + length])
            offset += length
        if offset != len(view):
            raise InvalidInput(
                f"input {name!r}: {len(view) - offset} bytes left after {count} elements"
            )
        return arr.reshape(shape)
    dtype = np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {shape} as {datatype} needs {expected} bytes, got {len(blob)}"
        )
    arr = np.frombuffer(blob, dtype=dtype).reshape(shape)
    if datatype == "BOOL":
        arr = arr.astype(np.bool_)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def to_binary(arr: np.ndarray) -> bytes:
    """Encode one output tensor for the binary tensor extension."""
    if arr.dtype.kind in ("O", "S", "U"):
        parts = []
        for x in arr.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(len(b).to_bytes(4, "little") + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
