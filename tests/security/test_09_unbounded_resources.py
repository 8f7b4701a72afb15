"""SECURITY.md class 9: unbounded resource use at the HTTP layer.

Body caps per route family, enforced from Content-Length and while a chunked body streams in
(the server stops reading); JSON depth and finite numbers only; multipart part counts; a bounded
queue per model (503 + Retry-After, with a real model held busy); request deadlines (504); rate
limits and quotas per key (429 + Retry-After). Every case is a 4xx/503/504, nothing is created
by a refused request, and the server still serves the next one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.models import linear_onnx

KIB = 1024
MIB = 1024 * KIB
REQUEST_CAP = 64 * KIB  # the inference body cap of this module's app
INFER = "/v2/models/m/infer"
GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
TMP_CHILDREN = {"home", "m.onnx"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The suite's settings with a small inference body cap, a queue of one request per model
    and a short request deadline (see tests/test_pool.py for apps built from Settings)."""
    s = Settings(
        home=tmp_path / "home",
        max_upload_bytes=MIB,
        max_request_bytes=REQUEST_CAP,
        queue_size=1,
        request_timeout_s=1.0,
        allowed_hosts="testserver,127.0.0.1,localhost",
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture(autouse=True)
def nothing_outside_the_store(settings: Settings, tmp_path: Path) -> Iterator[None]:
    """After each test: the home holds only the database and the store, and the test's folder
    only the files the test itself wrote."""
    yield
    assert {p.name for p in settings.home.iterdir()} <= HOME_CHILDREN
    assert {p.name for p in tmp_path.iterdir()} <= TMP_CHILDREN


@pytest.fixture
def served(http: httpx.Client, tmp_path: Path) -> None:
    assert http.post("/api/v1/models", json={"name": "m"}).status_code == 201
    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    assert http.post("/api/v1/models/m/versions", files={"file": ("m.onnx", onnx)}).is_success


def assert_still_serving(http: httpx.Client) -> None:
    r = http.post(INFER, json=GOOD)
    assert r.status_code == 200, r.text
    assert http.get("/livez").status_code == 200


def names(http: httpx.Client, path: str) -> list[str]:
    return sorted(str(x["name"]) for x in http.get(path).json())


# body caps --------------------------------------------------------------------------------------
def padded(route: str, size: int) -> bytes:
    """A well-formed body for `route`, padded with a long string to `size` bytes."""
    pad = "x" * size
    bodies: dict[str, Any] = {
        "/api/v1/models": {"name": "big", "description": pad},
        "/api/v1/keys": {"name": pad, "role": "viewer"},
        "/api/v1/projects": {"name": "big", "description": pad},
        INFER: {**GOOD, "id": pad},
        "/v1/embeddings": {"model": "m", "input": pad},
        "/models/m": {"inputs": pad},
        "/v1/models/m:predict": {"instances": [[1, 2, 3, 4]], "signature_name": pad},
    }
    return json.dumps(bodies[route]).encode()


MANAGEMENT = ["/api/v1/models", "/api/v1/keys", "/api/v1/projects"]
INFERENCE = [INFER, "/v1/embeddings", "/models/m", "/v1/models/m:predict"]
ROUTE_CAPS = [(r, MIB) for r in MANAGEMENT] + [(r, REQUEST_CAP) for r in INFERENCE]


def chunked_post(app: FastAPI, key: str, path: str, body: bytes) -> tuple[httpx.Response, int]:
    """POST `body` in 16 KiB chunks with no Content-Length; returns the bytes the app pulled."""
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for i in range(0, len(body), 16 * KIB):
            sent += len(body[i : i + 16 * KIB])
            yield body[i : i + 16 * KIB]

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {key}"},
        ) as c:
            req = c.build_request(
                "POST", path, content=stream(), headers={"Content-Type": "application/json"}
            )
            assert "content-length" not in req.headers
            return await c.send(req)

    return anyio.run(call), sent


@pytest.mark.parametrize(("route", "cap"), ROUTE_CAPS)
def test_body_over_the_cap_is_413(
    app: FastAPI, http: httpx.Client, admin_key: str, served: None, route: str, cap: int
) -> None:
    body = padded(route, 2 * cap)

    declared = http.post(route, content=body, headers={"Content-Type": "application/json"})
    streamed, pulled = chunked_post(app, admin_key, route, body)

    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert str(cap) in r.text
    assert pulled < len(body), "the server read the whole body past its cap"
    assert names(http, "/api/v1/models") == ["m"]
    assert len(http.get("/api/v1/keys").json()) == 1
    assert names(http, "/api/v1/projects") == ["default"]
    assert_still_serving(http)


