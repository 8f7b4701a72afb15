"""SECURITY.md class 8: trusting declared sizes.

Shapes, binary sizes, length prefixes and Content-Length values that would drive an allocation
are checked with Python integers against the cap and against the bytes actually received, before
anything is allocated: each crafted case is a 4xx (413 for sizes over the cap, 400 for sizes
that are invalid or disagree with the body), and the server still serves the next request.

The cases only read, so they share one server (module scope): each also shows that the cases
before it left the server working.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx

INFER = "/v2/models/m/infer"
U64 = 2**64
GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}


@dataclass
class Server:
    http: httpx.Client
    services: Services
    folder: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The suite's app (see tests/conftest.py) with model `m` served, shared by the module."""
    folder = tmp_path_factory.mktemp("declared-sizes")
    settings = Settings(
        home=folder / "home", max_upload_bytes=1024 * 1024, allowed_hosts="testserver"
    )
    settings.home.mkdir()
    upgrade(settings.resolved_database_url)
    services = Services.build(settings)
    key = services.keys.bootstrap_admin()
    transport = SyncASGITransport(create_app(settings, services))
    try:
        with httpx.Client(  # closing the client closes the transport
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {key}"},
        ) as http:
            assert http.post("/api/v1/models", json={"name": "m"}).status_code == 201
            onnx = linear_onnx(folder / "m.onnx").read_bytes()
            r = http.post("/api/v1/models/m/versions", files={"file": ("m.onnx", onnx)})
            assert r.status_code == 201, r.text
            yield Server(http, services, folder)
    finally:
        services.close()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """Around each case: nothing appears outside the store."""
    before = outside_store(server)
    yield server.http
    assert outside_store(server) == before
    assert {p.name for p in server.services.settings.home.iterdir()} <= HOME_CHILDREN


def outside_store(server: Server) -> set[str]:
    store = server.services.store.root
    inside = {str(p) for p in server.folder.rglob("*") if p != store and store not in p.parents}
    return inside | {p.name for p in server.folder.parent.iterdir()}


def assert_still_serving(http: httpx.Client) -> None:
    r = http.post(INFER, json=GOOD)
    assert r.status_code == 200, r.text
    assert http.get("/livez").status_code == 200


# JSON tensors -----------------------------------------------------------------------------------
JSON_SHAPES: dict[str, tuple[Any, str, int]] = {
    # name: (shape, datatype, expected status)
    "product-is-2**64": ([2**32, 2**32], "FP32", 413),
    "product-wraps-to-zero": ([2**32, 2**32, 2**32, 2**32], "FP32", 413),
    "int64-max-times-2": ([2**63 - 1, 2], "FP32", 413),
    "single-dim-2**64": ([U64], "FP32", 413),
    "single-dim-10**30": ([10**30], "INT64", 413),
    "overflow-then-zero": ([2**62, 2**62, 0], "FP32", 413),
    "bytes-2**31-squared": ([2**31, 2**31], "BYTES", 413),
    "negative-dim": ([-1, 4], "FP32", 400),
    "negative-second-dim": ([1, -4], "FP32", 400),
    "negative-pair-positive-product": ([-2, -2], "FP32", 400),
    "33-dims": ([1] * 33, "FP32", 400),
    "float-dim": ([1.5, 4], "FP32", 400),
    "bool-dim": ([True, 4], "FP32", 400),
    "string-shape": ("1,4", "FP32", 400),
    "nested-dim": ([[1], 4], "FP32", 400),
}


@pytest.mark.parametrize("case", sorted(JSON_SHAPES))
def test_declared_json_shape(http: httpx.Client, case: str) -> None:
    shape, datatype, status = JSON_SHAPES[case]
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": [1, 2, 3, 4]}]}

    r = http.post(INFER, content=json.dumps(body), headers={"Content-Type": "application/json"})

    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert_still_serving(http)


# the binary tensor extension --------------------------------------------------------------------
def binary(inputs: list[dict[str, Any]], tail: bytes, header_len: str | None = None) -> Any:
    head = json.dumps({"inputs": inputs}).encode()
    length = str(len(head)) if header_len is None else header_len
    return head + tail, {"Inference-Header-Content-Length": length}


FP32x4 = np.arange(4, dtype="<f4").tobytes()


def fp32(shape: Any, size: Any = 16) -> dict[str, Any]:
    return {
        "name": "x",
        "shape": shape,
        "datatype": "FP32",
        "parameters": {"binary_data_size": size},
    }


def bytes_input(count: int, size: int) -> dict[str, Any]:
    return {
        "name": "x",
        "shape": [count],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": size},
    }


