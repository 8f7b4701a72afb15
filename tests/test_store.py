"""Unit tests of the content-addressed artifact store (local folder and fsspec)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelworks.errors import InternalError, PayloadTooLarge, ValidationFailed
from modelworks.store import ArtifactStore, CorruptArtifact, Digest, confined


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def scratch_files(store: ArtifactStore) -> list[Path]:
    return sorted(p for p in store.scratch.rglob("*") if p.is_file())


def blob_files(store: ArtifactStore) -> list[Path]:
    blobs = store.root / "blobs"
    return sorted(p for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture
def memory_store(tmp_path: Path) -> Iterator[ArtifactStore]:
    url = f"memory://mw-test-{uuid.uuid4().hex}"
    s = ArtifactStore(url, scratch=tmp_path / "scratch")
    yield s
    if s.fs.exists(s._fs_root):
        s.fs.rm(s._fs_root, recursive=True)


# round trips --------------------------------------------------------------------------------
def test_put_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one CHUNK
    source = tmp_path / "model.onnx"
    source.write_bytes(data)

    blob = store.put_file(source, max_bytes=len(data))

    assert blob.digest == sha256(data)
    assert blob.size == len(data)
    assert store.exists(blob.digest)
    path = store.local_path(blob.digest)
    assert path.read_bytes() == data
    assert store.root in path.parents
    assert store.read_bytes(blob.digest) == data
    assert scratch_files(store) == []


def test_begin_upload_round_trip(store: ArtifactStore) -> None:
    parts: list[bytes | memoryview] = [b"first part ", b"second part ", memoryview(b"third part")]
    with store.begin_upload(max_bytes=1000) as up:
        for part in parts:
            up.write(part)
        blob = up.commit()
    data = b"".join(bytes(p) for p in parts)

    assert blob.digest == sha256(data)
    assert blob.size == len(data)
    assert store.read_bytes(blob.digest) == data
    assert scratch_files(store) == []


def test_same_content_twice_is_one_blob(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "m.bin"
    source.write_bytes(b"same bytes")
    a = store.put_file(source, max_bytes=100)
    b = store.put_file(source, max_bytes=100)
    assert a == b
    assert len(blob_files(store)) == 1


def test_delete_removes_the_blob(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "m.bin"
    source.write_bytes(b"to be deleted")
    blob = store.put_file(source, max_bytes=100)
    store.delete(blob.digest)
    assert not store.exists(blob.digest)
    assert blob_files(store) == []
    store.delete(blob.digest)  # deleting twice is harmless


# size cap and aborts ------------------------------------------------------------------------
def test_upload_over_cap_raises_and_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(PayloadTooLarge) as info, store.begin_upload(max_bytes=10) as up:
        up.write(b"12345")
        up.write(b"678901")  # 11 bytes in total
    assert "10 bytes" in info.value.message
    assert info.value.details == {"limit": 10}
    assert scratch_files(store) == []
    assert blob_files(store) == []


def test_upload_exactly_at_cap_is_accepted(store: ArtifactStore) -> None:
    with store.begin_upload(max_bytes=10) as up:
        up.write(b"0123456789")
        blob = up.commit()
    assert blob.size == 10
    assert store.exists(blob.digest)


def test_put_file_over_cap_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * 2048)
    with pytest.raises(PayloadTooLarge):
        store.put_file(source, max_bytes=1024)
    assert scratch_files(store) == []
    assert blob_files(store) == []


def test_aborted_upload_leaves_nothing(store: ArtifactStore) -> None:
    with (
        pytest.raises(RuntimeError, match="client went away"),
        store.begin_upload(max_bytes=1000) as up,
    ):
        up.write(b"half a model")
        assert up.path.exists()  # it really was being written in scratch
        raise RuntimeError("client went away")
    assert scratch_files(store) == []
    assert blob_files(store) == []


def test_upload_without_commit_leaves_nothing(store: ArtifactStore) -> None:
    with store.begin_upload(max_bytes=1000) as up:
        up.write(b"never committed")
    assert scratch_files(store) == []
    assert blob_files(store) == []


# integrity ----------------------------------------------------------------------------------
def test_local_path_detects_a_corrupted_blob(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "m.bin"
    source.write_bytes(b"original content")
    blob = store.put_file(source, max_bytes=100)
    on_disk = store.root / "blobs" / "sha256" / blob.digest.hex[:2] / blob.digest.hex[2:]
    assert on_disk.is_file()
    on_disk.write_bytes(b"tampered content")

    with pytest.raises(CorruptArtifact) as info:
        store.local_path(blob.digest)
    assert info.value.status == 500
    assert blob.digest in info.value.message
    with pytest.raises(CorruptArtifact):
        store.read_bytes(blob.digest)


def test_local_path_of_a_missing_blob(store: ArtifactStore) -> None:
    with pytest.raises(CorruptArtifact, match="missing"):
        store.local_path(sha256(b"never stored"))


# confinement --------------------------------------------------------------------------------
@pytest.mark.parametrize("relative", ["../x", "a/../../x", "..", "blobs/../../outside"])
def test_confined_refuses_paths_leaving_the_root(tmp_path: Path, relative: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ValidationFailed, match="leaves"):
        confined(root, relative)


def test_confined_refuses_absolute_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for absolute in ("/etc/passwd", str(tmp_path / "elsewhere")):
        with pytest.raises(ValidationFailed):
            confined(root, absolute)


def test_confined_refuses_a_symlink_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "file").write_bytes(b"x")
    (root / "link").symlink_to(root / "real", target_is_directory=True)
    with pytest.raises(ValidationFailed, match="symbolic link"):
        confined(root, "link/file")
    (root / "filelink").symlink_to(root / "real" / "file")
    with pytest.raises(ValidationFailed, match="symbolic link"):
        confined(root, "filelink")


def test_confined_refuses_a_symlink_pointing_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValidationFailed):
        confined(root, "escape/file")


def test_confined_accepts_plain_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert confined(root, "blobs/sha256/ab/cd") == root.resolve() / "blobs" / "sha256" / "ab" / "cd"
    assert confined(root, "a/./b") == root.resolve() / "a" / "b"


# fsspec -------------------------------------------------------------------------------------
def test_memory_store_round_trip(memory_store: ArtifactStore, tmp_path: Path) -> None:
    data = b"model bytes held in fsspec memory" * 100
    source = tmp_path / "m.onnx"
    source.write_bytes(data)
    assert not memory_store.local

    blob = memory_store.put_file(source, max_bytes=len(data))
    assert blob.digest == sha256(data)
    assert memory_store.exists(blob.digest)
    path = memory_store.local_path(blob.digest)
    assert path.read_bytes() == data
    assert (tmp_path / "scratch") in path.parents
    assert scratch_files(memory_store) == []

    memory_store.delete(blob.digest)
    assert not memory_store.exists(blob.digest)
    assert not path.exists()  # the local cache copy went too


def test_memory_store_upload_and_corruption(memory_store: ArtifactStore) -> None:
    with memory_store.begin_upload(max_bytes=100) as up:
        up.write(b"remote")
        blob = up.commit()
    assert memory_store.read_bytes(blob.digest) == b"remote"
    # corrupt the cached copy: the digest check runs on every local_path
    (memory_store.cache / blob.digest.hex).write_bytes(b"bad")
    with pytest.raises(CorruptArtifact):
        memory_store.local_path(blob.digest)


def test_memory_store_needs_a_scratch_folder() -> None:
    with pytest.raises(InternalError, match="scratch"):
        ArtifactStore(f"memory://mw-test-{uuid.uuid4().hex}")


def test_memory_store_cap_leaves_nothing(memory_store: ArtifactStore) -> None:
    with pytest.raises(PayloadTooLarge), memory_store.begin_upload(max_bytes=4) as up:
        up.write(b"too long")
    assert scratch_files(memory_store) == []
    assert not memory_store.exists(Digest(sha256(b"too long")))


# digests ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "SHA256:" + "a" * 64,
        "md5:" + "a" * 32,
        "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        " sha256:" + "a" * 64,
        "sha256:../../" + "a" * 58,
    ],
)
def test_digest_rejects_malformed_values(value: str) -> None:
    with pytest.raises(ValidationFailed, match="sha256:<64 hex>"):
        Digest(value)


def test_digest_accepts_a_well_formed_value() -> None:
    d = Digest("sha256:" + "0123456789abcdef" * 4)
    assert d.hex == "0123456789abcdef" * 4


def test_store_refuses_malformed_digests(store: ArtifactStore) -> None:
    bad = "sha256:../../etc/passwd"
    with pytest.raises(ValidationFailed):
        store.exists(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed):
        store.local_path(bad)
    with pytest.raises(ValidationFailed):
        store.delete(bad)


# scratch cleaning ---------------------------------------------------------------------------
def test_clean_scratch_removes_only_old_temp_files(store: ArtifactStore) -> None:
    old = store.scratch / "upload-old.part"
    fresh = store.scratch / "upload-fresh.part"
    unrelated = store.scratch / "keep-me.txt"
    for p in (old, fresh, unrelated):
        p.write_bytes(b"x")
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    os.utime(unrelated, (long_ago, long_ago))

    assert store.clean_scratch(older_than_s=3600) == 1

    assert not old.exists()
    assert fresh.exists()
    assert unrelated.exists()


def test_clean_scratch_spares_an_upload_in_progress(store: ArtifactStore) -> None:
    with store.begin_upload(max_bytes=100) as up:
        up.write(b"in flight")
        assert store.clean_scratch() == 0
        assert up.path.exists()
        blob = up.commit()
    assert store.read_bytes(blob.digest) == b"in flight"
