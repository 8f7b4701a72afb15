"""Property tests (Hypothesis) for the validators SECURITY.md names: model, alias and project
names; archive members (what a member name may write, end to end through extraction); shapes
(`tensors.element_count`); JSON nesting (`api.limits.check_depth`); digests and the store paths
built from them (`store.confined`)."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from modelworks.api.limits import check_depth, loads
from modelworks.archives import SafeRelPath, extract_archive
from modelworks.errors import (
    BadRequest,
    InvalidInput,
    ModelworksError,
    PayloadTooLarge,
    ValidationFailed,
)
from modelworks.names import AliasName, ModelName, ProjectName, VersionNumber
from modelworks.store import ArtifactStore, Digest, confined
from modelworks.tensors import element_count

RULE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PROPERTY = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])


def joined(tokens: list[str], max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Strings made of `tokens` (which may be longer than one character)."""
    return st.lists(st.sampled_from(tokens), min_size=min_size, max_size=max_size).map("".join)


# names ------------------------------------------------------------------------------------------
near_names = joined([*"abz09._-", *"A/\\%~:# \x00\né", "..", "%2e", "\u212a"], max_size=70)
names = (
    near_names
    | st.text(max_size=80)
    | st.from_regex(RULE, fullmatch=True)
    | st.text(st.characters(codec="utf-8"), max_size=10)
)


@pytest.mark.parametrize("kind", [ModelName, AliasName, ProjectName])
@PROPERTY
@given(value=names)
def test_names_match_the_rule_exactly(kind: type[str], value: str) -> None:
    valid = RULE.fullmatch(value) is not None and ".." not in value
    if kind is AliasName:
        valid = valid and not value.isdigit()
    try:
        accepted = kind(value)
    except ValidationFailed as exc:
        assert not valid, f"{value!r} follows the rule but was refused: {exc.message}"
        return
    assert valid, f"{value!r} was accepted"
    assert accepted == value and RULE.fullmatch(accepted) and ".." not in accepted
    assert "/" not in accepted and "\\" not in accepted and "\x00" not in accepted


# archive members: what a member name can write -------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("members").resolve()


member_names = joined(
    [*"ab.", "/", "\\", "..", "C:", "\x00", "~", " ", "é", "\x7f"], max_size=24, min_size=1
) | st.text(min_size=1, max_size=30)


def one_member_archive(kind: str, name: str) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(zipfile.ZipInfo(name), b"data")
    else:
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"data"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar"])
@PROPERTY
@given(name=member_names)
def test_a_member_writes_its_own_file_inside_or_nothing(
    scratch: Path, kind: str, name: str
) -> None:
    case = scratch / uuid.uuid4().hex
    case.mkdir()
    archive = case / "upload"
    try:
        archive.write_bytes(one_member_archive(kind, name))
    except (ValueError, UnicodeEncodeError):
        return  # the stdlib writer cannot even express this name
    dest = case / "dest"
    try:
        written = extract_archive(archive, dest)
    except ModelworksError:
        assert sorted(p.name for p in case.iterdir()) == ["upload"], "debris left behind"
        return
    files = [p for p in dest.rglob("*") if p.is_file() or p.is_symlink()]
    if not written:  # the archive's own root folder ('./'): skipped
        assert files == []
    else:
        safe = SafeRelPath(written[0])  # what was written passed the member-name check
        assert files == [dest.joinpath(*safe.parts)]
        assert files[0].read_bytes() == b"data"
    assert sorted(p.name for p in case.iterdir()) == ["dest", "upload"]


@PROPERTY
@given(value=member_names | st.text(st.characters(codec=None), max_size=12))
def test_safe_rel_path_is_relative_plain_and_inside(scratch: Path, value: str) -> None:
    """Any text, surrogates and control characters included: refused with ValidationFailed
    only, or a relative POSIX path with plain components that stays under any folder."""
    try:
        safe = SafeRelPath(value)
    except ValidationFailed:
        return
    assert safe.parts and all(part not in ("", ".", "..") for part in safe.parts)
    assert not safe.startswith("/") and "\\" not in safe and ":" not in safe[:2]
    assert all(ord(c) >= 32 and ord(c) != 127 for c in safe)
    safe.encode()  # valid UTF-8
    joined = (scratch / "root").joinpath(*safe.parts)
    assert (scratch / "root") in joined.parents


# shapes -----------------------------------------------------------------------------------------
dims = st.integers(min_value=-(2**70), max_value=2**70) | st.integers(min_value=0, max_value=9)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(0, 4), max_size=2),
)


@PROPERTY
@given(
    shape=st.lists(dims, max_size=40) | st.lists(dims | junk, max_size=6) | junk,
    cap=st.integers(min_value=1, max_value=2**64),
)
def test_element_count_is_exact_or_refused(shape: Any, cap: int) -> None:
    typed = (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and len(shape) <= 32
    )
    valid = typed and all(d > 0 for d in shape)  # a zero dimension leaves no elements
    prefixes = [math.prod(shape[:i]) for i in range(1, len(shape) + 1)] if typed else []
    try:
        count = element_count("x", shape, cap)
    except PayloadTooLarge:
        # refused for size only once the non-negative dimensions read so far exceed the cap
        assert typed
        first_negative = next((i for i, d in enumerate(shape) if d < 0), len(shape))
        assert any(p > cap for p in prefixes[: first_negative + 1])
        return
    except InvalidInput:
        assert not valid
        return
    assert valid, f"{shape!r} was accepted"
    assert count == math.prod(shape) <= cap
    assert all(p <= cap for p in prefixes)


