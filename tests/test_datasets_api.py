"""Datasets over REST, the SDK and the CLI: upload, versions, profile, preview, delete; a file
that does not read cleanly is a 422 naming the problem, and nothing of it is stored."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelworks import Client
from modelworks.api.services import Services
from modelworks.errors import NotFound, ValidationFailed
from tests.test_access import bearer, key

CSV = b"temperature,vibration,machine,label\n" + b"".join(
    f"{20 + i % 7},{0.1 * (i % 5):.1f},m{i % 3},{'fail' if i % 4 == 0 else 'ok'}\n".encode()
    for i in range(40)
)


def stored(services: Services) -> list[Path]:
    blobs = services.store.root / "blobs"
    return sorted(p for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []


def upload(
    http: httpx.Client, name: str, content: bytes, filename: str = "data.csv", **fields: str
) -> httpx.Response:
    return http.post(
        "/api/v1/datasets",
        files={"file": (filename, content, "application/octet-stream")},
        data={"name": name, **fields},
    )


def test_upload_versions_profile_preview_and_delete(
    client: Client, services: Services, tmp_path: Path
) -> None:
    path = tmp_path / "sensors.csv"
    path.write_bytes(CSV)
    v1 = client.push_dataset("sensors", path, description="line 3 sensors")
    assert (v1["dataset"], v1["version"], v1["format"], v1["filename"]) == (
        "sensors",
        1,
        "csv",
        "sensors.csv",
    )
    profile = v1["profile"]
    assert profile["rows"] == 40 and profile["label"] == "label"
    assert profile["classes"] == {"fail": 10, "ok": 30}
    types = {c["name"]: c["type"] for c in profile["columns"]}
    assert types["temperature"] == "integer" and types["machine"] == "string"
    v2 = client.push_dataset("sensors", path, label="machine")
    assert v2["version"] == 2 and v2["profile"]["label"] == "machine"
    assert v2["digest"] == v1["digest"] and len(stored(services)) == 1  # content-addressed

    listed = client.list_datasets()
    assert [(d["name"], d["latest"]) for d in listed] == [("sensors", 2)]
    assert client.get_dataset("sensors", 1)["profile"]["label"] == "label"
    shown = client.preview_dataset("sensors", rows=3)
    assert shown["version"] == 2
    assert shown["columns"] == ["temperature", "vibration", "machine", "label"]
    assert shown["rows"] == [[20, 0.0, "m0", "fail"], [21, 0.1, "m1", "ok"], [22, 0.2, "m2", "ok"]]

    assert client.delete_dataset("sensors", 2) == {"deleted": "sensors:2"}
    assert client.get_dataset("sensors")["latest"] == 1 and len(stored(services)) == 1
    client.delete_dataset("sensors")
    assert stored(services) == []
    with pytest.raises(NotFound):
        client.get_dataset("sensors")


def test_a_blob_shared_with_a_model_outlives_the_dataset(
    http: httpx.Client, services: Services, tmp_path: Path
) -> None:
    """The store is content-addressed: a dataset and a model version with the same bytes
    share a blob, and deleting one keeps it for the other."""
    from tests.models import linear_onnx

    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    assert http.post("/api/v1/models", json={"name": "m"}).status_code == 201
    r = http.post("/api/v1/models/m/versions", files={"file": ("m.onnx", onnx)})
    assert r.status_code == 201
    digest = r.json()["digest"]
    # the same bytes as a dataset: not a data file, so refused, and the model's blob stays
    r = upload(http, "weights", onnx, filename="m.csv")
    assert r.status_code in (415, 422)
    assert services.store.exists(digest)  # type: ignore[arg-type]
    # a CSV uploaded as a dataset and as a model's bytes: deleting the dataset keeps it
    r = upload(http, "rows", CSV)
    assert r.status_code == 201
    assert http.delete("/api/v1/datasets/rows").status_code == 200
    assert services.store.exists(digest)  # type: ignore[arg-type]


MIXED = b"a,label\n" + b"".join(b"%d,x\n" % i for i in range(50)) + b"oops,y\n"
BAD_FILES: list[tuple[str, bytes, str, dict[str, str], str]] = [
    ("empty.csv", b"", "empty", {}, ""),
    ("header.csv", b"a,b,label\n", "header-only", {}, "no rows"),
    ("ragged.csv", b"a,b,label\n1,2,x\n3,4\n", "ragged", {}, "column"),
    ("latin1.csv", b"a,label\n1,caf\xe9\n2,ok\n", "not-utf8", {}, "UTF-8"),
    ("wide.csv", ",".join(f"c{i}" for i in range(10_000)).encode() + b"\n", "wide", {}, "column"),
    (
        "formula.csv",
        b"a,note,label\n1,ok,x\n2,=cmd|' /C calc'!A0,y\n",
        "formula",
        {},
        "note",
    ),
    ("one.csv", b"a,label\n1,x\n2,x\n3,x\n", "one-class", {"label": "label"}, "class"),
    ("nolabel.csv", b"a,b\n1,2\n3,4\n", "no-label-column", {"label": "target"}, "target"),
    (
        "mixed.csv",
        b"a,label\n" + b"".join(b"%d,x\n" % i for i in range(50)) + b"oops,y\n",
        "mixed",
        {},
        "'a'",
    ),
    ("model.bin", b"\x00\x01\x02binary", "unknown-format", {}, ""),
]


@pytest.mark.parametrize(
    ("filename", "content", "fields", "hint"),
    [pytest.param(f, c, fl, h, id=i) for f, c, i, fl, h in BAD_FILES],
)
def test_a_bad_file_is_a_clear_4xx_and_nothing_is_stored(
    http: httpx.Client,
    services: Services,
    filename: str,
    content: bytes,
    fields: dict[str, str],
    hint: str,
) -> None:
    r = upload(http, "bad", content, filename=filename, **fields)
    assert r.status_code in (415, 422), r.text
    message = r.json()["error"]["message"]
    assert hint in message, message
    assert "Traceback" not in r.text
    assert stored(services) == []
    assert list(services.store.scratch.iterdir()) == []  # no temp file left
    assert http.get("/api/v1/datasets/bad").status_code == 404


def test_image_zip_is_profiled_by_class(client: Client, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "parts"
    for cls, color in (("ok", (0, 200, 0)), ("dent", (200, 0, 0))):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8 + i, 8), color).save(folder / cls / f"{i}.png")
    v = client.push_dataset("parts", folder)  # a folder is zipped by the SDK
    assert v["format"] == "images"
    assert v["profile"]["classes"] == {"dent": 3, "ok": 3}
    rows = client.preview_dataset("parts")["rows"]
    assert len(rows) == 6


def test_an_image_zip_with_a_stray_file_is_refused(http: httpx.Client, services: Services) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok/a.png", b"not really a png")
        zf.writestr("ok/readme.txt", b"hello")
    r = upload(http, "parts", buf.getvalue(), filename="parts.zip")
    assert r.status_code == 422
    assert stored(services) == []


def test_upload_fields_are_checked(http: httpx.Client) -> None:
    r = http.post("/api/v1/datasets", files={"file": ("d.csv", CSV)})
    assert r.status_code == 422 and "'name' is required" in r.json()["error"]["message"]
    r = upload(http, "Bad Name", CSV)
    assert r.status_code == 422 and "invalid dataset name" in r.json()["error"]["message"]
    r = upload(http, "ok", CSV, colour="blue")
    assert r.status_code == 422 and "unknown field 'colour'" in r.json()["error"]["message"]
    r = http.post("/api/v1/datasets", json={"name": "x"})
    assert r.status_code == 415 and "curl -F file=@data.csv" in r.json()["error"]["message"]


def test_roles_and_projects(http: httpx.Client, anon: httpx.Client, transport: Any) -> None:
    assert upload(http, "sensors", CSV).status_code == 201
    viewer = bearer(key(http, role="viewer")["key"])
    r = anon.get("/api/v1/datasets/sensors", headers=viewer)
    assert r.status_code == 200
    r = anon.post(
        "/api/v1/datasets",
        files={"file": ("d.csv", CSV)},
        data={"name": "other"},
        headers=viewer,
    )
    assert r.status_code == 403
    assert anon.delete("/api/v1/datasets/sensors", headers=viewer).status_code == 403
    # another project's key does not see it
    assert http.post("/api/v1/projects", json={"name": "plant-b"}).status_code == 201
    other = bearer(key(http, role="developer", project="plant-b")["key"])
    assert anon.get("/api/v1/datasets/sensors", headers=other).status_code == 404
    assert anon.get("/api/v1/datasets", headers=other).json() == []
    # every upload is audited
    actions = [e["action"] for e in http.get("/api/v1/audit").json()]
    assert "dataset.upload" in actions


def test_size_cap(settings: Any, services: Services, admin_key: str) -> None:
    from modelworks.api.app import create_app
    from tests.asgi import SyncASGITransport

    small = settings.model_copy(update={"max_upload_bytes": 100})
    own = Services.build(small)
    transport = SyncASGITransport(create_app(small, own))
    try:
        with httpx.Client(transport=transport, base_url="http://testserver") as c:
            r = c.post(
                "/api/v1/datasets",
                files={"file": ("d.csv", CSV)},
                data={"name": "big"},
                headers=bearer(admin_key),
            )
    finally:
        transport.close()
        own.close()
    assert r.status_code == 413 and "MODELWORKS_MAX_UPLOAD_BYTES" in r.text
    assert stored(services) == []


def test_sdk_errors_are_typed(client: Client) -> None:
    with pytest.raises(NotFound):
        client.preview_dataset("missing")
    with pytest.raises(ValidationFailed):
        client.get_dataset("Not A Name")
    assert json.dumps(client.list_datasets()) == "[]"
