"""Tensors as the Open Inference Protocol names them: datatypes, JSON and binary decoding,
validation.

Element counts are computed with Python integers and capped before anything is allocated.

JSON tensors. One decoder (`json_array`) turns the JSON of both the OIP (`from_json`: a
declared shape) and TF-Serving (`from_nested_json`: the shape is how the data nests) into
arrays, with one set of rules; where the two protocols used to differ, the stricter rule won:

- nesting: flat row-major (OIP only, exactly as many values as the shape holds) or nested
  exactly as the shape, every list at one depth the same length; nothing nested deeper.
  (OIP used to accept any nesting with the right count, `[[1, 2, 3], [4]]` for `[2, 2]`.)
- BOOL: `true`/`false` only. Integer datatypes: JSON integers only, inside the datatype's range
  (OIP used to truncate `1.5` to 1). Float datatypes: JSON numbers, not booleans; a finite
  number the datatype cannot hold (`1e39` for FP32) is refused, never read as infinity.
- BYTES: strings, as their UTF-8 bytes; a lone surrogate (no UTF-8 form) is refused.
- at most `max_elements` elements, counted from the shape before anything is built; a
  tensor without elements is refused.

What the wire formats allow is a protocol's `JsonRules`, as PROTOCOLS.md specifies them:
TF-Serving's JSON takes `{"b64": "..."}` objects as BYTES elements and `NaN`/`Infinity`
tokens as float elements; the OIP's takes neither (its parser refuses the tokens too).

BYTES elements are carried as the exact bytes received, but every runtime here takes them as
text: ONNX Runtime's Python binding holds string tensors as UTF-8 `str` (it `str()`s a `bytes`
element, cuts an `S` element at its first NUL, and decodes string outputs as strict UTF-8), and
text models tokenize. So BYTES inputs must be UTF-8, and anything else is refused with a 400
(`as_text`) rather than changed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class JsonRules:
    """What one protocol's JSON tensors may hold beyond the rules every protocol shares (see
    "JSON tensors" in the module docstring): the wire formats differ, the checks do not."""

    b64_strings: bool = False  # BYTES elements may be {"b64": "<base64>"} (TF-Serving)
    non_finite: bool = False  # float elements may be NaN / ±Infinity (TF-Serving's tokens)
    type_names: Mapping[str, str] = field(default_factory=dict)  # FP32 -> DT_FLOAT in messages


OIP_JSON = JsonRules()


def from_json(
    name: str,
    datatype: Any,
    shape: Any,
    data: Any,
    max_elements: int,
    rules: JsonRules = OIP_JSON,
) -> np.ndarray:
    """One tensor with a declared shape (Open Inference Protocol): `data` flat row-major, or
    nested exactly as `shape`."""
    json_type(name, datatype, rules)
    count = element_count(name, shape, max_elements)
    if data is None:
        raise InvalidInput(f"input {name!r}: 'data' is missing")
    if not isinstance(data, list):
        if shape:
            raise InvalidInput(
                f"input {name!r}: 'data' must be a list of {count} values (row-major)"
            )
        flat = [data]
    elif not data or not isinstance(data[0], list):  # the flat form
        if len(data) != count:
            raise InvalidInput(
                f"input {name!r}: shape {shape} needs {count} elements but 'data' holds {len(data)}"
            )
        flat = data
    else:
        flat = flatten_as(data, shape, lambda: _nesting(name, data, shape))
    return json_array(name, datatype, flat, shape, rules)


def from_nested_json(
    name: str, datatype: Any, data: Any, max_elements: int, rules: JsonRules
) -> np.ndarray:
    """One tensor whose shape is how `data` nests (TF-Serving): every list at one depth must
    have the same length."""
    json_type(name, datatype, rules)
    shape = json_shape(data)
    element_count(name, shape, max_elements)  # before anything is built
    return json_array(name, datatype, flatten_as(data, shape, lambda: ragged(name)), shape, rules)


def json_shape(data: Any) -> list[int]:
    """The shape `data` claims by its first element at each depth (checked by `flatten_as`)."""
    shape: list[int] = []
    while isinstance(data, list):
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return shape


def flatten_as(data: Any, shape: list[int], mismatch: Callable[[], Exception]) -> list[Any]:
    """Row-major elements of `data`, which must nest exactly as `shape` (deeper nesting is
    found by `json_array`); anything else raises `mismatch()`. One level at a time, no
    recursion."""
    if not shape:
        if isinstance(data, list):
            raise mismatch()
        return [data]
    level: list[Any] = [data]
    for size in shape:
        below: list[Any] = []
        for node in level:
            if not isinstance(node, list) or len(node) != size:
                raise mismatch()
            below.extend(node)
        level = below
    return level


def ragged(name: str) -> InvalidInput:
    return InvalidInput(
        f"input {name!r} is ragged: every row (and every nested list) must have the same length"
    )


def _nesting(name: str, data: Any, shape: list[int]) -> InvalidInput:
    return InvalidInput(
        f"input {name!r}: 'data' nests as {json_shape(data)}, not as its shape {shape}; send "
        "it flat (row-major) or nested exactly as the shape, every row the same length"
    )


def json_type(name: str, datatype: Any, rules: JsonRules = OIP_JSON) -> Any:
    """The numpy type of a datatype that has a JSON form, or a 400 naming those that do."""
    if not isinstance(datatype, str) or datatype not in NUMPY_TYPES:
        shown = rules.type_names.get(datatype, datatype) if isinstance(datatype, str) else None
        raise InvalidInput(
            f"input {name!r}: datatype {shown or datatype!r} has no JSON form here; JSON "
            f"tensors are {', '.join(rules.type_names.get(t, t) for t in NUMPY_TYPES)} "
            "(send BF16 with the /v2 binary tensor extension)"
        )
    return NUMPY_TYPES[datatype]


def json_array(
    name: str, datatype: Any, flat: list[Any], shape: list[int], rules: JsonRules = OIP_JSON
) -> np.ndarray:
    """The typed array of row-major JSON elements; the one place their types are checked."""
    dtype = np.dtype(json_type(name, datatype, rules))
    shown = rules.type_names.get(datatype, datatype)
    types = set(map(type, flat))  # one pass in C; JSON parsers build exact types
    if list in types:
        raise InvalidInput(
            f"input {name!r}: 'data' nests deeper than its shape {shape}; send one value "
            "per element"
        )
    if datatype == "BYTES":
        arr = _json_strings(name, flat, types == {str}, shown, rules)
    elif datatype == "BOOL":
        if types - {bool}:
            raise _wrong_type(name, flat, (bool,), f"{shown} values must be true or false")
        arr = np.array(flat, dtype=np.bool_)
    elif dtype.kind in "iu":
        if types - {int}:
            raise _wrong_type(
                name, flat, (int,), f"{shown} values must be integers (no fraction or exponent)"
            )
        info = np.iinfo(dtype)
        for value in (min(flat), max(flat)):
            if not info.min <= value <= info.max:
                raise InvalidInput(
                    f"input {name!r}: {value} does not fit {shown}; values must lie in "
                    f"[{info.min}, {info.max}]"
                )
        arr = np.array(flat, dtype=dtype)
    else:
        if types - {int, float}:
            raise _wrong_type(name, flat, (int, float), f"{shown} values must be numbers")
        arr = _json_floats(name, flat, dtype, shown, rules)
    return arr.reshape(shape)


def _json_floats(
    name: str, flat: list[Any], dtype: np.dtype[Any], shown: str, rules: JsonRules
) -> np.ndarray:
    try:
        sent = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer literal past float64's range
        i = next(i for i, x in enumerate(flat) if isinstance(x, int) and not _fits_float(x))
        raise InvalidInput(
            f"input {name!r}: element {i} ({_json_kind(flat[i])}) does not fit {shown}; "
            "send a smaller number"
        ) from None
    if dtype == sent.dtype:
        arr = sent
    else:
        with np.errstate(over="ignore"):
            arr = sent.astype(dtype)
    finite = np.isfinite(arr)
    if finite.all():
        return arr
    sent_finite = np.isfinite(sent)
    lost = np.flatnonzero(sent_finite & ~finite)  # a finite value the dtype cannot hold
    if lost.size:
        raise InvalidInput(
            f"input {name!r}: {flat[lost[0]]} does not fit {shown} (at most "
            f"±{float(np.finfo(dtype).max):.4g}); send a smaller number"
            + (", or the token Infinity for an infinite value" if rules.non_finite else "")
        )
    if not rules.non_finite:
        i = int(np.flatnonzero(~sent_finite)[0])
        raise InvalidInput(
            f"input {name!r}: element {i} is {_json_kind(flat[i])}; {shown} values must be "
            "finite numbers"
        )
    return arr


def _json_strings(
    name: str, flat: list[Any], all_str: bool, shown: str, rules: JsonRules
) -> np.ndarray:
    arr = np.empty(len(flat), dtype=np.object_)
    if all_str:  # the common case, in one pass
        try:
            arr[:] = [x.encode() for x in flat]
            return arr
        except UnicodeEncodeError:
            pass  # a lone surrogate: the loop names it
    for i, item in enumerate(flat):
        arr[i] = _json_bytes(name, i, item, shown, rules)
    return arr


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _json_bytes(name: str, i: int, item: Any, shown: str, rules: JsonRules) -> bytes:
    if isinstance(item, str):
        return encode_text(name, i, item)
    if rules.b64_strings and is_b64(item) and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                f"input {name!r}: the 'b64' value of element {i} is not valid base64"
            ) from None
    allowed = 'strings or {"b64": "<base64>"} objects' if rules.b64_strings else "strings"
    raise InvalidInput(
        f"input {name!r}: element {i} is {_json_kind(item)}; {shown} values must be {allowed}"
    )


def _wrong_type(name: str, flat: list[Any], allowed: tuple[type, ...], rule: str) -> InvalidInput:
    i, item = next((i, x) for i, x in enumerate(flat) if type(x) not in allowed)
    return InvalidInput(f"input {name!r}: element {i} is {_json_kind(item)}; {rule}")


def _json_kind(item: Any) -> str:
    if isinstance(item, bool | int | float):
        text = json.dumps(item)
        return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
    if isinstance(item, str):
        return f"the string {json.dumps(item[:40])}"
    return {dict: "an object", type(None): "null"}.get(type(item), type(item).__name__)


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
