"""Fast JSON for the inference routes: orjson writes numpy arrays directly (no `.tolist()`),
and the answer budget every protocol encodes its arrays through.

Non-finite floats have no JSON form; where a model's output overflows, the slower encoder
writes NaN/Infinity tokens (as TF-Serving does; Python's json and tritonclient read them)
rather than losing the values. BYTES elements are written as JSON strings, so they must be
UTF-8: other bytes have no JSON form, and the binary tensor extension carries them exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from modelworks.errors import BadRequest, PayloadTooLarge

OPTIONS = orjson.OPT_SERIALIZE_NUMPY
SLICE_ELEMENTS = 64 * 1024  # encoded at a time: at most ~1.6 MB of text past the budget
# (part of an array, index of its first element in the flat array) -> JSON text of a list
Encoder = Callable[[np.ndarray, int], bytes]


def json_data(arr: np.ndarray, name: str = "", start: int = 0) -> Any:
    """What to put in a JSON body for tensor `name`: the flat array itself when orjson can
    write it exactly, else a list. `start`: the flat index of `arr`'s first element."""
    if arr.dtype.kind in "biu" or (arr.dtype.kind == "f" and arr.dtype != np.float16):
        flat = np.ascontiguousarray(arr.reshape(-1))
        if arr.dtype.kind != "f" or np.isfinite(flat).all():
            return flat
        return NonFinite(flat.tolist())  # orjson would write null: use the token encoder
    if arr.dtype == np.float16:
        return arr.reshape(-1).astype(np.float32).tolist()
    return [_text(name, start + i, x) for i, x in enumerate(arr.reshape(-1))]


def _text(name: str, i: int, x: Any) -> str:
    if not isinstance(x, bytes):
        return str(x)
    try:
        return x.decode()
    except UnicodeDecodeError:
        shown = f"output {name!r}" if name else "a BYTES output"
        raise BadRequest(
            f"element {i} of {shown} is bytes that are not UTF-8, which JSON cannot carry; "
            "request it with the binary tensor extension (parameters: binary_data: true)"
        ) from None


def dumps(content: Any) -> bytes:
    try:
        return orjson.dumps(content, option=OPTIONS)
    except TypeError:
        pass
    return json.dumps(content, allow_nan=True, separators=(",", ":"), default=_default).encode()


class NonFinite:
    """Values with NaN or Infinity: orjson refuses this type, so `dumps` falls back."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values


def _default(value: Any) -> Any:
    if isinstance(value, NonFinite):
        return value.values
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}")


def binary_size(arr: np.ndarray) -> int:
    """The bytes of `arr` in the binary tensor extension (`tensors.to_binary`), or more."""
    if arr.dtype.kind in "OSU":
        return sum(4 + (len(x) if isinstance(x, bytes) else 4 * len(str(x))) for x in arr.flat)
    return int(arr.nbytes)


def flat_json(name: str) -> Encoder:
    """OIP's `data`: the flat row-major elements of tensor `name` (see `json_data`)."""
    return lambda part, start: dumps(json_data(part.reshape(-1), name, start))


def numpy_json(part: np.ndarray, _start: int) -> bytes:
    """Nested lists of numbers, as orjson writes a numpy array (float32 in its own
    shortest form)."""
    return dumps(np.ascontiguousarray(part))


class AnswerBudget:
    """What is left of `MODELWORKS_MAX_RESPONSE_BYTES` for one answer.

    A request of a hundred bytes must not make the server build a huge answer, and JSON text
    takes 2-6 bytes per byte of float32 depending on the values. So arrays are encoded a
    slice at a time, counting as they go: an answer over the budget is refused (413) within
    one slice of it, whatever its values, and one under it is served whole."""

    def __init__(self, limit: int, advice: str) -> None:
        self.limit = limit
        self.left = limit
        self.advice = advice  # how to ask for less: binary, fewer rows

    def take(self, size: int) -> None:
        """Count `size` more bytes of the answer; 413 past the budget."""
        self.left -= size
        if self.left < 0:
            raise self._over()

    def array(self, arr: np.ndarray, encode: Encoder) -> orjson.Fragment:
        """`arr` as `encode` writes it, as text to put in an answer (orjson embeds it)."""
        return orjson.Fragment(self._text(arr, encode, 0))

    def rows(self, arr: np.ndarray, encode: Encoder) -> list[orjson.Fragment]:
        """Each row of `arr` (its first axis) on its own, for answers that split rows."""
        return [self.array(arr[i : i + 1].reshape(arr.shape[1:]), encode) for i in range(len(arr))]

    def body(self, content: Any, tail: int = 0) -> bytes:
        """The answer's JSON, its arrays counted already, checked once more as encoded (with
        the `tail` bytes that follow it: binary tensors)."""
        encoded = dumps(content)
        if len(encoded) + tail > self.limit:
            raise self._over()
        return encoded

    def _over(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the answer would exceed MODELWORKS_MAX_RESPONSE_BYTES ({self.limit} bytes); "
            f"{self.advice}",
            details={"limit": self.limit},
        )

    def _text(self, arr: np.ndarray, encode: Encoder, start: int) -> bytes:
        if arr.ndim == 0 or arr.size <= SLICE_ELEMENTS:  # one slice: the common case
            text = encode(arr.reshape(1), start)[1:-1] if arr.ndim == 0 else encode(arr, start)
            self.take(len(text))
            return text
        row = math.prod(arr.shape[1:])
        if row > SLICE_ELEMENTS:  # one row is too big a slice: split it
            parts = [self._text(arr[i], encode, start + i * row) for i in range(len(arr))]
        else:
            parts = []
            step = SLICE_ELEMENTS // max(1, row)
            for first in range(0, len(arr), step):
                parts.append(encode(arr[first : first + step], start + first * row)[1:-1])
                self.take(len(parts[-1]))
        self.take(max(2, len(parts) + 1))  # brackets, and commas between the parts
        return b"[" + b",".join(parts) + b"]"