def test_bodies_at_the_cap_are_read(http: httpx.Client, served: None) -> None:
    """The caps are per route family: the same bytes pass management and not inference."""
    body = json.dumps({"name": "big", "tags": {"pad": "x" * (REQUEST_CAP + 100)}})
    json_type = {"Content-Type": "application/json"}
    assert http.post("/api/v1/models", content=body, headers=json_type).status_code == 201
    assert http.post(INFER, content=padded(INFER, REQUEST_CAP + 100)).status_code == 413
    assert_still_serving(http)


# JSON depth -------------------------------------------------------------------------------------
NESTED_ROUTES = [
    ("POST", INFER, '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":%s}]}'),
    ("POST", "/v1/embeddings", '{"model":"m","input":%s}'),
    ("POST", "/models/m", '{"inputs":%s}'),
    ("POST", "/v1/models/m:predict", '{"instances":%s}'),
    ("POST", "/v1/models/m:predict", '{"inputs":{"x":%s}}'),
    ("POST", "/api/v1/models", '{"name":"deep","tags":%s}'),
    ("PATCH", "/api/v1/models/m", '{"tags":%s}'),
    ("POST", "/api/v1/keys", '{"name":"deep","models":%s}'),
    ("PUT", "/api/v1/models/m/aliases/deep", '{"version":%s}'),
]


def nested(depth: int, flavour: str) -> str:
    if flavour == "arrays":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("flavour", ["arrays", "objects"])
@pytest.mark.parametrize("depth", [100, 50_000])
def test_deeply_nested_json_is_refused(
    http: httpx.Client, served: None, depth: int, flavour: str
) -> None:
    value = nested(depth, flavour)
    for method, path, template in NESTED_ROUTES:
        r = http.request(
            method, path, content=template % value, headers={"Content-Type": "application/json"}
        )
        assert r.status_code in (400, 413, 422), (method, path, r.status_code, r.text[:200])
        if path.startswith("/api/"):
            assert r.status_code == 400 and "nested deeper" in r.text, (path, r.text[:200])
    assert names(http, "/api/v1/models") == ["m"]
    assert http.get("/api/v1/models/m").json()["aliases"] == {}
    assert_still_serving(http)


# finite numbers only ----------------------------------------------------------------------------
NON_FINITE_ROUTES = [
    ("POST", INFER, '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[%s,1,2,3]}]}'),
    ("POST", "/v1/models/m:predict", '{"instances":[[%s,1,2,3]]}'),
    ("POST", "/v1/models/m:predict", '{"inputs":{"x":[[1,2,%s,3]]}}'),
    ("POST", "/v1/models/m/versions/1:predict", '{"instances":[{"x":[%s,1,2,3]}]}'),
    ("PATCH", "/api/v1/models/m", '{"serving":{"max_delay_ms":%s}}'),
    ("POST", "/api/v1/keys", '{"name":"nan","rate_limit":%s}'),
    ("POST", "/api/v1/projects", '{"name":"nan","rate_limit":%s}'),
    ("PUT", "/api/v1/models/m/aliases/nan", '{"version":%s}'),
]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(http: httpx.Client, served: None, token: str) -> None:
    for method, path, template in NON_FINITE_ROUTES:
        if path.startswith("/v1/models/") and token != "1e400":
            continue  # TF-Serving's routes take NaN and Infinity tokens as data (test_tfserving)
        r = http.request(
            method, path, content=template % token, headers={"Content-Type": "application/json"}
        )
        expected = (400,) if not path.startswith("/api/") else (400, 422)
        assert r.status_code in expected, (token, method, path, r.status_code, r.text[:200])
    assert http.get("/api/v1/models/m").json()["serving"] == {}
    assert len(http.get("/api/v1/keys").json()) == 1
    assert names(http, "/api/v1/projects") == ["default"]
    assert_still_serving(http)


# multipart --------------------------------------------------------------------------------------
BOUNDARY = "sec-boundary-09"


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = bytearray()
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return bytes(out + f"--{BOUNDARY}--\r\n".encode())


