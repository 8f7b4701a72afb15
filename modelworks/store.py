"""Content-addressed artifact store: blobs are named by their sha256, never by a client.

Uploads stream into a temporary file inside the store, are hashed while written, capped in
size, fsynced and renamed into place; only then may a database row point at them. The local
folder is the default; any fsspec URL (s3://, gs://, memory://, ...) works through fsspec.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from modelworks.crypto import ArtifactCipher
from modelworks.errors import InternalError, PayloadTooLarge, ValidationFailed

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
CHUNK = 1024 * 1024


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


class CorruptArtifact(InternalError):
    code = "corrupt_artifact"


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
        self.path = store.scratch / f"upload-{secrets.token_hex(12)}.part"
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
        self._fh.write(data)

    def sync(self) -> None:
        """Flush and fsync the bytes written so far (blocking; run it off the event loop)."""
        assert self._fh is not None
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
            self._store._adopt(self.path, blob.digest)
        finally:
            self.path.unlink(missing_ok=True)
        return blob

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class ArtifactStore:
    """Blobs addressed by digest under `blobs/sha256/<2 hex>/<62 hex>`."""

    def __init__(
        self, url: str, scratch: Path | None = None, cipher: ArtifactCipher | None = None
    ) -> None:
        import fsspec

        self.url = url
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
            sealed = temp.with_suffix(".sealed")
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
                tmp = self.cache / f"{d.hex}.{secrets.token_hex(6)}.part"
                self.fs.get_file(f"{self._fs_root.rstrip('/')}/{rel}", str(tmp))
                os.replace(tmp, path)
        self.verify(path, d)
        return path

    def _decrypted(self, d: Digest, rel: str) -> Path:
        assert self.cipher is not None
        path = self.plain / d.hex
        if path.is_file():
            self.verify(path, d)
            return path
        tmp_sealed = self.plain / f"{d.hex}.{secrets.token_hex(6)}.sealed"
        tmp_plain = self.plain / f"{d.hex}.{secrets.token_hex(6)}.part"
        try:
            if self.local:
                sealed = confined(self.root, rel)
                if not sealed.is_file():
                    raise CorruptArtifact(f"artifact {d} is missing from the store")
            else:
                self.fs.get_file(f"{self._fs_root.rstrip('/')}/{rel}", str(tmp_sealed))
                sealed = tmp_sealed
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

    def unpacked(self, digest: str) -> Path:
        """The blob (a zip or tar of a model folder) extracted once into a local cache."""
        import shutil

        from modelworks.archives import extract_archive

        d = Digest(digest)
        if self.cipher is not None:
            root = self.plain / "unpacked"
        else:
            root = (self.root if self.local else self.cache) / "unpacked"
        target = root / d.hex
        if target.is_dir():
            return target
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{d.hex}.{secrets.token_hex(6)}.tmp"
        extract_archive(self.local_path(d), tmp)
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
            import shutil

            (self.plain / Digest(digest).hex).unlink(missing_ok=True)
            shutil.rmtree(self.plain / "unpacked" / Digest(digest).hex, ignore_errors=True)
        if self.local:
            confined(self.root, rel).unlink(missing_ok=True)
            import shutil

            shutil.rmtree(self.root / "unpacked" / Digest(digest).hex, ignore_errors=True)
        else:
            remote = f"{self._fs_root.rstrip('/')}/{rel}"
            if self.fs.exists(remote):
                self.fs.rm_file(remote)
            (self.cache / Digest(digest).hex).unlink(missing_ok=True)

    def clean_scratch(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files a crash left behind; recent ones may be another replica's upload."""
        removed = 0
        cutoff = time.time() - older_than_s
        for p in self.scratch.glob("upload-*.part"):
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
        return removed
