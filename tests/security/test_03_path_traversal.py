"""SECURITY.md class 3: path traversal through names, versions and artifact paths.

Requests are sent as raw ASGI calls, so `../` reaches the server exactly as written (an HTTP
client would normalise it away) and percent-encodings are decoded once, as uvicorn does. Every
crafted segment, on every management and protocol route, is a 4xx and never a 5xx or a 2xx;
nothing appears outside the store, and the server still answers. The store's `confined()`
refuses what leaves it or passes a symlink, and uploads are stored by digest whatever their
filename says.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest
from fastapi import FastAPI

from modelworks.api.services import Services
from modelworks.errors import ValidationFailed
from modelworks.store import confined
from tests.models import linear_onnx

MODEL = "m"
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
BOUNDARY = "sec-boundary-03"

# segments exactly as they travel on the wire
SEGMENTS = {
    "dot-dot-slash": "../../../etc/passwd",
    "dot-dot": "..",
    "encoded-dots": "%2e%2e",
    "encoded-upper": "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "mixed-encoding": "..%2f..%2fetc%2fpasswd",
    "backslash": "..\\..\\windows\\win.ini",
    "encoded-backslash": "..%5c..%5cetc%5cpasswd",
    "double-slash-proc": "/proc/self/environ",
    "encoded-double-slash": "%2F%2Fproc%2Fself%2Fenviron",
    "fragment": "m#fragment",
    "encoded-fragment": "m%23..%2F..%2Fetc",
    "double-encoded": "%252e%252e%252fetc%252fpasswd",
    "nul": "m%00.onnx",
    "overlong-utf8": "%c0%ae%c0%ae%c0%af",
    "dot-encoded-dot": ".%2e",
    "file-url": "file:%2F%2F%2Fetc%2Fpasswd",
    "home": "~root",
    "too-long": "a" * 300,
}

INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
ALIAS = {"version": 1, "warm": False}
# (method, target with {s} for the crafted segment, JSON body or None)
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/models/{s}", None),
    ("PATCH", "/api/v1/models/{s}", {"description": "x"}),
    ("DELETE", "/api/v1/models/{s}", None),
    ("GET", "/api/v1/models/{s}/versions", None),
    ("GET", "/api/v1/models/m/versions/{s}", None),
    ("POST", "/api/v1/models/{s}/versions", "upload"),
    ("PUT", "/api/v1/models/{s}/aliases/production", ALIAS),
    ("PUT", "/api/v1/models/m/aliases/{s}", ALIAS),
    ("DELETE", "/api/v1/models/m/aliases/{s}", None),
    ("GET", "/api/v1/projects/{s}", None),
    ("GET", "/api/v1/models?project={s}", None),
    ("GET", "/v2/models/{s}", None),
    ("GET", "/v2/models/m/versions/{s}", None),
    ("GET", "/v2/models/{s}/ready", None),
    ("POST", "/v2/models/{s}/infer", INFER),
    ("POST", "/v2/models/m/versions/{s}/infer", INFER),
    ("GET", "/v1/models/{s}", None),
    ("GET", "/v1/models/{s}/metadata", None),
    ("GET", "/v1/models/m/labels/{s}", None),
    ("POST", "/v1/models/{s}:predict", {"instances": [[1, 2, 3, 4]]}),
    ("POST", "/v1/models/m/versions/{s}:predict", {"instances": [[1, 2, 3, 4]]}),
    ("POST", "/models/{s}", {"inputs": "hello"}),
]
# the same segment, decoded, inside JSON bodies
BODY_ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/api/v1/models", "name"),
    ("POST", "/v1/embeddings", "model"),
    ("POST", "/api/v1/keys", "project"),
]


def multipart(filename: str, content: bytes) -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def call(
    app: FastAPI, method: str, target: str, key: str, body: bytes = b"", ctype: str = ""
) -> tuple[int, bytes]:
    """One request as a server hands it to the app: `path` is `raw_path` decoded once."""
    raw = target.encode("latin-1")
    raw_path, _, query = raw.partition(b"?")
    headers = [(b"host", b"testserver"), (b"authorization", f"Bearer {key}".encode())]
    if body:
        headers += [
            (b"content-type", (ctype or "application/json").encode()),
            (b"content-length", str(len(body)).encode()),
        ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "headers": headers,
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    async def run() -> None:
        await app(scope, receive, send)

    anyio.run(run)
    return status[0], b"".join(chunks)


def outside_store(tmp_path: Path, services: Services) -> set[str]:
    store = services.store.root
    inside = {str(p) for p in tmp_path.rglob("*") if p != store and store not in p.parents}
    return inside | {p.name for p in tmp_path.parent.iterdir()}


def blobs(services: Services) -> list[Path]:
    root = services.store.root / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def onnx_bytes(tmp_path: Path) -> bytes:
    (tmp_path / "inputs").mkdir()
    return linear_onnx(tmp_path / "inputs" / "m.onnx").read_bytes()


@pytest.fixture
def served(http: httpx.Client, onnx_bytes: bytes) -> None:
    assert http.post("/api/v1/models", json={"name": MODEL}).status_code == 201
    r = http.post(f"/api/v1/models/{MODEL}/versions", files={"file": ("m.onnx", onnx_bytes)})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("segment", sorted(SEGMENTS))
def test_crafted_segment_is_4xx_on_every_route(
    app: FastAPI,
    http: httpx.Client,
    services: Services,
    admin_key: str,
    served: None,
    onnx_bytes: bytes,
    tmp_path: Path,
    segment: str,
) -> None:
    raw = SEGMENTS[segment]
    before = outside_store(tmp_path, services)
    stored = blobs(services)
    wrong = []

    for method, template, body in ROUTES:
        if body == "upload":
            payload, ctype = (
                multipart("m.onnx", onnx_bytes),
                f"multipart/form-data; boundary={BOUNDARY}",
            )
        else:
            payload, ctype = (json.dumps(body).encode() if body else b""), ""
        status, text = call(app, method, template.format(s=raw), admin_key, payload, ctype)
        if status not in (400, 404, 405, 422) or str(tmp_path).encode() in text:
            wrong.append((method, template, status, text[:160]))
    for method, path, field in BODY_ROUTES:
        body = {field: unquote(raw)}
        if path == "/v1/embeddings":
            body["input"] = "hello"
        status, text = call(app, method, path, admin_key, json.dumps(body).encode())
        if status not in (400, 404, 422):
            wrong.append((method, path, field, status, text[:160]))

    assert wrong == []
    assert outside_store(tmp_path, services) == before
    assert blobs(services) == stored
    assert {p.name for p in services.settings.home.iterdir()} <= HOME_CHILDREN
    assert http.get(f"/api/v1/models/{MODEL}").json()["versions"] == 1
    assert http.get("/livez").status_code == 200


# clients never choose a storage location --------------------------------------------------------
@pytest.mark.parametrize(
    "filename",
    [
        "../../../../../tmp/evil-{u}.onnx",
        "..\\..\\..\\evil-{u}.onnx",
        "/tmp/evil-{u}.onnx",
        "C:\\evil-{u}.onnx",
        "sub/../../evil-{u}.onnx",
    ],
)
def test_upload_filename_never_picks_the_stored_path(
    app: FastAPI,
    http: httpx.Client,
    services: Services,
    admin_key: str,
    served: None,
    onnx_bytes: bytes,
    tmp_path: Path,
    filename: str,
) -> None:
    name = filename.format(u=uuid.uuid4().hex[:8])
    evil = Path(name.replace("\\", "/")).name
    data = linear_onnx(tmp_path / "inputs" / "other.onnx", seed=3).read_bytes()
    before = outside_store(tmp_path, services)

    status, text = call(
        app,
        "POST",
        f"/api/v1/models/{MODEL}/versions",
        admin_key,
        multipart(name, data),
        f"multipart/form-data; boundary={BOUNDARY}",
    )

    assert status == 201, text
    digest = hashlib.sha256(data).hexdigest()
    assert json.loads(text)["digest"] == f"sha256:{digest}"
    assert services.store.root / "blobs" / "sha256" / digest[:2] / digest[2:] in blobs(services)
    assert not any(p.name == evil for p in services.store.root.rglob("*"))
    assert not Path("/tmp", evil).exists()
    assert outside_store(tmp_path, services) == before
    assert http.get("/livez").status_code == 200


# the one function every file operation goes through ---------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    (store / "to-outside").symlink_to(tmp_path / "outside")
    (store / "to-inside").symlink_to(store / "blobs")
    (store / "dangling").symlink_to("/nonexistent-target")
    (store / "blobs" / "up").symlink_to("..")
    return store


REFUSED = {
    "parent": "../outside/secret",
    "absolute": "/etc/passwd",
    "inner-parent": "blobs/../../outside/secret",
    "symlink-out": "to-outside/secret",
    "symlink-in": "to-inside/x",
    "dangling-symlink": "dangling",
    "symlink-to-parent": "blobs/up/blobs",
    "nul-byte": "blobs/a\x00b",
    "lone-surrogate": "blobs/\udd00",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_confined_refuses(root: Path, tmp_path: Path, case: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        confined(root, REFUSED[case])
    assert str(tmp_path) not in info.value.message


@pytest.mark.parametrize("relative", ["blobs/sha256/ab/cdef", "blobs", "", "blobs/./x"])
def test_confined_accepts_paths_inside(root: Path, relative: str) -> None:
    resolved = confined(root, relative)
    assert resolved == root.resolve() or root.resolve() in resolved.parents


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../../etc/passwd", "../blobs", "sha256:" + "A" * 64, "sha256:" + "0" * 63 + "/"],
)
def test_store_operations_take_digests_only(services: Services, digest: str) -> None:
    for operation in (
        services.store.local_path,
        services.store.exists,
        services.store.delete,
        services.store.unpacked,
        services.store.read_bytes,
    ):
        with pytest.raises(ValidationFailed):
            operation(digest)
