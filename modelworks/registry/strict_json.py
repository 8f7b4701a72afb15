"""JSON parsing for files inside uploaded models, as strict as the Rust loaders that read them.

Python's json module accepts what serde_json (safetensors, tokenizers) refuses: a key given
twice (parsers disagree on which wins), lone UTF-16 surrogate escapes, NaN and Infinity,
numbers too large for a double, and nesting past serde's limit. A file one parser reads and
the other refuses would pass the upload and fail when served, so all of these are refused.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

# serde_json's recursion limit is 128: a 128th nested array or object is an error
MAX_DEPTH = 127
# a \uD800-\uDFFF escape; only then can a parsed string hold a surrogate (raw UTF-8 cannot)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
DOUBLE_MAX = int(sys.float_info.max)


class Refused(ValueError):
    """The text parses in Python but a strict parser refuses it; `reason` says why, as a
    phrase that follows "it" ("names the key 'a' twice")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DuplicateKey(Refused):
    """A JSON object names the same key twice; `key` is that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"names the key {_shown(key)!r} twice")
        self.key = key


def _shown(text: str) -> str:
    text = _SURROGATE.sub("\ufffd", text)
    return text if len(text) <= 80 else f"{text[:40]}…"


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


def _no_constant(name: str) -> float:
    raise Refused(f"holds {name}, which is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Refused(f"holds the number {_shown(text)}, too large for a double")
    return value


def _integer(text: str) -> int:
    value = int(text)
    if len(text) > 300 and abs(value) > DOUBLE_MAX:  # serde reads such an integer as a double
        raise Refused(f"holds the number {_shown(text)}, too large for a double")
    return value


def _check_tree(value: Any, strings: bool) -> None:
    """Nesting depth and (when `strings`) lone surrogates, without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[Any] = [*item.values(), *item.keys()] if strings else [*item.values()]
        elif isinstance(item, list):
            children = item
        else:
            if strings and isinstance(item, str) and _SURROGATE.search(item):
                raise Refused("holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF)")
            continue
        if depth > MAX_DEPTH:
            raise Refused(f"nests arrays and objects more than {MAX_DEPTH} levels deep")
        stack.extend((c, depth + 1) for c in children if strings or isinstance(c, dict | list))


def loads(text: str) -> Any:
    """json.loads that raises Refused (DuplicateKey for a repeated key) for anything serde_json
    would refuse, and RecursionError when nesting exhausts Python's own stack."""
    value = json.loads(
        text,
        object_pairs_hook=_unique_object,
        parse_constant=_no_constant,
        parse_float=_finite,
        parse_int=_integer,
    )
    _check_tree(value, strings=_SURROGATE_ESCAPE.search(text) is not None)
    return value
