"""Safe extraction of uploaded model folders packed as zip or tar (plain, gz, bz2, xz).

Only regular files are written; every name is checked, and entries, bytes and the compression
ratio are counted while streaming, so zip-slip, links, devices and bombs stop with an error.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from modelworks.errors import InternalError, PayloadTooLarge, UnsupportedFormat, ValidationFailed
from modelworks.store import disk_space

ARCHIVE_KINDS = ("zip", "tar")
CHUNK = 1024 * 1024
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 1024

# local file header, or the end record alone (an empty zip)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE = re.compile(r"[A-Za-z]:")
# the archive's mode bits are ignored: no executable, setuid or world-writable files
_FILE_MODE = 0o644
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# what the stdlib readers raise on damaged input (bz2 and gzip raise OSError subclasses)
_UNREADABLE = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    ValueError,
)
_MEMBER_RULE = "members must be relative paths such as 'tokenizer/vocab.json'"


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else f"{text[:40]}…"


def _path_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "not a string"
    if not value:
        return "the name is empty"
    if any(unicodedata.category(c) == "Cs" for c in value):
        return "the name is not valid UTF-8"
    if "\\" in value:
        return "it contains a backslash; use '/' between folders"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "it contains a NUL or control character"
    if value.startswith("/"):
        return "it is an absolute path"
    if _DRIVE.match(value):
        return "it starts with a drive letter"
    if ":" in value:  # drive-relative names and NTFS streams; model folders never need it
        return "it contains ':'"
    if len(value.encode()) > MAX_PATH_BYTES:
        return f"it is longer than {MAX_PATH_BYTES} bytes"
    for part in value.split("/"):
        if not part:
            return "it has an empty component ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"it has a {part!r} component"
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            return f"it has a component longer than {MAX_COMPONENT_BYTES} bytes"
    return None


class SafeRelPath(str):
    """A relative POSIX path that stays inside whatever folder it is joined to."""

    __slots__ = ()

    def __new__(cls, value: str) -> SafeRelPath:
        problem = _path_problem(value)
        if problem is not None:
            shown = _shown(value)
            raise ValidationFailed(
                f"invalid member name {shown!r}: {problem}; {_MEMBER_RULE}",
                details={"member": shown},
            )
        return super().__new__(cls, value)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.split("/"))


@dataclass(frozen=True)
class Limits:
    max_entries: int = 2000
    max_total_bytes: int = 8 * 1024**3
    # uncompressed bytes / archive size; enforced only past `ratio_grace_bytes`, so a small
    # archive holding a very compressible file (a JSON config, a zero tensor) still passes
    max_ratio: float = 200.0
    ratio_grace_bytes: int = 1024**2


def archive_kind(path: Path) -> str | None:
    """'zip' or 'tar' (plain or compressed), judged by content; None for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in _ZIP_MAGIC:
        return "zip"
    try:
        if not tarfile.is_tarfile(path):
            return None
        # a block of zeros reads as an empty tar: only an archive with a member counts
        with tarfile.open(path) as tf:
            return "tar" if tf.next() is not None else None
    except _UNREADABLE:
        return None


class _Budget:
    """Counts entries and bytes actually produced; declared sizes are never consulted."""

    def __init__(self, limits: Limits, archive_size: int) -> None:
        self.limits = limits
        self.entries = 0
        self.total = 0
        self.ratio_cap = max(limits.max_ratio * archive_size, limits.ratio_grace_bytes)

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise PayloadTooLarge(
                f"the archive has more than {self.limits.max_entries} entries; "
                "pack fewer files (e.g. leave out checkpoints and caches)",
                details={"limit": self.limits.max_entries},
            )

    def take(self, size: int) -> None:
        """Account for `size` more bytes before they are written."""
        self.total += size
        if self.total > self.limits.max_total_bytes:
            raise PayloadTooLarge(
                f"the archive expands to more than {self.limits.max_total_bytes} bytes; leave "
                "out what the model does not need (checkpoints, caches) or ask the operator to "
                "raise MODELWORKS_MAX_EXTRACT_BYTES",
                details={"limit": self.limits.max_total_bytes},
            )
        if self.total > self.ratio_cap:
            raise PayloadTooLarge(
                f"the archive expands to more than {self.limits.max_ratio:g} times its own "
                "size (compression ratio limit; is it a zip bomb?)",
                details={"limit": self.limits.max_ratio},
            )


@contextlib.contextmanager
def _reading(member: str | None = None) -> Iterator[None]:
    """Turn a reader's failure into a 415 whose message holds no server path."""
    try:
        yield
    except _UNREADABLE as exc:
        where = "" if member is None else f" (member {_shown(member)!r} is damaged)"
        raise UnsupportedFormat(
            f"the upload is not a readable zip or tar archive{where}; "
            "re-create it with `zip -r` or `tar -czf`"
        ) from exc


def _member_name(raw: str, is_dir: bool) -> SafeRelPath | None:
    """The checked name, or None for the archive's own root folder ('./')."""
    name = raw
    while name.startswith("./"):  # `tar -C folder .` writes './config.json'
        name = name[2:]
    if is_dir:
        name = name.removesuffix("/")
        if name in ("", "."):
            return None
    return SafeRelPath(name)


