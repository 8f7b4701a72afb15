"""Security tests of archive extraction (SECURITY.md class 4, and class 3 for member names).

Every archive is crafted here; each rejection checks the error class, that the message names
the problem, that `dest` is gone and that nothing was written outside it.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelworks.archives import (
    ARCHIVE_KINDS,
    CHUNK,
    Limits,
    SafeRelPath,
    archive_kind,
    extract_archive,
)
from modelworks.errors import (
    InternalError,
    ModelworksError,
    PayloadTooLarge,
    UnsupportedFormat,
    ValidationFailed,
)

MODEL_FILES = {
    "config.json": b'{"hidden_size": 8}',
    "model.onnx": bytes(range(256)) * 40,
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "tokenizer/vocab/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
}
TAR_MODES = ["w", "w:gz", "w:bz2", "w:xz"]
Members = Iterable[tuple[Any, bytes]]  # (name or ZipInfo/TarInfo, data)


Builder = Callable[[Path, Members], Path]


# builders -----------------------------------------------------------------------------------
def build_zip(
    path: Path,
    members: Members,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def build_tar(path: Path, members: Members, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for name, data in members:
            info = name if isinstance(name, tarfile.TarInfo) else tarfile.TarInfo(name)
            if info.isreg():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def outside(root: Path, dest: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p != dest and dest not in p.parents}


def assert_rejected(
    archive: Path,
    dest: Path,
    error: type[ModelworksError],
    *words: str,
    limits: Limits = Limits(),
) -> str:
    root = dest.parent
    before = outside(root, dest)
    with pytest.raises(error) as info:
        extract_archive(archive, dest, limits)
    message = info.value.message
    assert type(info.value) is error
    for word in words:
        assert word.lower() in message.lower(), message
    assert not dest.exists(), "a half-extracted folder was left behind"
    assert outside(root, dest) == before, "a file was written outside dest"
    assert str(root) not in message and str(archive) not in message
    return message


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "dest"


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# round trips --------------------------------------------------------------------------------
def test_zip_round_trip(tmp_path: Path, dest: Path) -> None:
    executable = zipfile.ZipInfo("model.onnx")
    executable.external_attr = 0o100755 << 16  # mode bits from the archive are not kept
    members: list[tuple[str | zipfile.ZipInfo, bytes]] = [
        ("1_Pooling/", b""),
        *((n, d) for n, d in MODEL_FILES.items() if n != "model.onnx"),
        (executable, MODEL_FILES["model.onnx"]),
    ]
    archive = build_zip(tmp_path / "upload.zip", members)

    names = extract_archive(archive, dest)

    assert names == sorted(MODEL_FILES)
    assert read_tree(dest) == MODEL_FILES
    assert not os.stat(dest / "model.onnx").st_mode & 0o111


@pytest.mark.parametrize("mode", TAR_MODES)
def test_tar_round_trip(tmp_path: Path, dest: Path, mode: str) -> None:
    folder = tar_entry("tokenizer", tarfile.DIRTYPE)
    archive = build_tar(tmp_path / "upload.tar", [folder, *MODEL_FILES.items()], mode)

    assert archive_kind(archive) == "tar"
    assert extract_archive(archive, dest) == sorted(MODEL_FILES)
    assert read_tree(dest) == MODEL_FILES


def test_tar_of_dot_folder_is_accepted(tmp_path: Path, dest: Path) -> None:
    # what `tar -czf model.tgz -C folder .` writes
    members = [tar_entry(".", tarfile.DIRTYPE), *((f"./{n}", d) for n, d in MODEL_FILES.items())]
    archive = build_tar(tmp_path / "upload.tgz", members)

    assert extract_archive(archive, dest) == sorted(MODEL_FILES)
    assert read_tree(dest) == MODEL_FILES


def test_existing_empty_dest_is_used(tmp_path: Path, dest: Path) -> None:
    dest.mkdir()
    archive = build_zip(tmp_path / "upload.zip", [("a.json", b"{}")])
    assert extract_archive(archive, dest) == ["a.json"]


def test_non_empty_dest_is_refused_and_left_alone(tmp_path: Path, dest: Path) -> None:
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    archive = build_zip(tmp_path / "upload.zip", [("a.json", b"{}")])

    with pytest.raises(InternalError, match="new or empty"):
        extract_archive(archive, dest)

    assert read_tree(dest) == {"keep.txt": b"mine"}


def test_archive_kind(tmp_path: Path) -> None:
    zipped = build_zip(tmp_path / "a.zip", [("x", b"1")])
    tarred = build_tar(tmp_path / "a.tar.xz", [("x", b"1")], "w:xz")
    text = tmp_path / "notes.txt"
    text.write_text("just text, not an archive\n" * 40)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(random.Random(0).randbytes(4096))
    gzipped = tmp_path / "plain.gz"
    gzipped.write_bytes(gzip.compress(b"a gzip file that holds no tar\n" * 40))

    assert ARCHIVE_KINDS == ("zip", "tar")
    assert archive_kind(zipped) == "zip"
    assert archive_kind(tarred) == "tar"
    assert [archive_kind(p) for p in (text, empty, noise, gzipped)] == [None] * 4


# names: zip-slip and friends -----------------------------------------------------------------
EVIL_ABSOLUTE = f"/tmp/modelworks-evil-{uuid.uuid4().hex}"
EVIL_NAMES = [
    ("../evil.txt", "'..'"),
    ("a/../../evil.txt", "'..'"),
    (EVIL_ABSOLUTE, "absolute"),
    ("..\\evil.txt", "backslash"),
    ("C:/evil.txt", "drive letter"),
    ("a//evil.txt", "empty component"),
    ("a/./evil.txt", "'.'"),
    ("a/evil\n.txt", "control character"),
]


@pytest.mark.parametrize("build", [build_zip, build_tar], ids=["zip", "tar"])
@pytest.mark.parametrize(("name", "problem"), EVIL_NAMES, ids=[n for n, _ in EVIL_NAMES])
def test_unsafe_member_names_are_refused(
    tmp_path: Path, dest: Path, build: Builder, name: str, problem: str
) -> None:
    archive = build(tmp_path / "upload.bin", [("ok.json", b"{}"), (name, b"pwned")])

    message = assert_rejected(archive, dest, ValidationFailed, problem)

    assert repr(name) in message
    assert not (tmp_path / "evil.txt").exists()
    assert not Path(EVIL_ABSOLUTE).exists()


def test_zip_name_with_nul_byte_is_refused(tmp_path: Path, dest: Path) -> None:
    # zipfile cuts names at NUL when writing, so the bytes are patched afterwards
    data = build_zip(tmp_path / "ok.zip", [("evilX.txt", b"x")]).read_bytes()
    archive = tmp_path / "upload.zip"
    archive.write_bytes(data.replace(b"evilX.txt", b"evil\x00.txt"))

    message = assert_rejected(archive, dest, ValidationFailed, "NUL")

    assert "evil\\x00.txt" in message


def test_long_names_are_refused_and_truncated_in_messages() -> None:
    assert SafeRelPath("é" * 127 + "a")  # 255 bytes
    with pytest.raises(ValidationFailed, match="longer than 255 bytes"):
        SafeRelPath("é" * 128)
    with pytest.raises(ValidationFailed, match="longer than 1024 bytes") as info:
        SafeRelPath("/".join(["a" * 200] * 6))
    assert "…" in info.value.message
    assert len(info.value.message) < 300


# entry types --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (tar_entry("passwd", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (tar_entry("up", tarfile.SYMTYPE, ".."), "symbolic link"),
        (tar_entry("passwd", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (tar_entry("config-copy.json", tarfile.LNKTYPE, "config.json"), "hard link"),
        (tar_entry("pipe", tarfile.FIFOTYPE), "FIFO"),
        (tar_entry("null", tarfile.CHRTYPE), "device"),
        (tar_entry("disk", tarfile.BLKTYPE), "device"),
    ],
    ids=["symlink-etc", "symlink-up", "hardlink-etc", "hardlink-inner", "fifo", "chr", "blk"],
)
def test_tar_links_and_devices_are_refused(
    tmp_path: Path, dest: Path, entry: tuple[tarfile.TarInfo, bytes], problem: str
) -> None:
    members = [("config.json", b"{}"), entry, ("up/evil.txt", b"through the link")]
    archive = build_tar(tmp_path / "upload.tgz", members)

    message = assert_rejected(archive, dest, ValidationFailed, problem)

    assert repr(entry[0].name) in message
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_entry_is_refused(tmp_path: Path, dest: Path) -> None:
    link = zipfile.ZipInfo("weights.safetensors")
    link.external_attr = 0o120777 << 16
    archive = build_zip(tmp_path / "upload.zip", [("config.json", b"{}"), (link, b"/etc/passwd")])

    message = assert_rejected(archive, dest, ValidationFailed, "symbolic link")

    assert "'weights.safetensors'" in message


def test_zip_duplicate_names_are_refused(tmp_path: Path, dest: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = build_zip(tmp_path / "upload.zip", [("model.onnx", b"a"), ("model.onnx", b"b")])

    assert_rejected(archive, dest, ValidationFailed, "collides", "'model.onnx'")


@pytest.mark.parametrize(
    "names",
    [["model.onnx", "model.onnx"], ["./model.onnx", "model.onnx"], ["a", "a/b"], ["a/b", "a"]],
    ids=["duplicate", "dot-duplicate", "file-then-folder", "folder-then-file"],
)
def test_tar_colliding_names_are_refused(tmp_path: Path, dest: Path, names: list[str]) -> None:
    archive = build_tar(tmp_path / "upload.tgz", [(n, b"x") for n in names])

    assert_rejected(archive, dest, ValidationFailed, "collides")


# limits -------------------------------------------------------------------------------------
def test_entry_count_limit(tmp_path: Path, dest: Path) -> None:
    limits = Limits(max_entries=10)
    ten = build_zip(tmp_path / "ten.zip", [(f"f{i}.json", b"{}") for i in range(10)])
    eleven = build_zip(tmp_path / "eleven.zip", [(f"f{i}.json", b"{}") for i in range(11)])

    assert len(extract_archive(ten, tmp_path / "ok", limits)) == 10
    assert_rejected(eleven, dest, PayloadTooLarge, "more than 10 entries", limits=limits)


@pytest.mark.parametrize("build", [build_zip, build_tar], ids=["zip", "tar"])
def test_total_size_limit(tmp_path: Path, dest: Path, build: Builder) -> None:
    limits = Limits(max_total_bytes=1000)
    fits = build(tmp_path / "fits.bin", [("a.bin", b"x" * 600), ("b.bin", b"y" * 400)])
    too_big = build(tmp_path / "big.bin", [("model.onnx", os.urandom(2000))])

    assert extract_archive(fits, tmp_path / "ok", limits) == ["a.bin", "b.bin"]
    assert_rejected(too_big, dest, PayloadTooLarge, "more than 1000 bytes", limits=limits)


def test_total_is_counted_while_streaming(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each member is under the cap; the running total is not, and the third is never read
    members = [(f"{c}.bin", c.encode() * 600) for c in "abc"]
    archive = build_tar(tmp_path / "upload.tgz", members)
    opened: list[str] = []
    original = tarfile.TarFile.extractfile

    def recording(self: tarfile.TarFile, member: str | tarfile.TarInfo) -> object:
        opened.append(member if isinstance(member, str) else member.name)
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", recording)

    limits = Limits(max_total_bytes=1000)
    assert_rejected(archive, dest, PayloadTooLarge, "more than 1000 bytes", limits=limits)
    assert opened == ["a.bin", "b.bin"]


def test_zip_bomb_stops_on_ratio_while_streaming(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 20 * 1024 * 1024
    archive = build_zip(tmp_path / "bomb.zip", [("config.json", b"{}"), ("zeros.bin", bytes(size))])
    consumed = 0
    original = zipfile.ZipExtFile.read

    def counting(self: zipfile.ZipExtFile, n: int | None = -1) -> bytes:
        nonlocal consumed
        data = original(self, n)
        consumed += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)

    assert_rejected(archive, dest, PayloadTooLarge, "compression ratio")
    cap = 200 * archive.stat().st_size
    assert cap < size // 2  # the bomb really is one under the default limit
    assert consumed <= cap + CHUNK  # stopped within one chunk of the limit, not at 20 MB


def test_tar_gz_bomb_stops_on_ratio(tmp_path: Path, dest: Path) -> None:
    archive = build_tar(tmp_path / "bomb.tgz", [("zeros.bin", bytes(20 * 1024 * 1024))])

    assert_rejected(archive, dest, PayloadTooLarge, "compression ratio")


def test_small_compressible_archive_is_within_the_ratio_grace(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "upload.zip", [("bias.bin", bytes(256 * 1024))])
    assert 200 * archive.stat().st_size < 256 * 1024

    assert extract_archive(archive, dest) == ["bias.bin"]


def _patch_u32(data: bytearray, offset: int, value: int) -> None:
    data[offset : offset + 4] = value.to_bytes(4, "little")


def test_zip_lying_about_its_size_is_not_trusted(tmp_path: Path, dest: Path) -> None:
    # local header and central directory both claim 10 bytes; the stream inflates to 5000
    data = bytearray(build_zip(tmp_path / "ok.zip", [("model.onnx", b"w" * 5000)]).read_bytes())
    central = data.index(b"PK\x01\x02")
    _patch_u32(data, 22, 10)
    _patch_u32(data, central + 24, 10)
    archive = tmp_path / "upload.zip"
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).getinfo("model.onnx").file_size == 10

    assert_rejected(archive, dest, UnsupportedFormat, "not a readable", "'model.onnx'")


def test_encrypted_zip_member_is_refused(tmp_path: Path, dest: Path) -> None:
    data = bytearray(build_zip(tmp_path / "ok.zip", [("secret.bin", b"s" * 100)]).read_bytes())
    central = data.index(b"PK\x01\x02")
    data[6] |= 0x1  # general purpose flag bit 0: encrypted
    data[central + 8] |= 0x1
    archive = tmp_path / "upload.zip"
    archive.write_bytes(bytes(data))

    assert_rejected(archive, dest, UnsupportedFormat, "encrypted", "'secret.bin'")


# unreadable input ---------------------------------------------------------------------------
def _truncated_zip(tmp_path: Path) -> bytes:
    data = build_zip(tmp_path / "whole.zip", [("a.bin", os.urandom(4096))]).read_bytes()
    return data[: len(data) // 2]


def _truncated_tar_gz(tmp_path: Path) -> bytes:
    members = [("config.json", b"{}"), ("model.onnx", os.urandom(256 * 1024))]
    data = build_tar(tmp_path / "whole.tgz", members).read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make",
    [
        _truncated_zip,
        _truncated_tar_gz,
        lambda _: b"PK\x03\x04" + b"\xff" * 200,
        lambda _: b"this is a model card, not an archive\n",
        lambda _: gzip.compress(b"not a tar inside\n" * 100),
        lambda _: b"",
    ],
    ids=["truncated-zip", "truncated-tar-gz", "zip-magic-junk", "text", "plain-gzip", "empty"],
)
def test_unreadable_archives(tmp_path: Path, dest: Path, make: Callable[[Path], bytes]) -> None:
    archive = tmp_path / "upload.bin"
    archive.write_bytes(make(tmp_path))

    assert_rejected(archive, dest, UnsupportedFormat, "not a readable zip or tar archive")


# properties of SafeRelPath ------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("base").resolve()


_component = st.from_regex(r"[a-z0-9_.-]{1,20}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
valid_names = st.lists(_component, min_size=1, max_size=8).map("/".join)
tricky = st.text(
    alphabet=st.sampled_from(["a", "B", ".", "/", "\\", ":", "C", "\x00", "\n", " ", "é", "~"]),
    max_size=30,
)


@settings(deadline=None)
@given(value=valid_names)
def test_valid_names_are_accepted(value: str) -> None:
    assert SafeRelPath(value) == value


@settings(deadline=None, max_examples=300)
@given(value=tricky | st.text(max_size=40) | valid_names)
def test_accepted_names_stay_inside(base: Path, value: str) -> None:
    try:
        safe = SafeRelPath(value)
    except ValidationFailed:
        return
    assert ".." not in safe.split("/")
    assert not safe.startswith("/") and not os.path.isabs(safe)
    assert "\\" not in safe
    resolved = (base / safe).resolve()
    assert resolved != base and resolved.is_relative_to(base)


def test_members_written_are_plain_files(tmp_path: Path, dest: Path) -> None:
    archive = build_tar(tmp_path / "upload.tgz", MODEL_FILES.items())
    extract_archive(archive, dest)

    for path in dest.rglob("*"):
        mode = os.lstat(path).st_mode
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode)
