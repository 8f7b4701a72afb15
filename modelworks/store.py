"""Content-addressed artifact store: blobs are named by their sha256, never by a client.

Uploads stream into a temporary file inside the store, are hashed while written, capped in
size, fsynced and renamed into place; only then may a database row point at them. The local
folder is the default; any fsspec URL (s3://, gs://, memory://, ...) works through fsspec.

Temporary names carry the writing process's identity (`temp_prefix`), so a start removes
what a crashed process left behind without touching a live replica's uploads.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from modelworks.crypto import ArtifactCipher
from modelworks.errors import (
    CorruptArtifact,
    InsufficientStorage,
    InternalError,
    PayloadTooLarge,
    ValidationFailed,
)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
CHUNK = 1024 * 1024
DISK_FULL = (
    "the server's disk is full; free space under MODELWORKS_HOME (or the artifact store) "
    "or ask an operator, then retry"
)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# `<kind>-<host>.<pid>.<start>-<random>`: see `temp_prefix`
_TEMP_NAME = re.compile(r"[a-z]+-(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]+)\.(?P<start>[0-9]+)-")


@contextlib.contextmanager
def disk_space() -> Iterator[None]:
    """A full disk (or quota) becomes a 507 that says so, instead of a 500 or a misleading
    4xx from whatever was writing."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS:
            raise InsufficientStorage(DISK_FULL) from None
        raise


def _process_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, from /proc), "0" where the system has no
    /proc, None when no such process runs. With the pid, it names one process: a pid reused
    by a later process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it exists, under another user
        return "0"
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count after the last ')'
    return stat[stat.rindex(")") + 2 :].split()[19]


@functools.cache
def _host_token() -> str:
    """Names this pid namespace on this boot: pids are only comparable inside it (replicas
    in containers on one machine share the boot id but not their pids)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


_owners: dict[int, str] = {}


def temp_prefix(kind: str) -> str:
    """`<kind>-<host>.<pid>.<start>-`: the start of a temporary name this process owns.

    `ArtifactStore.clean_scratch` removes such an entry once its process is gone."""
    pid = os.getpid()  # per pid: a forked child is another owner
    if pid not in _owners:
        _owners[pid] = f"{_host_token()}.{pid}.{_process_start(pid) or 0}"
    return f"{kind}-{_owners[pid]}-"


def _owner_gone(name: str) -> bool | None:
    """True when the temporary entry `name` belongs to a dead process of this host, False
    when its process lives, None when that cannot be told here (another host, an old name)."""
    m = _TEMP_NAME.match(name)
    if m is None or m["host"] != _host_token():
        return None
    return _process_start(int(m["pid"])) != m["start"]


def _newest_mtime(path: Path) -> float:
    """The last write under `path`: a folder being filled is as young as its newest file."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, sub.lstat().st_mtime)
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Digest(str):
    """`sha256:<64 lowercase hex>`."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if not _DIGEST.fullmatch(value):
            raise ValidationFailed(f"invalid digest {value[:80]!r}: expected 'sha256:<64 hex>'")
        return super().__new__(cls, value)

    @property
    def hex(self) -> str:
        return self[7:]


@dataclass(frozen=True)
class Blob:
    digest: Digest
    size: int


def confined(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`; refuse anything that leaves it or passes a symlink."""
    root = root.resolve()
    candidate = root / relative
    try:
        resolved = candidate.resolve()
    except (ValueError, UnicodeError, OSError):  # NUL bytes, lone surrogates, loops
        raise ValidationFailed("invalid path") from None
    if resolved != root and root not in resolved.parents:
        raise ValidationFailed("path leaves the artifact store")
    probe = root
    for part in candidate.relative_to(root).parts:
        probe = probe / part
        if probe.is_symlink():
            raise ValidationFailed("path passes through a symbolic link")
    return resolved


