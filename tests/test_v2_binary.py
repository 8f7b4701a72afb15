"""The binary tensor extension: tritonclient's defaults, and malformed binary bodies."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelworks.client import Client
from tests.conftest import LiveServer
from tests.models import linear_onnx, linear_reference


@pytest.fixture
def model(client: Client, tmp_path: Path) -> str:
    client.create_model("m")
    client.push("m", linear_onnx(tmp_path / "m.onnx"))
    return "m"


def _binary_body(header: dict, tail: bytes) -> tuple[bytes, dict[str, str]]:  # type: ignore[type-arg]
    head = json.dumps(header).encode()
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


def test_tritonclient_defaults_binary_in_and_out(
    model: str, live_server: LiveServer, admin_key: str
) -> None:
    import tritonclient.http as triton

    c = triton.InferenceServerClient(url=f"127.0.0.1:{live_server.port}")
    try:
        auth = {"Authorization": f"Bearer {admin_key}"}
        assert "binary_tensor_data" in c.get_server_metadata(headers=auth)["extensions"]
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        inp = triton.InferInput("x", [3, 4], "FP32")
        inp.set_data_from_numpy(x)  # binary_data=True is the default
        r = c.infer(model, [inp], headers=auth)  # no outputs: binary_data_output=true
        np.testing.assert_allclose(r.as_numpy("y"), linear_reference(x), rtol=1e-5)
        assert r.get_output("y")["parameters"]["binary_data_size"] == 3 * 2 * 4
        # binary in, JSON out
        out = triton.InferRequestedOutput("y", binary_data=False)
        r = c.infer(model, [inp], outputs=[out], headers=auth, request_id="7")
        np.testing.assert_allclose(r.as_numpy("y"), linear_reference(x), rtol=1e-5)
        assert r.get_response()["id"] == "7"
    finally:
        c.close()


def test_binary_response_layout(http: httpx.Client, model: str) -> None:
    x = np.ones((2, 4), np.float32)
    body, headers = _binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        x.tobytes(),
    )
    r = http.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 16
    y = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(y, linear_reference(x), rtol=1e-5)


@pytest.mark.parametrize(
    ("header_len", "tail", "size", "fragment"),
    [
        ("9999", b"\0" * 32, 32, "body has only"),  # header claims more than the body holds
        (None, b"\0" * 16, 32, "past the end"),  # blob shorter than binary_data_size
        (None, b"\0" * 40, 32, "bytes of binary data follow"),  # bytes left over
        (None, b"\0" * 24, 24, "needs 32 bytes"),  # size does not match the shape
        ("abc", b"\0" * 32, 32, "non-negative integer"),
        ("0", b"\0" * 32, 32, "raw binary"),
    ],
)
def test_malformed_binary_bodies_are_400(
    http: httpx.Client, model: str, header_len: str | None, tail: bytes, size: int, fragment: str
) -> None:
    body, headers = _binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        },
        tail,
    )
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = header_len
    r = http.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    assert http.get("/v2/health/live").status_code == 200


def test_bytes_length_prefix_past_the_end_is_400(http: httpx.Client, model: str) -> None:
    tail = struct.pack("<I", 5) + b"hello" + struct.pack("<I", 1000) + b"abc"
    body, headers = _binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tail)},
                }
            ]
        },
        tail,
    )
    r = http.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 400
    assert "past the end" in r.json()["error"]


def test_bytes_tensor_roundtrip_codec() -> None:
    from modelworks.tensors import from_binary, to_binary

    arr = np.array([b"hello", "w\u00f6rld".encode()], dtype=np.object_)
    blob = to_binary(arr)
    assert blob == bytes.fromhex("0500000068656c6c6f0600000077c3b6726c64")
    back = from_binary("s", "BYTES", [2], blob, 100)
    assert back.tolist() == arr.tolist()


def test_fp16_and_bool_binary_decode() -> None:
    from modelworks.tensors import from_binary

    assert from_binary("h", "FP16", [1, 2], bytes.fromhex("003e00c0"), 10).tolist() == [[1.5, -2.0]]
    assert from_binary("b", "BOOL", [3], bytes.fromhex("010001"), 10).tolist() == [
        True,
        False,
        True,
    ]
