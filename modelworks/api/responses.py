"""Fast JSON for the inference routes: orjson writes numpy arrays directly (no `.tolist()`).

Non-finite floats have no JSON form; where a model's output overflows, the slower encoder
writes NaN/Infinity tokens (as TF-Serving does; Python's json and tritonclient read them)
rather than losing the values.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_data(arr: np.ndarray) -> Any:
    """What to put in a JSON body for a tensor: the flat array itself when orjson can write
    it exactly, else a list."""
    if arr.dtype.kind in "biu" or (arr.dtype.kind == "f" and arr.dtype != np.float16):
        flat = np.ascontiguousarray(arr.reshape(-1))
        if arr.dtype.kind != "f" or np.isfinite(flat).all():
            return flat
        return NonFinite(flat.tolist())  # orjson would write null: use the token encoder
    if arr.dtype == np.float16:
        return arr.reshape(-1).astype(np.float32).tolist()
    return [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]


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
