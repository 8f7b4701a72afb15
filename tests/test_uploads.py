"""Bad input on the upload route `POST /api/v1/models/{name}/versions`: each case is refused
with a clear status and message, and nothing is left behind in the registry or the store."""

from __future__ import annotations

import hashlib
import io
import pathlib
import pickle
import random
import socket
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from modelworks.api.services import Services
from modelworks.client import Client
from tests.models import external_data_onnx, linear_onnx

MODEL = "press-line"
VERSIONS = f"/api/v1/models/{MODEL}/versions"
MIB = 1024 * 1024
BOUNDARY = "mw-test-boundary-5f3c9a"


# helpers --------------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def onnx_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    return linear_onnx(tmp_path / f"linear-{seed}.onnx", seed=seed).read_bytes()


def create_model(http: httpx.Client, name: str = MODEL) -> None:
    r = http.post("/api/v1/models", json={"name": name})
    assert r.status_code == 201, r.text


def upload(
    http: httpx.Client,
    content: bytes,
    filename: str = "model.onnx",
    name: str = MODEL,
    description: str | None = None,
) -> httpx.Response:
    return http.post(
        f"/api/v1/models/{name}/versions",
        files={"file": (filename, content, "application/octet-stream")},
        data={"description": description} if description is not None else None,
    )