class Upload:
    """A blob being written. Use as a context manager: anything but `commit()` discards it."""

    def __init__(self, store: ArtifactStore, max_bytes: int) -> None:
        self._store = store
        self.max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0
        self.path = store.scratch / f"{temp_prefix('upload')}{secrets.token_hex(12)}.part"
        with disk_space():
            self._fh: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes | memoryview) -> None:
        assert self._fh is not None, "upload already finished"
        self.size += len(data)
        if self.size > self.max_bytes:
            self.abort()
            raise PayloadTooLarge(
                f"upload exceeds the limit of {self.max_bytes} bytes "
                "(raise MODELWORKS_MAX_UPLOAD_BYTES on the server to accept larger files)",
                details={"limit": self.max_bytes},
            )
        self._hash.update(data)
        try:
            with disk_space():
                self._fh.write(data)
        except InsufficientStorage:
            self.abort()  # give the space back at once
            raise

    def sync(self) -> None:
        """Flush and fsync the bytes written so far (blocking; run it off the event loop)."""
        assert self._fh is not None
        with disk_space():
            self._fh.flush()
            os.fsync(self._fh.fileno())

    @property
    def digest(self) -> Digest:
        return Digest("sha256:" + self._hash.hexdigest())

    def commit(self) -> Blob:
        """Make the blob durable and visible under its digest (blocking)."""
        if self._fh is None:
            raise InternalError("upload already finished")
        self.sync()
        self._fh.close()
        self._fh = None
        blob = Blob(self.digest, self.size)
        try:
            with disk_space():
                self._store._adopt(self.path, blob.digest)
        finally:
            self.path.unlink(missing_ok=True)
        return blob

    def abort(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):  # a full disk may refuse the last flush
                self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class ArtifactStore:
    """Blobs addressed by digest under `blobs/sha256/<2 hex>/<62 hex>`."""

    @classmethod
    def from_settings(cls, settings: Any) -> ArtifactStore:
        """The store `settings` name (the server's and every worker's, alike)."""
        cipher = (
            ArtifactCipher.from_file(settings.encryption_key_file)
            if settings.encryption_key_file is not None
            else None
        )
        return cls(
            settings.resolved_store_url,
            scratch=settings.home / "tmp",
            cipher=cipher,
            max_extract_bytes=settings.max_extract_bytes,
        )

    def __init__(
        self,
        url: str,
        scratch: Path | None = None,
        cipher: ArtifactCipher | None = None,
        max_extract_bytes: int | None = None,
    ) -> None:
        import fsspec

        from modelworks.archives import Limits

        self.url = url
        # what unpacking one archive may write (MODELWORKS_MAX_EXTRACT_BYTES)
        self.extract_limits = (
            Limits(max_total_bytes=max_extract_bytes) if max_extract_bytes else Limits()
        )
        # with a cipher, blobs are stored encrypted; plaintext copies the runtimes read live
        # in a local cache outside the store (`scratch/plain`), each checked by digest
        self.cipher = cipher
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        self.local = protocol in ("file", "local")
        if self.local:
            self.root = Path(url.removeprefix("file://")).expanduser().resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            # the temp files live in the store's own filesystem, so the final rename is atomic
            self.scratch = self.root / "tmp"
            self.fs: Any = None
        else:
            self.fs, self._fs_root = fsspec.core.url_to_fs(url)
            if scratch is None:
                raise InternalError("a remote artifact store needs a local scratch folder")
            self.scratch = scratch / "upload-tmp"
            self.cache = scratch / "artifact-cache"
            self.cache.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        if cipher is not None:
            if scratch is None:
                raise InternalError("an encrypted artifact store needs a local scratch folder")
            self.plain = scratch / "plain"
            self.plain.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _relative(digest: Digest) -> str:
        return f"blobs/sha256/{digest.hex[:2]}/{digest.hex[2:]}"

    def begin_upload(self, max_bytes: int) -> Upload:
        return Upload(self, max_bytes)

    def put_file(self, source: Path, max_bytes: int) -> Blob:
        """Store a local file (used by the demo and jobs)."""
        with self.begin_upload(max_bytes) as up, open(source, "rb") as fh:
            while chunk := fh.read(CHUNK):
                up.write(chunk)
            return up.commit()

    def _adopt(self, temp: Path, digest: Digest) -> None:
        if self.cipher is not None:
            sealed = temp.with_suffix(".sealed")  # keeps the temp name's owner
            try:
                self.cipher.encrypt_file(temp, sealed)
                os.replace(sealed, temp)
            finally:
                sealed.unlink(missing_ok=True)
        rel = self._relative(digest)
        if self.local:
            target = confined(self.root, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, target)
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # make the rename itself durable
            finally:
                os.close(fd)
        else:
            remote = f"{self._fs_root.rstrip('/')}/{rel}"
            if not self.fs.exists(remote):
                self.fs.put_file(str(temp), remote)

    def exists(self, digest: Digest) -> bool:
        rel = self._relative(Digest(digest))
        if self.local:
            return confined(self.root, rel).is_file()
        return bool(self.fs.exists(f"{self._fs_root.rstrip('/')}/{rel}"))

    def local_path(self, digest: str) -> Path:
        """A local file holding the blob, its digest verified (remote blobs are cached)."""
        d = Digest(digest)
        rel = self._relative(d)
        if self.cipher is not None:
            return self._decrypted(d, rel)
        if self.local:
            path = confined(self.root, rel)
            if not path.is_file():
                raise CorruptArtifact(f"artifact {d} is missing from the store")
        else:
            path = self.cache / d.hex
            if not path.is_file():
                tmp = self.cache / f"{temp_prefix('fetch')}{secrets.token_hex(6)}.part"
                try:
                    with disk_space():
                        self.fs.get_file(f"{self._fs_root.rstrip('/')}/{rel}", str(tmp))
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        self.verify(path, d)
        return path

    def _decrypted(self, d: Digest, rel: str) -> Path:
        assert self.cipher is not None
        path = self.plain / d.hex
        if path.is_file():
            self.verify(path, d)
            return path
        tmp_sealed = self.plain / f"{temp_prefix('sealed')}{secrets.token_hex(6)}.part"
        tmp_plain = self.plain / f"{temp_prefix('plain')}{secrets.token_hex(6)}.part"
        try:
            if self.local:
                sealed = confined(self.root, rel)
                if not sealed.is_file():
                    raise CorruptArtifact(f"artifact {d} is missing from the store")
            else:
                with disk_space():
                    self.fs.get_file(f"{self._fs_root.rstrip('/')}/{rel}", str(tmp_sealed))
                sealed = tmp_sealed
            with disk_space():
                self.cipher.decrypt_file(sealed, tmp_plain)
            self.verify(tmp_plain, d)
            os.replace(tmp_plain, path)
        finally:
            tmp_sealed.unlink(missing_ok=True)
            tmp_plain.unlink(missing_ok=True)
        return path

    @staticmethod
    def verify(path: Path, digest: Digest) -> None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise CorruptArtifact(
                f"artifact {digest} failed its digest check; re-upload the version"
            )

    def _unpacked_root(self) -> Path:
        if self.cipher is not None:
            return self.plain / "unpacked"
        return (self.root if self.local else self.cache) / "unpacked"

    def unpacked(self, digest: str) -> Path:
        """The blob (a zip or tar of a model folder) extracted once into a local cache,
        within `extract_limits`."""
        from modelworks.archives import extract_archive

        d = Digest(digest)
        root = self._unpacked_root()
        target = root / d.hex
        if target.is_dir():
            return target
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{temp_prefix('unpack')}{secrets.token_hex(6)}.tmp"
        with disk_space():
            extract_archive(self.local_path(d), tmp, self.extract_limits)
        try:
            os.replace(tmp, target)
        except OSError:  # another thread unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def read_bytes(self, digest: str) -> bytes:
        path = self.local_path(digest)
        return path.read_bytes()

    def delete(self, digest: str) -> None:
        rel = self._relative(Digest(digest))
        if self.cipher is not None:
            (self.plain / Digest(digest).hex).unlink(missing_ok=True)
            shutil.rmtree(self.plain / "unpacked" / Digest(digest).hex, ignore_errors=True)
        if self.local:
            confined(self.root, rel).unlink(missing_ok=True)
            shutil.rmtree(self.root / "unpacked" / Digest(digest).hex, ignore_errors=True)
        else:
            remote = f"{self._fs_root.rstrip('/')}/{rel}"
            if self.fs.exists(remote):
                self.fs.rm_file(remote)
            (self.cache / Digest(digest).hex).unlink(missing_ok=True)

    def _temp_folders(self) -> list[Path]:
        folders = [self.scratch, self._unpacked_root()]
        if self.cipher is not None:
            folders.append(self.plain)
        if not self.local:
            folders.append(self.cache)
        return [f for f in folders if f.is_dir()]

    def clean_scratch(self, older_than_s: float = 3600.0) -> int:
        """Remove what interrupted processes left behind (temp uploads, half-unpacked
        archives, export folders); returns how many entries went.

        An entry of a dead process of this host goes at once. One whose owner cannot be
        checked from here (another replica's host sharing the store, an unnamed file) goes
        only once nothing has written to it for `older_than_s`."""
        removed = 0
        cutoff = time.time() - older_than_s
        for folder in self._temp_folders():
            for entry in folder.iterdir():
                if not (_TEMP_NAME.match(entry.name) or entry.name.startswith("upload-")):
                    continue  # not a temporary name: leave it alone
                gone = _owner_gone(entry.name)
                with contextlib.suppress(FileNotFoundError):
                    if gone or (gone is None and _newest_mtime(entry) < cutoff):
                        _remove(entry)
                        removed += 1
        return removed