BINARY: dict[str, tuple[Any, int]] = {
    "shape-product-2**64": (binary([fp32([2**32, 2**32])], FP32x4), 413),
    "shape-single-2**64": (binary([fp32([U64])], FP32x4), 413),
    "shape-negative": (binary([fp32([-4])], FP32x4), 400),
    "shape-33-dims": (binary([fp32([1] * 33)], FP32x4), 400),
    "size-past-body": (binary([fp32([1, 4], 2**40)], FP32x4), 400),
    "size-2**64": (binary([fp32([1, 4], U64)], FP32x4), 400),
    "size-negative": (binary([fp32([1, 4], -16)], FP32x4), 400),
    "size-float": (binary([fp32([1, 4], 16.0)], FP32x4), 400),
    "size-bool": (binary([fp32([1, 4], True)], FP32x4), 400),
    "size-disagrees-with-shape": (binary([fp32([1, 4], 8)], FP32x4[:8]), 400),
    "shape-bigger-than-data": (binary([fp32([1000, 4], 16)], FP32x4), 400),
    "two-inputs-share-bytes": (binary([fp32([1, 4]), {**fp32([1, 4]), "name": "y"}], FP32x4), 400),
    "trailing-bytes": (binary([fp32([1, 4])], FP32x4 + b"\x00" * 8), 400),
    "header-length-past-body": (binary([fp32([1, 4])], FP32x4, header_len=str(2**40)), 400),
    "header-length-negative": (binary([fp32([1, 4])], FP32x4, header_len="-5"), 400),
    "header-length-hex": (binary([fp32([1, 4])], FP32x4, header_len="0x40"), 400),
    "bytes-prefix-past-end": (
        binary([bytes_input(1, 8)], struct.pack("<I", 2**32 - 1) + b"abcd"),
        400,
    ),
    "bytes-count-past-end": (binary([bytes_input(3, 9)], struct.pack("<I", 5) + b"hello"), 400),
    "bytes-huge-count": (binary([bytes_input(2**40, 9)], struct.pack("<I", 5) + b"hello"), 413),
}


@pytest.mark.parametrize("case", sorted(BINARY))
def test_declared_binary_sizes(http: httpx.Client, case: str) -> None:
    (body, headers), status = BINARY[case]

    r = http.post(
        INFER, content=body, headers={**headers, "Content-Type": "application/octet-stream"}
    )

    assert r.status_code == status, r.text
    assert_still_serving(http)


# Content-Length --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("declared", "status"),
    [(str(10**30), 413), (str(2**63), 413), ("-1", 400), ("12abc", 400), ("1e9", 400)],
)
@pytest.mark.parametrize("path", [INFER, "/api/v1/models"])
def test_declared_content_length(http: httpx.Client, declared: str, status: int, path: str) -> None:
    r = http.post(
        path,
        content=json.dumps(GOOD).encode(),
        headers={"Content-Type": "application/json", "Content-Length": declared},
    )

    assert r.status_code == status, r.text
    assert_still_serving(http)


# integers past 64 bits in paths and queries ----------------------------------------------------
HUGE = str(2**63)
INTEGER_PARAMS = {
    "version-2**63": ("GET", f"/api/v1/models/m/versions/{HUGE}", None),
    "version-2**64+1": ("GET", f"/api/v1/models/m/versions/{2**64 + 1}", None),
    "version-minus-2**63-1": ("GET", f"/api/v1/models/m/versions/-{2**63 + 1}", None),
    "version-int64-max": ("GET", f"/api/v1/models/m/versions/{2**63 - 1}", None),
    "key-id-2**63": ("DELETE", f"/api/v1/keys/{HUGE}", None),
    "usage-key-2**63": ("GET", f"/api/v1/usage?key={HUGE}", None),
    "audit-limit-2**63": ("GET", f"/api/v1/audit?limit={HUGE}", None),
    "alias-version-2**63": ("PUT", "/api/v1/models/m/aliases/big", {"version": 2**63}),
    "v2-version-2**63": ("GET", f"/v2/models/m/versions/{HUGE}", None),
    "v2-infer-version-2**63": ("POST", f"/v2/models/m/versions/{HUGE}/infer", GOOD),
    "v2-selector-2**63": ("POST", f"/v2/models/m:{HUGE}/infer", GOOD),
    "tf-version-2**63": ("GET", f"/v1/models/m/versions/{HUGE}", None),
    "tf-predict-version-2**63": (
        "POST",
        f"/v1/models/m/versions/{HUGE}:predict",
        {"instances": [[1, 2, 3, 4]]},
    ),
}


@pytest.mark.parametrize("case", sorted(INTEGER_PARAMS))
def test_integers_past_64_bits_are_4xx(http: httpx.Client, case: str) -> None:
    """A number in a path or query reaches the database as a bound parameter: past 64 bits it
    must be refused or be missing, never overflow the driver (a 500)."""
    method, path, body = INTEGER_PARAMS[case]

    r = http.request(method, path, json=body)

    assert r.status_code in (400, 404, 422), r.text
    assert_still_serving(http)