def message(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    msg: str = body["error"]["message"]
    return msg


def multipart_body(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body built by hand: (field name, filename or None, content)."""
    out = bytearray()
    for name, filename, content in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def blob_files(services: Services) -> list[Path]:
    blobs = services.store.root / "blobs"
    return sorted(p for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []


def scratch_files(services: Services) -> list[Path]:
    return sorted(p for p in services.store.scratch.iterdir())


def assert_nothing_stored(http: httpx.Client, services: Services, name: str = MODEL) -> None:
    r = http.get(f"/api/v1/models/{name}/versions")
    assert r.status_code == 200, r.text
    assert r.json() == []
    assert blob_files(services) == []
    assert scratch_files(services) == []


def assert_no_path_leak(r: httpx.Response, tmp_path: Path, services: Services) -> None:
    text = r.text
    for secret in (
        str(tmp_path),
        str(services.store.root),
        str(services.store.scratch),
        str(services.settings.home),
        "home",
        "/tmp",
        "upload-",
    ):
        assert secret not in text, f"{secret!r} leaked in {text!r}"


class Payload:
    """Unpickling this object creates `marker`: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


# the good path --------------------------------------------------------------------------------
def test_good_upload(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    data = onnx_bytes(tmp_path)

    r = upload(http, data, description="first cut of the press-line model")

    assert r.status_code == 201, r.text
    v = r.json()
    assert v["model"] == MODEL
    assert v["version"] == 1
    assert v["format"] == "onnx"
    assert v["signature"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert v["signature"]["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    assert v["size"] == len(data)
    assert v["digest"] == sha256(data)
    assert v["description"] == "first cut of the press-line model"

    got = http.get(f"{VERSIONS}/1")
    assert got.status_code == 200, got.text
    assert got.json()["description"] == "first cut of the press-line model"
    assert got.json()["digest"] == sha256(data)
    assert services.store.read_bytes(v["digest"]) == data
    assert scratch_files(services) == []


# size cap ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [MIB + MIB // 2, MIB + 1], ids=["1.5MiB", "cap+1"])
def test_oversized_upload_with_content_length(
    http: httpx.Client, services: Services, database_url: str, size: int
) -> None:
    """1.5 MiB is refused from its Content-Length; cap+1 passes that check and is cut off
    while streaming."""
    create_model(http)
    r = upload(http, random.Random(size).randbytes(size))

    assert r.status_code == 413, r.text
    assert str(MIB) in message(r)
    assert "MODELWORKS_MAX_UPLOAD_BYTES" in message(r)
    assert_nothing_stored(http, services)


def test_upload_at_the_cap_is_not_refused_for_size(
    http: httpx.Client, services: Services, database_url: str
) -> None:
    create_model(http)
    r = upload(http, b"\x00" * MIB)
    assert r.status_code == 415, r.text  # the bytes are no model, but their size was accepted
    assert_nothing_stored(http, services)


def test_oversized_streamed_upload_in_process(
    app: FastAPI, http: httpx.Client, services: Services, admin_key: str, database_url: str
) -> None:
    """A body of unknown length (chunked, no Content-Length) is capped while it streams."""
    create_model(http)
    body = multipart_body([("file", "model.onnx", random.Random(1).randbytes(MIB + MIB // 2))])
    sent: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks(body):
            sent.append(len(chunk))
            yield chunk

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {admin_key}"},
        ) as c:
            req = c.build_request(
                "POST",
                VERSIONS,
                content=stream(),
                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            )
            assert "content-length" not in req.headers
            return await c.send(req)

    r = anyio.run(call)

    assert r.status_code == 413, r.text
    assert str(MIB) in message(r)
    assert sum(sent) < len(body)  # the server stopped reading once over the cap
    assert_nothing_stored(http, services)


@pytest.mark.socket
def test_oversized_streamed_upload_over_a_socket(
    live_server: Any, http: httpx.Client, services: Services, admin_key: str, database_url: str
) -> None:
    create_model(http)
    body = multipart_body([("file", "model.onnx", random.Random(2).randbytes(MIB + MIB // 2))])
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {admin_key}"}
    ) as c:
        req = c.build_request(
            "POST",
            VERSIONS,
            content=chunks(body),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert "content-length" not in req.headers
        assert req.headers["transfer-encoding"] == "chunked"
        r = c.send(req)

    assert r.status_code == 413, r.text
    assert str(MIB) in message(r)
    assert_nothing_stored(http, services)


# formats ----------------------------------------------------------------------------------------
def assert_refused_format(r: httpx.Response) -> None:
    assert r.status_code == 415, r.text
    msg = message(r)
    assert "ONNX (.onnx)" in msg  # the accepted formats
    assert "torch.onnx.export" in msg and "skl2onnx" in msg  # how to convert
    assert "ONNX (.onnx)" in r.json()["error"]["details"]["accepted"]


NOT_ONNX = {
    "random-bytes": [
        ("model.onnx", random.Random(7).randbytes(4096)),
        ("model.bin.onnx", bytes(range(256)) * 8),
    ],
    "text-file": [
        ("notes.txt", b"this is a text file, not a model\n" * 20),
        ("model.onnx", b"this is a text file, not a model\n" * 20),
        ("model.onnx", b'{"weights": [1, 2, 3]}'),
    ],
}


@pytest.mark.parametrize("kind", sorted(NOT_ONNX))
def test_not_onnx_is_refused(
    http: httpx.Client, services: Services, database_url: str, kind: str
) -> None:
    create_model(http)
    for filename, content in NOT_ONNX[kind]:
        r = upload(http, content, filename=filename)
        assert_refused_format(r)
    assert_nothing_stored(http, services)


@pytest.mark.parametrize("filename", ["model.pkl", "model.onnx", "model"])
def test_pickle_is_refused_and_never_loaded(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str, filename: str
) -> None:
    create_model(http)
    marker = tmp_path / "pwned"
    for protocol in sorted({0, 2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL}):
        # the payload is real: unpickling it runs code (checked here on a different marker)
        proof = tmp_path / f"proof-{protocol}"
        pickle.loads(pickle.dumps(Payload(proof), protocol=protocol))
        assert proof.exists()

        r = upload(http, pickle.dumps(Payload(marker), protocol=protocol), filename=filename)

        assert_refused_format(r)
        assert not marker.exists()
    assert_nothing_stored(http, services)


def torch_like_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
        zf.writestr("archive/data/0", b"\x00" * 64)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


@pytest.mark.parametrize("filename", ["model.onnx", "model.pt", "model.zip"])
def test_torch_archive_is_refused(
    http: httpx.Client, services: Services, database_url: str, filename: str
) -> None:
    create_model(http)
    r = upload(http, torch_like_zip(), filename=filename)
    assert_refused_format(r)
    assert_nothing_stored(http, services)


def test_unsafe_suffix_is_refused_even_with_onnx_content(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    data = onnx_bytes(tmp_path)
    for filename in ("model.pt", "model.PTH", "weights.joblib", "model.h5", "dir\\model.pt"):
        r = upload(http, data, filename=filename)
        assert_refused_format(r)
        assert "runs code" in message(r), filename  # says why
    assert_nothing_stored(http, services)


# external data ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "location",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "weights.bin",
        "..\\..\\secret",
        "C:\\Windows\\win.ini",
        "sub/../../x",
    ],
)
def test_external_data_is_refused(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str, location: str
) -> None:
    create_model(http)
    data = external_data_onnx(tmp_path / "ext.onnx", location).read_bytes()

    r = upload(http, data)

    assert r.status_code == 422, r.text
    assert "external" in message(r)
    assert_no_path_leak(r, tmp_path, services)
    assert_nothing_stored(http, services)


# names, duplicates, unknown models --------------------------------------------------------------
BAD_NAMES = {
    "traversal": ["../x", "%2E%2E%2Fx", "..%2Fx", "..", "a..b", "a/b", "a\\b", "/abs"],
    # control characters are refused earlier, with 400 (tests/security/test_22_management_inputs)
    "characters": ["A B", "Upper", "a b", "naïve", "x;drop", "-lead", ".hidden", "_u"],
    "length": ["", "x" * 65, "x" * 200],
}


@pytest.mark.parametrize("kind", sorted(BAD_NAMES))
def test_invalid_model_name_is_refused(http: httpx.Client, database_url: str, kind: str) -> None:
    for name in BAD_NAMES[kind]:
        r = http.post("/api/v1/models", json={"name": name})
        assert r.status_code == 422, (name, r.text)
        msg = message(r)
        assert "lowercase letters, digits, '.', '_' or '-'" in msg, (name, msg)
        assert "1-64 characters" in msg and "no '..'" in msg, (name, msg)
        assert r.json()["error"]["details"]["rule"] == "^[a-z0-9][a-z0-9._-]{0,63}$"
    assert http.get("/api/v1/models").json() == []


def test_invalid_model_name_in_upload_path(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    data = onnx_bytes(tmp_path)
    for segment in ("A%20B", "Upper", "a..b", "%2E%2E", "x" * 65):
        r = upload(http, data, name=segment)
        assert r.status_code == 422, (segment, r.text)
        assert "lowercase letters, digits" in message(r)
    for segment in ("%2E%2E%2Fx", "..%2Fx"):  # '/' once decoded: no route takes it
        r = upload(http, data, name=segment)
        assert r.status_code == 404, (segment, r.text)
        assert "no route" in message(r)
    assert_nothing_stored(http, services)


def test_duplicate_model_is_a_conflict(http: httpx.Client, database_url: str) -> None:
    create_model(http)
    r = http.post("/api/v1/models", json={"name": MODEL})
    assert r.status_code == 409, r.text
    assert "already exists" in message(r)
    assert [m["name"] for m in http.get("/api/v1/models").json()] == [MODEL]


def test_upload_to_unknown_model(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    r = upload(http, onnx_bytes(tmp_path), name="no-such-model")
    assert r.status_code == 404, r.text
    assert "no-such-model" in message(r)
    assert blob_files(services) == []
    assert scratch_files(services) == []


# malformed requests -----------------------------------------------------------------------------
def test_multipart_without_file_field(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    r = http.post(
        VERSIONS,
        data={"description": "no file here"},
        files={"model": ("model.onnx", onnx_bytes(tmp_path), "application/octet-stream")},
    )
    assert r.status_code == 422, r.text
    assert "'file'" in message(r)
    assert_nothing_stored(http, services)


def test_multipart_with_only_text_fields(
    http: httpx.Client, services: Services, database_url: str
) -> None:
    create_model(http)
    body = multipart_body([("description", None, b"just a description")])
    r = http.post(
        VERSIONS,
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert r.status_code == 422, r.text
    assert "'file'" in message(r)
    assert_nothing_stored(http, services)


def test_empty_file_is_refused(http: httpx.Client, services: Services, database_url: str) -> None:
    create_model(http)
    r = upload(http, b"")
    assert r.status_code == 422, r.text
    assert "empty" in message(r)
    assert_nothing_stored(http, services)


def test_non_multipart_body(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    for content_type, content in [
        ("application/json", b'{"file": "model.onnx"}'),
        ("application/octet-stream", onnx_bytes(tmp_path)),
        ("application/x-www-form-urlencoded", b"file=model.onnx"),
        ("text/plain", b"model"),
        ("multipart/mixed; boundary=x", b"--x--\r\n"),
    ]:
        r = http.post(VERSIONS, content=content, headers={"Content-Type": content_type})
        assert r.status_code == 415, (content_type, r.text)
        assert "multipart/form-data" in message(r)
    r = http.post(VERSIONS, content=b"no content type at all")
    assert r.status_code == 415, r.text
    # multipart without a boundary is a malformed multipart body (tests/security/test_17)
    r = http.post(VERSIONS, content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400, r.text
    assert "boundary" in message(r) and "curl -F file=@" in message(r)
    assert_nothing_stored(http, services)


def test_truncated_multipart_body_stores_nothing(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    body = multipart_body([("file", "model.onnx", onnx_bytes(tmp_path))])
    r = http.post(
        VERSIONS,
        content=body[: len(body) // 2],
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert 400 <= r.status_code < 500, r.text
    assert_nothing_stored(http, services)


def test_multipart_body_cut_before_its_closing_boundary_is_refused(
    http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    """A body that stops inside the file part never says where the file ends: what arrived
    may be any prefix of the model, and a prefix of an ONNX file can itself be a valid model."""
    import onnx

    create_model(http)
    path = linear_onnx(tmp_path / "meta.onnx")
    model = onnx.load_model(str(path))
    prefix = model.SerializeToString()  # the model without its trailing metadata
    onnx.helper.set_model_props(model, {"trained_on": "press-line-2024", "owner": "ml-team"})
    full = model.SerializeToString()
    assert full.startswith(prefix) and len(full) > len(prefix)
    body = multipart_body([("description", None, b"cut short"), ("file", "model.onnx", full)])
    cut_at = body.index(full) + len(prefix)

    for truncated in (body[:cut_at], body[: body.index(full) + len(full)]):
        r = http.post(
            VERSIONS,
            content=truncated,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert r.status_code == 400, r.text
        assert "malformed multipart" in message(r)
    assert_nothing_stored(http, services)


# interrupted uploads ----------------------------------------------------------------------------
def test_client_disconnect_in_process(
    app: FastAPI, http: httpx.Client, services: Services, admin_key: str, database_url: str
) -> None:
    create_model(http)
    body = multipart_body([("file", "model.onnx", random.Random(3).randbytes(256 * 1024))])
    half = body[: len(body) // 2]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": VERSIONS,
        "raw_path": VERSIONS.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {admin_key}".encode()),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    received: list[dict[str, Any]] = [{"type": "http.request", "body": half, "more_body": True}]
    saw_temp_file: list[bool] = []
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if received:
            return received.pop(0)
        saw_temp_file.append(any(services.store.scratch.glob("upload-*.part")))
        return {"type": "http.disconnect"}

    async def send(msg: MutableMapping[str, Any]) -> None:
        sent.append(msg)

    async def call() -> None:
        await app(scope, receive, send)

    anyio.run(call)

    assert saw_temp_file and saw_temp_file[0]  # the upload really was under way
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert not starts or starts[0]["status"] != 201
    assert_nothing_stored(http, services)


@pytest.mark.socket
def test_client_disconnect_over_a_socket(
    live_server: Any, http: httpx.Client, services: Services, admin_key: str, database_url: str
) -> None:
    create_model(http)
    body = multipart_body([("file", "model.onnx", random.Random(4).randbytes(512 * 1024))])
    head = (
        f"POST {VERSIONS} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{live_server.port}\r\n"
        f"Authorization: Bearer {admin_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    scratch = services.store.scratch
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])
        deadline = time.monotonic() + 10
        while not any(scratch.glob("upload-*.part")):  # wait until the server is writing it
            assert time.monotonic() < deadline, "the server never started writing the upload"
            time.sleep(0.01)
    # the socket is closed with half the body sent
    deadline = time.monotonic() + 10
    while any(scratch.iterdir()):
        assert time.monotonic() < deadline, f"temp files left behind: {list(scratch.iterdir())}"
        time.sleep(0.02)

    assert_nothing_stored(http, services)
    r = upload(http, b"unrelated follow-up", filename="notes.txt")  # the server still works
    assert r.status_code == 415


# concurrency ------------------------------------------------------------------------------------
@pytest.mark.socket
def test_concurrent_uploads_get_distinct_versions(
    live_server: Any,
    http: httpx.Client,
    services: Services,
    admin_key: str,
    tmp_path: Path,
    database_url: str,
) -> None:
    create_model(http)
    files = [linear_onnx(tmp_path / f"m{seed}.onnx", seed=seed) for seed in (11, 12)]
    barrier = threading.Barrier(len(files))
    results: list[Any] = [None] * len(files)
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            with Client(live_server.url, admin_key) as c:
                barrier.wait(timeout=10)
                results[i] = c.push(MODEL, files[i])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)

    assert {v["version"] for v in results} == {1, 2}
    assert {v["digest"] for v in results} == {sha256(f.read_bytes()) for f in files}
    for v in results:
        got = http.get(f"{VERSIONS}/{v['version']}")
        assert got.status_code == 200, got.text
        assert got.json()["digest"] == v["digest"]
        assert services.store.exists(v["digest"])
    assert len(http.get(VERSIONS).json()) == 2
    assert scratch_files(services) == []


# authentication ---------------------------------------------------------------------------------
def test_upload_without_a_key(
    anon: httpx.Client, http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    r = upload(anon, onnx_bytes(tmp_path))
    assert r.status_code == 401, r.text
    assert "API key" in message(r)
    assert r.headers["www-authenticate"] == "Bearer"
    assert_nothing_stored(http, services)


def test_upload_with_a_bad_key(
    anon: httpx.Client,
    http: httpx.Client,
    services: Services,
    tmp_path: Path,
    database_url: str,
    admin_key: str,
) -> None:
    create_model(http)
    data = onnx_bytes(tmp_path)
    bogus = "mw_" + "A" * 43
    assert len(bogus) == len(admin_key)
    for header in (
        f"Bearer {bogus}",
        f"Bearer {admin_key[:-1]}x" if admin_key[-1] != "x" else f"Bearer {admin_key[:-1]}y",
        "Bearer not-a-key",
        "Basic dXNlcjpwYXNz",
        "Bearer ",
        admin_key,
    ):
        r = anon.post(
            VERSIONS,
            headers={"Authorization": header},
            files={"file": ("model.onnx", data, "application/octet-stream")},
        )
        assert r.status_code == 401, (header, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert admin_key not in r.text
    assert_nothing_stored(http, services)


def test_upload_with_a_revoked_key(
    anon: httpx.Client, http: httpx.Client, services: Services, tmp_path: Path, database_url: str
) -> None:
    create_model(http)
    key, secret = services.keys.create(
        project_id=services.default_project_id, role="developer", name="ci"
    )
    auth = {"Authorization": f"Bearer {secret}"}
    ok = anon.post(
        VERSIONS,
        headers=auth,
        files={"file": ("model.onnx", onnx_bytes(tmp_path, 1), "application/octet-stream")},
    )
    assert ok.status_code == 201, ok.text  # the key worked before it was revoked

    services.keys.revoke(key.id)
    r = anon.post(
        VERSIONS,
        headers=auth,
        files={"file": ("model.onnx", onnx_bytes(tmp_path, 2), "application/octet-stream")},
    )

    assert r.status_code == 401, r.text
    assert "revoked" in message(r)
    versions = http.get(VERSIONS).json()
    assert [v["version"] for v in versions] == [1]
    assert len(blob_files(services)) == 1
    assert scratch_files(services) == []
