"""What a Hugging Face model folder may hold: an allow-list of member types, each checked by
its content (a name proves nothing: a `model.safetensors` can be a pickle, a `vocab.txt` an
executable). Code, environment files and anything unrecognised are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from modelworks.errors import ModelworksError, ValidationFailed
from modelworks.registry import strict_json
from modelworks.registry.safetensors_check import check_safetensors

# tokenizer.json of 256k-token vocabularies is ~35 MB; text members are far smaller
MAX_TEXT_BYTES = 64 * 1024**2
ACCEPTED_MEMBERS = [
    "JSON files (config.json, tokenizer.json, tokenizer_config.json, 1_Pooling/config.json, …)",
    "*.safetensors",
    "vocab.txt",
    "merges.txt",
    "SentencePiece *.model",
    "*.onnx",
    "*.md and LICENSE text",
]
TEXT_NAMES = {"vocab.txt", "merges.txt"}
# config keys that make transformers import code from the model (trust_remote_code)
REMOTE_CODE_KEYS = {"auto_map", "trust_remote_code", "custom_pipelines"}
LICENSE_STEMS = {"LICENSE", "LICENCE", "NOTICE", "COPYING"}
# first bytes of formats that are never a valid member; used to say what a bad member is
SIGNATURES = [
    (b"PK\x03\x04", "a zip archive"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy array"),
    (b"#!", "a script"),
]
KIND_NAMES = {
    "json": "JSON",
    "text": "UTF-8 text",
    "sentencepiece": "SentencePiece",
    "safetensors": "safetensors",
    "onnx": "ONNX",
}


def _shown(name: str) -> str:
    return name if len(name) <= 80 else f"{name[:40]}…"


def member_kind(name: str) -> str | None:
    """The type a member's name claims (its content is checked after); None: not accepted."""
    parts = name.split("/")
    if any(part.startswith(".") for part in parts):  # .git/, .gitattributes, macOS ._ files
        return None
    path = PurePosixPath(parts[-1])
    suffix = path.suffix.lower()
    kinds = {".json": "json", ".safetensors": "safetensors", ".onnx": "onnx"}
    if suffix in kinds:
        return kinds[suffix]
    if suffix == ".model":
        return "sentencepiece"
    if path.name in TEXT_NAMES or suffix == ".md":
        return "text"
    if path.stem.upper() in LICENSE_STEMS and suffix in ("", ".txt", ".md"):
        return "text"
    return None


def _read_capped(path: Path, shown: str) -> bytes:
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise ValidationFailed(
            f"member {shown!r} is larger than {MAX_TEXT_BYTES} bytes; configs and tokenizer "
            "files are far smaller: check that it is the right file",
            details={"member": shown, "limit": MAX_TEXT_BYTES},
        )
    return path.read_bytes()


def _not_kind(shown: str, kind: str, problem: str) -> ValidationFailed:
    return ValidationFailed(
        f"member {shown!r} is not {KIND_NAMES[kind]}: {problem}; replace or remove it",
        details={"member": shown},
    )


def _check_json(path: Path, shown: str, _limit: int) -> None:
    try:
        value = strict_json.loads(_read_capped(path, shown).decode("utf-8"))
    except strict_json.Refused as refused:  # what the Rust tokenizers loader would refuse
        raise _not_kind(shown, "json", f"it {refused.reason}") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _not_kind(shown, "json", "it does not parse as UTF-8 JSON") from None
    if "config" in PurePosixPath(shown).name.lower():
        _check_no_remote_code(value, shown)


def _check_no_remote_code(value: object, shown: str) -> None:
    """transformers imports Python named by these keys of a config (trust_remote_code): a
    folder is data, so a config that asks for code is refused, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found = REMOTE_CODE_KEYS.intersection(item)
            if found:
                key = sorted(found)[0]
                raise ValidationFailed(
                    f"member {shown!r} sets {key!r}, which asks transformers to run code "
                    f"shipped with the model; remove {key!r} from it: only built-in "
                    "architectures are served",
                    details={"member": shown, "key": key},
                )
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_text(path: Path, shown: str, _limit: int) -> None:
    data = _read_capped(path, shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_kind(shown, "text", "it is not valid UTF-8") from None
    if "\x00" in text:
        raise _not_kind(shown, "text", "it holds NUL bytes (a binary file)")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def _check_sentencepiece(path: Path, shown: str, _limit: int) -> None:
    """A SentencePiece ModelProto: only length-delimited fields 1-5, at least one piece."""
    data = _read_capped(path, shown)
    pos = pieces = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            if key & 7 != 2 or not 1 <= key >> 3 <= 5:
                raise ValueError("unexpected field")
            length, pos = _varint(data, pos)
            pos += length
            if pos > len(data):
                raise ValueError("field past the end")
            pieces += key >> 3 == 1
    except ValueError:
        raise _not_kind(shown, "sentencepiece", "it is not a SentencePiece model") from None
    if not pieces:
        raise _not_kind(shown, "sentencepiece", "it holds no vocabulary pieces")


def _check_safetensors(path: Path, shown: str, _limit: int) -> None:
    check_safetensors(path, shown)


def _check_onnx(path: Path, shown: str, limit: int) -> None:
    from modelworks.registry.formats import inspect_onnx

    try:
        inspect_onnx(path, max_tensor_elements=limit)
    except ModelworksError as exc:
        raise ValidationFailed(
            f"member {shown!r}: {exc.message}", details={"member": shown}
        ) from None


CHECKS: dict[str, Callable[[Path, str, int], None]] = {
    "json": _check_json,
    "text": _check_text,
    "sentencepiece": _check_sentencepiece,
    "safetensors": _check_safetensors,
    "onnx": _check_onnx,
}


def _looks_like(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle (loading it runs code)"
    return next((what for magic, what in SIGNATURES if head.startswith(magic)), None)


def _check_member(path: Path, name: str, kind: str, max_tensor_elements: int) -> None:
    shown = _shown(name)
    try:
        CHECKS[kind](path, shown, max_tensor_elements)
    except ValidationFailed:
        what = _looks_like(path)
        if what is None:
            raise
        raise _not_kind(shown, kind, f"it is {what}") from None


def check_members(root: Path, names: list[str], max_tensor_elements: int) -> None:
    """Every member of the folder at `root` is of an accepted type and is what its name says."""
    kinds = {name: member_kind(name) for name in names}
    refused = [name for name, kind in kinds.items() if kind is None]
    if refused:
        shown = ", ".join(repr(_shown(n)) for n in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise ValidationFailed(
            f"the model folder holds files that are not model data: {shown}{more}. Code, "
            "environment files and unknown types are refused; remove them from the folder. "
            f"Accepted: {'; '.join(ACCEPTED_MEMBERS)}",
            details={"members": [_shown(n) for n in refused[:20]], "accepted": ACCEPTED_MEMBERS},
        )
    for name, kind in kinds.items():
        if kind is not None:
            _check_member(root.joinpath(*name.split("/")), name, kind, max_tensor_elements)
