"""Validated names: once built they are known good, so later code cannot skip the check."""

from __future__ import annotations

import re

from modelworks.errors import NotFound, ValidationFailed

NAME_RULE = (
    "lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, 1-64 characters"
)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_RULE = "digits without a sign, spaces or leading zeros, e.g. 3"
# ASCII digits only: `\d` and `str.isdigit()` also match full-width and Arabic-Indic digits,
# and `int()` reads ' 1', '+1', '01' and '1_0' as well
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


def _shown(value: object) -> str:
    """A client's value for an error message: short, and escaped (`repr`)."""
    text = str(value)
    return repr(text if len(text) <= 80 else f"{text[:40]}…")


def _check(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ValidationFailed(
            f"invalid {kind} name {_shown(value)}: use {NAME_RULE} (no '..')",
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


class DatasetName(str):
    """A dataset name: the rule of model names."""

    __slots__ = ()

    def __new__(cls, value: str) -> DatasetName:
        return super().__new__(cls, _check("dataset", value))


class ProjectName(str):
    __slots__ = ()

    def __new__(cls, value: str) -> ProjectName:
        return super().__new__(cls, _check("project", value))


class VersionNumber(int):
    """A version number as a client writes it: 1-999999999 in ASCII digits, nothing else.

    `int()` would also read ' 1', '+1', '01', '1_000', a full-width '1' or an Arabic-Indic
    digit as a version, so one version could be named under many spellings."""

    __slots__ = ()

    def __new__(cls, value: str | int) -> VersionNumber:
        if isinstance(value, bool) or not (
            (isinstance(value, int) and 1 <= value <= 999_999_999)
            or (isinstance(value, str) and _VERSION.fullmatch(value))
        ):
            raise ValidationFailed(
                f"invalid version {_shown(value)}: write a version as {VERSION_RULE}",
                details={"field": "version", "rule": r"^[1-9][0-9]{0,8}$"},
            )
        return super().__new__(cls, int(value))


def parse_selector(model: str, selector: str) -> VersionNumber | AliasName:
    """What `name:SELECTOR` (or `/versions/SELECTOR`) names: a version number or an alias.

    Anything else names nothing, whatever `int()` makes of it: a 404 that says how versions
    and aliases are written."""
    try:
        if selector.isascii() and selector.isdigit():
            return VersionNumber(selector)
        return AliasName(selector)
    except ValidationFailed:
        raise NotFound(
            f"model {model!r} has no version or alias {_shown(selector)}: a version is written "
            f"as {VERSION_RULE}, an alias as {NAME_RULE}",
            details={"model": model},
        ) from None


def parse_version(model: str, text: str) -> VersionNumber:
    """A version number in a path (`/versions/3`): anything else names no version (404)."""
    try:
        return VersionNumber(text)
    except ValidationFailed:
        raise NotFound(
            f"model {model!r} has no version {_shown(text)}: write a version as {VERSION_RULE}",
            details={"model": model},
        ) from None
