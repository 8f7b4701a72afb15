"""SECURITY.md class 4: archives (zip-slip, symlinks, hard links, bombs).

Each archive is a Hugging Face folder that would be accepted but for one crafted member, and is
uploaded through the real route to an embeddings model. Each is refused (422 for names and
links, 413 for bombs), nothing is extracted anywhere (no evil file in the test's folder or in
/tmp, the store's `unpacked/` and scratch stay empty), and the server still answers.
"""

from __future__ import annotations

import io
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from modelworks.api.services import Services

MODEL = "encoder"
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
FOLDER = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer.json": b"{}",
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
}
Build = Callable[[str], bytes]  # marker name -> archive bytes


# builders ---------------------------------------------------------------------------------------
def zip_with(*extra: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [*FOLDER.items(), *extra]:
            zf.writestr(name, data)
    return buf.getvalue()


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: the mode bits below are honoured by `unzip`
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def tar_with(*extra: tarfile.TarInfo | tuple[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in FOLDER.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for item in extra:
            if isinstance(item, tarfile.TarInfo):
                tf.addfile(item)
            else:
                info = tarfile.TarInfo(item[0])
                info.size = len(item[1])
                tf.addfile(info, io.BytesIO(item[1]))
    return buf.getvalue()


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


PWNED = b"written by an archive member"
ZIP_SLIP: dict[str, Build] = {
    "zip-parent": lambda m: zip_with((f"../{m}", PWNED)),
    "zip-deep-parent": lambda m: zip_with((f"{'../' * 12}tmp/{m}", PWNED)),
    "zip-absolute": lambda m: zip_with((f"/tmp/{m}", PWNED)),
    "zip-inner-parent": lambda m: zip_with((f"tokenizer/../../{m}", PWNED)),
    "zip-backslash": lambda m: zip_with((f"..\\..\\{m}", PWNED)),
    "zip-drive-letter": lambda m: zip_with((f"C:/{m}", PWNED)),
    "tar-parent": lambda m: tar_with((f"../{m}", PWNED)),
    "tar-absolute": lambda m: tar_with((f"/tmp/{m}", PWNED)),
    "tar-dot-slash-parent": lambda m: tar_with((f"./../{m}", PWNED)),
}
LINKS: dict[str, Build] = {
    "zip-symlink-to-tmp": lambda m: zip_with(zip_symlink("out", "/tmp"), (f"out/{m}", PWNED)),
    "zip-symlink-to-parent": lambda m: zip_with(zip_symlink("up", "../.."), (f"up/{m}", PWNED)),
    "tar-symlink-then-write": lambda m: tar_with(
        tar_entry("out", tarfile.SYMTYPE, "/tmp"), (f"out/{m}", PWNED)
    ),
    "tar-symlink-relative": lambda m: tar_with(tar_entry(m, tarfile.SYMTYPE, "../../../../x")),
    "tar-hard-link-passwd": lambda m: tar_with(tar_entry(m, tarfile.LNKTYPE, "/etc/passwd")),
    "tar-hard-link-member": lambda m: tar_with(tar_entry(m, tarfile.LNKTYPE, "config.json")),
    "tar-fifo": lambda m: tar_with(tar_entry(m, tarfile.FIFOTYPE)),
    "tar-char-device": lambda m: tar_with(tar_entry(m, tarfile.CHRTYPE)),
}


def zip_bomb(_m: str) -> bytes:
    """20 MB of zeros compresses to ~20 KB: well under the 1 MiB upload cap."""
    return zip_with(("model-00002.safetensors", bytes(20 * 1024 * 1024)))


def tar_bomb(_m: str) -> bytes:
    return tar_with(("weights.safetensors", bytes(20 * 1024 * 1024)), mode="w:xz")


def entry_bomb(m: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in FOLDER.items():
            zf.writestr(name, data)
        for i in range(2001):
            zf.writestr(f"{i}", b"")
    return buf.getvalue()


BOMBS: dict[str, Build] = {"zip-ratio": zip_bomb, "tar-xz-ratio": tar_bomb, "entries": entry_bomb}


# helpers ----------------------------------------------------------------------------------------
@pytest.fixture
def encoder(http: httpx.Client) -> str:
    r = http.post("/api/v1/models", json={"name": MODEL, "task": "embeddings"})
    assert r.status_code == 201, r.text
    return MODEL


def outside_store(tmp_path: Path, services: Services) -> set[str]:
    store = services.store.root
    inside = {str(p) for p in tmp_path.rglob("*") if p != store and store not in p.parents}
    return inside | {p.name for p in tmp_path.parent.iterdir()}


def upload_and_check(
    http: httpx.Client,
    services: Services,
    tmp_path: Path,
    build: Build,
    status: int,
    filename: str = "model.zip",
) -> str:
    marker = f"evil-{uuid.uuid4().hex[:12]}"
    data = build(marker)
    assert len(data) < services.settings.max_upload_bytes  # the archive itself is accepted
    before = outside_store(tmp_path, services)

    r = http.post(
        f"/api/v1/models/{MODEL}/versions",
        files={"file": (filename, data, "application/octet-stream")},
    )

    assert r.status_code == status, r.text
    assert not list(tmp_path.parent.rglob(f"*{marker}*")), "an archive member was extracted"
    assert not (Path("/tmp") / marker).exists()
    assert outside_store(tmp_path, services) == before
    unpacked = services.store.root / "unpacked"
    assert not unpacked.exists() or list(unpacked.iterdir()) == []
    assert list(services.store.scratch.iterdir()) == []
    blobs = services.store.root / "blobs"
    assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]
    assert {p.name for p in services.settings.home.iterdir()} <= HOME_CHILDREN
    assert http.get(f"/api/v1/models/{MODEL}/versions").json() == []
    assert str(tmp_path) not in r.text
    assert http.get("/livez").status_code == 200
    message: str = r.json()["error"]["message"]
    return message


# cases ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(ZIP_SLIP))
def test_zip_slip_is_refused(
    http: httpx.Client, services: Services, encoder: str, tmp_path: Path, case: str
) -> None:
    name = "model.tar.gz" if case.startswith("tar") else "model.zip"
    message = upload_and_check(http, services, tmp_path, ZIP_SLIP[case], 422, name)
    assert "invalid member name" in message


@pytest.mark.parametrize("case", sorted(LINKS))
def test_links_and_special_files_are_refused(
    http: httpx.Client, services: Services, encoder: str, tmp_path: Path, case: str
) -> None:
    name = "model.tar.gz" if case.startswith("tar") else "model.zip"
    message = upload_and_check(http, services, tmp_path, LINKS[case], 422, name)
    assert "only regular files and folders are accepted" in message


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_bombs_stop_while_streaming(
    http: httpx.Client, services: Services, encoder: str, tmp_path: Path, case: str
) -> None:
    name = "model.tar.xz" if case.startswith("tar") else "model.zip"
    message = upload_and_check(http, services, tmp_path, BOMBS[case], 413, name)
    assert "zip bomb" in message or "entries" in message
