"""Validated names: once built they are known good, so later code cannot skip the check."""

from __future__ import annotations

import re

from modelworks.errors import ValidationFailed

NAME_RULE = (
    "lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, 1-64 characters"
)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _check(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:40]}…"
        raise ValidationFailed(
            f"invalid {kind} name {shown!r}: use {NAME_RULE} (no '..')",
            details={"field": kind, "rule": r"^[a-z0-9][a-z0-9._-]{0,63}$"},
        )
    return value


class ModelName(str):
    """A model name: `^[a-z0-9][a-z0-9._-]{0,63}$`, never `..` inside."""

    __slots__ = ()

    def __new__(cls, value: str) -> ModelName:
        return super().__new__(cls, _check("model", value))


class AliasName(str):
    """An alias name; same rule as a model name, and never all digits (those are versions)."""

    __slots__ = ()

    def __new__(cls, value: str) -> AliasName:
        _check("alias", value)
        if value.isascii() and value.isdigit():
            raise ValidationFailed(
                f"invalid alias name {value!r}: an alias cannot be all digits "
                "(that reads as a version number); use e.g. 'production' or 'v2'"
            )
        return super().__new__(cls, value)


class ProjectName(str):
    __slots__ = ()

    def __new__(cls, value: str) -> ProjectName:
        return super().__new__(cls, _check("project", value))