def _refuse_type(name: str, what: str) -> ValidationFailed:
    return ValidationFailed(
        f"archive member {_shown(name)!r} is {what}; only regular files and folders are "
        "accepted (pack the files themselves, e.g. `tar --dereference` or `zip` without -y)",
        details={"member": _shown(name)},
    )


def _collision(name: str) -> ValidationFailed:
    return ValidationFailed(
        f"archive member {_shown(name)!r} collides with another member of the same name "
        "(a file and a folder, or a duplicate)",
        details={"member": _shown(name)},
    )


def _create(target: Path, name: SafeRelPath) -> IO[bytes]:
    """A new regular file at `target`, never through a link, with fixed permissions."""
    try:
        fd = os.open(target, _CREATE, _FILE_MODE)
    except FileExistsError:
        raise _collision(name) from None
    return os.fdopen(fd, "wb")


def _write(root: Path, name: SafeRelPath, src: IO[bytes], budget: _Budget) -> None:
    target = root.joinpath(*name.parts)
    if not target.resolve().is_relative_to(root):
        raise ValidationFailed(f"archive member {_shown(name)!r} leaves the extraction folder")
    folder = root
    for part in name.parts[:-1]:
        folder = folder / part
        try:
            os.mkdir(folder, 0o755)
        except FileExistsError:
            # lstat, not stat: a symlink in the way must not be followed
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise _collision(name) from None
    with _create(target, name) as out:
        while True:
            with _reading(name):
                chunk = src.read(CHUNK)
            if not chunk:
                break
            budget.take(len(chunk))
            out.write(chunk)


def _open_zip(path: Path) -> zipfile.ZipFile:
    with _reading():
        return zipfile.ZipFile(path)


def _extract_zip(path: Path, root: Path, budget: _Budget) -> list[str]:
    written: set[str] = set()
    with _open_zip(path) as archive:
        for info in archive.infolist():
            budget.entry()
            # orig_filename keeps what zipfile cuts at a NUL byte
            raw = info.orig_filename
            mode = info.external_attr >> 16
            fmt = stat.S_IFMT(mode)
            is_dir = raw.endswith("/") or stat.S_ISDIR(mode)
            name = _member_name(raw, is_dir)
            if fmt == stat.S_IFLNK:
                raise _refuse_type(raw, "a symbolic link")
            if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse_type(raw, "a device, FIFO or socket")
            if name is None or is_dir:
                continue
            if info.flag_bits & 0x1:
                raise UnsupportedFormat(
                    f"archive member {_shown(raw)!r} is encrypted; upload an unencrypted archive"
                )
            if name in written:
                raise _collision(name)
            written.add(name)
            with _reading(name):
                src = archive.open(info)
            with src:
                _write(root, name, src, budget)
    return sorted(written)


def _tar_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    members = iter(archive)
    while True:
        with _reading():
            member = next(members, None)
        if member is None:
            return
        yield member


def _tar_type(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    return "an unsupported entry type"


def _open_tar(path: Path) -> tarfile.TarFile:
    with _reading():
        return tarfile.open(path, mode="r:*")


def _extract_tar(path: Path, root: Path, budget: _Budget) -> list[str]:
    written: set[str] = set()
    with _open_tar(path) as archive:
        for member in _tar_members(archive):
            budget.entry()
            name = _member_name(member.name, member.isdir())
            if member.isdir() or name is None:
                continue
            if not member.isreg():
                raise _refuse_type(member.name, _tar_type(member))
            if name in written:
                raise _collision(name)
            written.add(name)
            with _reading(name):
                src = archive.extractfile(member)
            if src is None:  # isreg() members always have data; keep mypy and readers honest
                raise _refuse_type(member.name, _tar_type(member))
            with src:
                _write(root, name, src, budget)
    return sorted(written)


def _claim(dest: Path) -> None:
    """Create `dest`, or accept it if it is an empty real folder; touch nothing else."""
    try:
        os.mkdir(dest, 0o755)
        return
    except FileExistsError:
        pass
    if not stat.S_ISDIR(os.lstat(dest).st_mode) or any(dest.iterdir()):
        raise InternalError("the extraction folder must be new or empty")


def extract_archive(path: Path, dest: Path, limits: Limits = Limits()) -> list[str]:
    """Extract the zip or tar at `path` into the new or empty folder `dest`.

    Returns the sorted names of the files written. On any error `dest` is removed before the
    error propagates, so a half-extracted folder never remains.
    """
    with disk_space():  # a full disk is a 507 that says so, not a 500
        _claim(dest)
        try:
            root = dest.resolve(strict=True)
            kind = archive_kind(path)
            budget = _Budget(limits, os.stat(path).st_size)
            if kind == "zip":
                return _extract_zip(path, root, budget)
            if kind == "tar":
                return _extract_tar(path, root, budget)
            raise UnsupportedFormat(
                "the upload is not a readable zip or tar archive; "
                "pack the model folder with `zip -r` or `tar -czf`"
            )
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
