"""Fast JSON for the inference routes: orjson writes numpy arrays directly (no `.tolist()`).

Non-finite floats have no JSON form; where a model's output overflows, the slower encoder
writes NaN/Infinity tokens (as TF-Serving does; Python's json and tritonclient read them)
rather than losing the values. BYTES elements are written as JSON strings, so they must be
UTF-8: other bytes have no JSON form, and the binary tensor extension carries them exactly.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from modelworks.errors import BadRequest

OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_data(arr: np.ndarray, name: str = "") -> Any:
    """What to put in a JSON body for tensor `name`: the flat array itself when orjson can
    write it exactly, else a list."""
    if arr.dtype.kind in "biu" or (arr.dtype.kind == "f" and arr.dtype != np.float16):
        flat = np.ascontiguousarray(arr.reshape(-1))
        if arr.dtype.kind != "f" or np.isfinite(flat).all():
            return flat
        return NonFinite(flat.tolist())  # orjson would write null: use the token encoder
    if arr.dtype == np.float16:
        return arr.reshape(-1).astype(np.float32).tolist()
    return [_text(name, i, x) for i, x in enumerate(arr.reshape(-1))]


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


class FastJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
