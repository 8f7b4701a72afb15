"""SECURITY.md class 5: file references inside formats.

ONNX external data whose `location` points at /etc/passwd, up the tree, at a device or through
a URL is refused (422) before any byte of it is read; so is a weights file that is a symlink
inside an uploaded folder. Error texts carry neither server paths nor the referenced file's
contents, nothing is stored or written, and the server still answers.
"""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto

from modelworks.api.services import Services
from tests.models import linear_onnx

TENSOR_MODEL = "scorer"
TEXT_MODEL = "encoder"
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
PASSWD_LINE = "root:x:0:0"

LOCATIONS = {
    "absolute-passwd": "/etc/passwd",
    "relative-passwd": "../../etc/passwd",
    "deep-relative": "../" * 20 + "etc/shadow",
    "proc-environ": "/proc/self/environ",
    "device": "/dev/zero",
    "windows-absolute": "C:\\Windows\\win.ini",
    "windows-relative": "..\\..\\secret.bin",
    "unc-share": "\\\\fileserver\\models\\weights.bin",
    "inner-parent": "weights/../../../etc/passwd",
    "file-url": "file:///etc/passwd",
    "nul-truncation": "weights.bin\x00/../../etc/passwd",
    "sibling-file": "weights.bin",
}


def external_onnx(path: Path, location: str, offset: str = "0", length: str = "32") -> bytes:
    """The test suite's linear model, its weight `W` moved to external data at `location`."""
    linear_onnx(path)
    model = onnx.load_model(str(path))
    for init in model.graph.initializer:
        if init.name == "W":
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            for key, value in (("location", location), ("offset", offset), ("length", length)):
                entry = init.external_data.add()
                entry.key = key
                entry.value = value
    return model.SerializeToString()


@pytest.fixture
def models(http: httpx.Client) -> None:
    for name, task in ((TENSOR_MODEL, "tensor"), (TEXT_MODEL, "embeddings")):
        assert http.post("/api/v1/models", json={"name": name, "task": task}).status_code == 201


def outside_store(tmp_path: Path, services: Services) -> set[str]:
    store = services.store.root
    inside = {str(p) for p in tmp_path.rglob("*") if p != store and store not in p.parents}
    return inside | {p.name for p in tmp_path.parent.iterdir()}


def assert_refused(
    r: httpx.Response, http: httpx.Client, services: Services, tmp_path: Path, before: set[str]
) -> str:
    assert r.status_code == 422, r.text
    text = r.text
    for leak in (
        str(tmp_path),
        str(services.store.root),
        str(services.settings.home),
        "/tmp/",
        PASSWD_LINE,
        "Traceback",
        "onnx/",
    ):
        assert leak not in text, f"{leak!r} leaked in {text!r}"
    for model in (TENSOR_MODEL, TEXT_MODEL):
        assert http.get(f"/api/v1/models/{model}/versions").json() == []
    assert list(services.store.scratch.iterdir()) == []
    blobs = services.store.root / "blobs"
    assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]
    assert outside_store(tmp_path, services) == before
    assert {p.name for p in services.settings.home.iterdir()} <= HOME_CHILDREN
    assert http.get("/livez").status_code == 200
    message: str = r.json()["error"]["message"]
    return message


@pytest.mark.parametrize("case", sorted(LOCATIONS))
def test_onnx_external_data_is_refused(
    http: httpx.Client, services: Services, models: None, tmp_path: Path, case: str
) -> None:
    data = external_onnx(tmp_path / "ext.onnx", LOCATIONS[case])
    before = outside_store(tmp_path, services)

    r = http.post(f"/api/v1/models/{TENSOR_MODEL}/versions", files={"file": ("model.onnx", data)})

    message = assert_refused(r, http, services, tmp_path, before)
    assert "external" in message


@pytest.mark.parametrize("offset", ["-1", "99999999999999999999", "not-a-number"])
def test_external_data_with_absurd_offsets_is_refused(
    http: httpx.Client, services: Services, models: None, tmp_path: Path, offset: str
) -> None:
    data = external_onnx(tmp_path / "ext.onnx", "/etc/passwd", offset=offset, length=offset)
    before = outside_store(tmp_path, services)

    r = http.post(f"/api/v1/models/{TENSOR_MODEL}/versions", files={"file": ("model.onnx", data)})

    assert_refused(r, http, services, tmp_path, before)


# symlinked weights inside an uploaded folder ----------------------------------------------------
def zip_folder_with_link(weights_target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", b'{"hidden_size": 8}')
        zf.writestr("tokenizer.json", b"{}")
        link = zipfile.ZipInfo("model.safetensors")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, weights_target.encode())
    return buf.getvalue()


def tar_folder_with_link(weights_target: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("config.json", b'{"hidden_size": 8}'), ("tokenizer.json", b"{}")):
            info = tarfile.TarInfo(f"model/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("model/model.safetensors")
        link.type = tarfile.SYMTYPE
        link.linkname = weights_target
        tf.addfile(link)
    return buf.getvalue()


SYMLINKED = {
    "zip-to-passwd": (zip_folder_with_link, "/etc/passwd", "model.zip"),
    "zip-up-the-tree": (zip_folder_with_link, "../../../../etc/passwd", "model.zip"),
    "tar-to-passwd": (tar_folder_with_link, "/etc/passwd", "model.tar.gz"),
    "tar-to-proc": (tar_folder_with_link, "/proc/self/environ", "model.tar.gz"),
}


@pytest.mark.parametrize("case", sorted(SYMLINKED))
def test_symlinked_weights_are_refused(
    http: httpx.Client, services: Services, models: None, tmp_path: Path, case: str
) -> None:
    build, target, filename = SYMLINKED[case]
    before = outside_store(tmp_path, services)

    r = http.post(
        f"/api/v1/models/{TEXT_MODEL}/versions", files={"file": (filename, build(target))}
    )

    message = assert_refused(r, http, services, tmp_path, before)
    assert "symbolic link" in message