@pytest.mark.parametrize(
    ("case", "status"),
    [("17-parts", 400), ("1000-parts", 400), ("long-field", 413), ("two-files", 422)],
)
def test_multipart_abuse_is_refused(
    http: httpx.Client, services: Services, served: None, tmp_path: Path, case: str, status: int
) -> None:
    onnx = (tmp_path / "m.onnx").read_bytes()
    file_part = ("file", "m.onnx", onnx)
    parts = {
        "17-parts": [("description", None, b"x")] * 16 + [file_part],
        "1000-parts": [(f"f{i}", None, b"x") for i in range(1000)] + [file_part],
        "long-field": [("description", None, b"x" * (16 * KIB + 1)), file_part],
        "two-files": [file_part, file_part],
    }[case]

    r = http.post(
        "/api/v1/models/m/versions",
        content=multipart(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )

    assert r.status_code == status, r.text
    assert len(http.get("/api/v1/models/m/versions").json()) == 1
    assert list(services.store.scratch.iterdir()) == []
    assert_still_serving(http)


# a bounded queue per model, and request deadlines -----------------------------------------------
class HeldModel:
    """Holds the served model's runs until released, so requests pile up for real."""

    def __init__(self, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
        (entry,) = services.pool.entries()
        assert entry.model is not None and entry.batcher is None
        self.running = threading.Event()
        self.release = threading.Event()
        predict = entry.model.predict

        def held(feeds: Any, outputs: Any = None, run_options: Any = None) -> Any:
            self.running.set()
            self.release.wait(10)
            return predict(feeds, outputs, run_options)

        monkeypatch.setattr(entry.model, "predict", held)
        self.entry = entry

    def depth(self) -> int:
        return self.entry.batcher.depth if self.entry.batcher is not None else 0


def in_background(client: httpx.Client, results: list[Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(client.post(INFER, json=GOOD)))
    thread.daemon = True
    thread.start()
    return thread


def wait_for(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the server never reached the expected state")


@pytest.fixture
def held(
    http: httpx.Client, services: Services, served: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HeldModel]:
    assert http.get("/v2/models/m/ready").json()["ready"] is True  # loaded, no batcher yet
    model = HeldModel(services, monkeypatch)
    yield model
    model.release.set()


def test_full_queue_is_503_with_retry_after(http: httpx.Client, held: HeldModel) -> None:
    results: list[Any] = []
    running = in_background(http, results)
    wait_for(held.running.is_set)  # the first request holds the model
    queued = in_background(http, results)
    wait_for(lambda: held.depth() == 1)  # the second fills the queue of one

    refused = [
        http.post(INFER, json=GOOD),
        http.post("/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]}),
    ]

    for r in refused:
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "capacity" in r.text
    held.release.set()
    running.join(10)
    queued.join(10)
    assert [r.status_code for r in results] == [200, 200]
    assert_still_serving(http)


def test_request_past_its_deadline_is_504(http: httpx.Client, held: HeldModel) -> None:
    results: list[Any] = []
    running = in_background(http, results)
    wait_for(held.running.is_set)
    queued = in_background(http, results)
    wait_for(lambda: held.depth() == 1)
    threading.Event().wait(1.2)  # longer than the 1 s deadline of the queued request
    held.release.set()
    running.join(10)
    queued.join(10)

    # the running request is past its deadline too: both answer 504, the late result dropped
    assert [r.status_code for r in results] == [504, 504]
    assert all("deadline" in r.text for r in results)
    assert_still_serving(http)


# rate limits and quotas per key -----------------------------------------------------------------
@pytest.mark.parametrize(
    "limits",
    [{"rate_limit": 0.01, "burst": 1}, {"quota": {"requests": 1}}],
    ids=["rate", "quota"],
)
def test_per_key_limits_are_429_with_retry_after(
    http: httpx.Client, anon: httpx.Client, served: None, limits: dict[str, Any]
) -> None:
    created = http.post("/api/v1/keys", json={"role": "invoker", "name": "metered", **limits})
    assert created.status_code == 201, created.text
    auth = {"Authorization": f"Bearer {created.json()['key']}"}

    first = anon.post(INFER, json=GOOD, headers=auth)
    second = anon.post(INFER, json=GOOD, headers=auth)
    third = anon.post("/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]}, headers=auth)

    assert first.status_code == 200, first.text
    for r in (second, third):
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
    assert_still_serving(http)  # the admin key is not affected
