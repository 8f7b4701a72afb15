"""JSON parsing for files inside uploaded models: a key given twice is refused.

Two parsers of the same file may disagree on which of two equal keys wins (Python keeps the
last, some Rust and C++ loaders the first or fail), so a duplicate is never accepted.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    """A JSON object names the same key twice; `key` is that key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


def loads(text: str) -> Any:
    """json.loads, but a duplicated key raises DuplicateKey; depth raises RecursionError."""
    return json.loads(text, object_pairs_hook=_unique_object)