# JSON nesting -----------------------------------------------------------------------------------
json_text = joined([*'ab"\\[]{}:,', "\\u005b", "é", "\n"], max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=25,
)


def nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((nesting(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((nesting(v) for v in value.values()), default=0)
    return 0


@PROPERTY
@given(
    value=json_values,
    limit=st.integers(min_value=0, max_value=8),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
)
def test_check_depth_agrees_with_the_json_nesting(
    value: Any, limit: int, ascii_only: bool, indent: int | None
) -> None:
    assume(not (isinstance(value, float) and math.isinf(value)))
    body = json.dumps(value, ensure_ascii=ascii_only, indent=indent, allow_nan=True).encode()
    try:
        check_depth(body, limit)
    except BadRequest:
        assert nesting(value) > limit
        return
    assert nesting(value) <= limit
    if "Infinity" not in body.decode():
        assert loads(body) == json.loads(body)


# duplicate keys and lone surrogates ------------------------------------------------------------
# small alphabets, so that keys repeat; "\ud800" and "\udc00" alone are no text, together one
# character; "\\u0061" is "a" spelled as an escape
pieces = st.sampled_from(["a", "b", "\ud800", "\udc00", "\ud83d\ude00", "é"])
texts = st.lists(pieces, max_size=3).map("".join)
raw_json = st.recursive(
    st.integers() | texts.map(lambda t: ("str", t)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(st.tuples(texts, inner), max_size=3).map(lambda kv: ("obj", kv))
    ),
    max_leaves=12,
)


def render(node: Any, escape_a: bool) -> str:
    """JSON text of a node: ("obj", pairs) is an object whose keys may repeat, ("str", t) a
    string; keys spell "a" as an escape when `escape_a`."""
    if isinstance(node, list):
        return "[" + ",".join(render(v, escape_a) for v in node) + "]"
    if isinstance(node, tuple) and node[0] == "obj":
        keys = [json.dumps(k).replace("a", "\\u0061" if escape_a else "a") for k, _ in node[1]]
        values = [render(v, escape_a) for _, v in node[1]]
        return "{" + ",".join(f"{k}:{v}" for k, v in zip(keys, values, strict=True)) + "}"
    if isinstance(node, tuple):
        return json.dumps(node[1])
    return json.dumps(node)


def lone(value: Any) -> bool:
    if isinstance(value, str):
        return re.search("[\ud800-\udfff]", value) is not None
    if isinstance(value, dict):
        return any(lone(k) or lone(v) for k, v in value.items())
    if isinstance(value, list):
        return any(lone(v) for v in value)
    return False


@PROPERTY
@given(node=raw_json, escape_a=st.booleans())
def test_loads_refuses_exactly_repeated_keys_and_lone_surrogates(node: Any, escape_a: bool) -> None:
    text = render(node, escape_a)
    repeated: list[bool] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        repeated.append(len({k for k, _ in pairs}) != len(pairs))
        return dict(pairs)

    expected = json.loads(text, object_pairs_hook=pairs_hook)
    try:
        got = loads(text.encode())
    except BadRequest as exc:
        assert any(repeated) or lone(expected), f"{text!r} refused: {exc.message}"
        assert "appears twice" in exc.message or "not valid Unicode text" in exc.message
        return
    assert not any(repeated) and not lone(expected), f"{text!r} accepted"
    assert got == expected


versions = st.integers(min_value=-5, max_value=10**10).map(str) | joined(
    [*"0123456789", " ", "+", "-", "_", ".", "e", "x", "\uff11", "\u0663", "\n"], 12
)


@PROPERTY
@given(text=versions)
def test_a_version_is_plain_ascii_digits(text: str) -> None:
    plain = re.fullmatch(r"[1-9][0-9]{0,8}", text) is not None
    try:
        number = VersionNumber(text)
    except ValidationFailed:
        assert not plain, f"{text!r} was refused"
        return
    assert plain, f"{text!r} was read as version {int(number)}"
    assert str(number) == text


# digests and the store paths built from them ----------------------------------------------------
HEX = "0123456789abcdef"
digests = (
    st.text(alphabet=st.sampled_from([*HEX]), min_size=64, max_size=64).map("sha256:".__add__)
    | st.text(
        alphabet=st.sampled_from([*HEX, *"ABCDEF", "/", ".", ":", "\n", "g"]),
        min_size=62,
        max_size=66,
    ).map(lambda s: "sha256:" + s)
    | st.text(max_size=80)
)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store").resolve()


@PROPERTY
@given(value=digests)
def test_digest_is_sha256_hex_and_stays_in_the_store(store_root: Path, value: str) -> None:
    valid = re.fullmatch(r"sha256:[0-9a-f]{64}", value) is not None
    try:
        digest = Digest(value)
    except ValidationFailed:
        assert not valid
        return
    assert valid and digest.hex == value[7:] and len(digest.hex) == 64
    path = confined(store_root, ArtifactStore._relative(digest))
    assert path.parent.parent.parent == store_root / "blobs"
    assert path.name == digest.hex[2:] and path.parent.name == digest.hex[:2]


# NUL and lone surrogates are left out here: test_03_path_traversal checks them explicitly
relatives = joined([*"ab", "/", "..", ".", "~", "\\", "%2e", " ", "é"], max_size=30) | st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20
)


@PROPERTY
@given(relative=relatives)
def test_confined_returns_a_path_inside_or_refuses(store_root: Path, relative: str) -> None:
    try:
        path = confined(store_root, relative)
    except ValidationFailed:
        return
    assert path == store_root or store_root in path.parents
