"""Compressed bodies: requests sent with Content-Encoding gzip/deflate (tritonclient's
`request_compression_algorithm`), inflated under the size cap, and compressed responses."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from modelworks.api.encoding import INFLATE_SLICE, Compress, Inflate
from modelworks.client import Client
from modelworks.errors import PayloadTooLarge
from modelworks.settings import Settings
from tests.conftest import LiveServer
from tests.models import linear_onnx, linear_reference

CAP = 256 * 1024
X = np.arange(8192, dtype=np.float32).reshape(2048, 4) / 100  # outputs over 16 KiB
PACK: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,  # what "deflate" means on the wire, and what tritonclient sends
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_request_bytes": CAP})


@pytest.fixture
def model(client: Client, tmp_path: Path) -> str:
    client.create_model("m")
    client.push("m", linear_onnx(tmp_path / "m.onnx"))
    return "m"


def v2_body(x: np.ndarray = X) -> bytes:
    inp = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [inp]}).encode()


def bomb(size: int) -> bytes:
    """A gzip body of `size` zero bytes: a few KiB on the wire."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    parts = [z.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + z.flush()


@pytest.mark.socket
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_and_responses(
    model: str,
    live_server: LiveServer,
    admin_key: str,
    algorithm: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tritonclient.http as triton

    # verbose: the client prints each response with its headers
    c = triton.InferenceServerClient(url=f"127.0.0.1:{live_server.port}", verbose=True)
    auth = {"Authorization": f"Bearer {admin_key}"}
    want = linear_reference(X)
    try:
        for binary in (True, False):
            inp = triton.InferInput("x", list(X.shape), "FP32")
            inp.set_data_from_numpy(X, binary_data=binary)
            out = triton.InferRequestedOutput("y", binary_data=binary)
            r = c.infer(
                model,
                [inp],
                outputs=[out],
                headers=dict(auth),  # tritonclient adds its own headers to this dict
                request_compression_algorithm=algorithm,
                response_compression_algorithm=algorithm,
            )
            np.testing.assert_allclose(r.as_numpy("y"), want, rtol=1e-5)
            assert f"'content-encoding': '{algorithm}'" in capsys.readouterr().out
    finally:
        c.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_binary_request_counts_the_inflated_header(
    http: httpx.Client, model: str, algorithm: str
) -> None:
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2048, 4], "datatype": "FP32", "parameters": {}},
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    head = head.replace(b'"parameters": {}', b'"parameters": {"binary_data_size": 32768}')
    r = http.post(
        "/v2/models/m/infer",
        content=PACK[algorithm](head + X.tobytes()),
        headers={
            "Content-Encoding": algorithm,
            "Inference-Header-Content-Length": str(len(head)),
            "Accept-Encoding": algorithm,
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-encoding"] == algorithm  # httpx inflated r.content for us
    n = int(r.headers["inference-header-content-length"])
    assert json.loads(r.content[:n])["outputs"][0]["parameters"]["binary_data_size"] == 16384
    y = np.frombuffer(r.content[n:], dtype="<f4").reshape(2048, 2)
    np.testing.assert_allclose(y, linear_reference(X), rtol=1e-5)


def test_raw_deflate_and_concatenated_gzip_are_accepted(http: httpx.Client, model: str) -> None:
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = v2_body()
    deflated = raw.compress(body) + raw.flush()
    r = http.post("/v2/models/m/infer", content=deflated, headers={"Content-Encoding": "deflate"})
    assert r.status_code == 200, r.text
    half = len(body) // 2
    two_members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    r = http.post("/v2/models/m/infer", content=two_members, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text


def test_every_inference_protocol_inflates(http: httpx.Client, model: str) -> None:
    gz = {"Content-Encoding": "gzip"}
    rows = X[:3].tolist()
    r = http.post(
        "/v1/models/m:predict",
        content=gzip.compress(json.dumps({"instances": rows}).encode()),
        headers=gz,
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], linear_reference(X[:3]), rtol=1e-5)
    # the model name is inside the compressed body: a 404 naming it shows it was read
    body = gzip.compress(json.dumps({"model": "no-such-embedder", "input": "hi"}).encode())
    r = http.post("/v1/embeddings", content=body, headers=gz)
    assert r.status_code == 404 and "no-such-embedder" in r.json()["error"]["message"], r.text
    r = http.post("/models/m", content=gzip.compress(b'{"inputs": "hi"}'), headers=gz)
    assert r.status_code == 400 and "task" in r.json()["error"], r.text


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v1/models/m:predict", "/models/m"])
def test_gzip_bomb_is_413(http: httpx.Client, model: str, path: str) -> None:
    body = bomb(64 * CAP)
    assert len(body) < CAP // 4
    r = http.post(path, content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert f"{CAP} bytes" in r.json()["error"] and "decompressed" in r.json()["error"]


def test_gzip_bomb_on_management_route_is_413(http: httpx.Client) -> None:
    r = http.post(
        "/api/v1/models", content=bomb(8 * 1024 * 1024), headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"


def test_a_bomb_is_never_inflated_whole() -> None:
    body = bomb(64 * CAP)
    messages = [body[i : i + 4096] for i in range(0, len(body), 4096)]

    async def receive() -> dict[str, object]:
        chunk = messages.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(messages)}

    sizes: list[int] = []

    async def drain(inflate: Inflate) -> None:
        while True:
            sizes.append(len((await inflate())["body"]))

    inflate = Inflate(receive, "gzip", CAP)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(drain(inflate))
    assert max(sizes) <= INFLATE_SLICE and sum(sizes) <= CAP
    assert inflate.size <= CAP + INFLATE_SLICE  # no step inflated more than a slice
    assert messages, "the whole compressed body was read"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/m/infer", lambda r: r.json()["error"]),
        ("/v1/models/m:predict", lambda r: r.json()["error"]),
        ("/v1/embeddings", lambda r: r.json()["error"]["message"]),
        ("/models/m", lambda r: r.json()["error"]),
        ("/api/v1/models", lambda r: r.json()["error"]["message"]),
    ],
)
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_malformed_compressed_body_is_400(
    http: httpx.Client,
    model: str,
    path: str,
    message: Callable[[httpx.Response], str],
    algorithm: str,
) -> None:
    enc = {"Content-Encoding": algorithm}
    r = http.post(path, content=b"this is not compressed at all", headers=enc)
    assert r.status_code == 400, r.text
    assert f"not valid {algorithm}" in message(r)
    r = http.post(path, content=PACK[algorithm](v2_body())[:-40], headers=enc)  # cut short
    assert r.status_code == 400, r.text
    assert "ends before" in message(r)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v1/embeddings", "/api/v1/keys"])
def test_unknown_encoding_is_415(http: httpx.Client, model: str, encoding: str, path: str) -> None:
    r = http.post(path, content=b"\x00\x01", headers={"Content-Encoding": encoding})
    assert r.status_code == 415, r.text
    assert "gzip" in r.text and "deflate" in r.text and "Content-Encoding" in r.text


def test_identity_encoding_is_no_encoding(http: httpx.Client, model: str) -> None:
    r = http.post("/v2/models/m/infer", content=v2_body(), headers={"Content-Encoding": "identity"})
    assert r.status_code == 200, r.text


def test_compressed_management_body(http: httpx.Client) -> None:
    body = gzip.compress(json.dumps({"name": "zipped"}).encode())
    r = http.post(
        "/api/v1/models",
        content=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "zipped"


def test_compressed_upload(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    client.create_model("m")
    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    form = httpx.Request("POST", "http://t", files={"file": ("m.onnx", onnx)})
    r = http.post(
        "/api/v1/models/m/versions",
        content=gzip.compress(form.read()),
        headers={"Content-Type": form.headers["content-type"], "Content-Encoding": "gzip"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(onnx)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_large_json_responses_are_compressed_small_ones_not(
    http: httpx.Client, model: str, algorithm: str
) -> None:
    accept = {"Accept-Encoding": algorithm}
    r = http.post("/v2/models/m/infer", content=v2_body(), headers=accept)
    assert r.status_code == 200 and r.headers["content-encoding"] == algorithm
    y = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(2048, 2)
    np.testing.assert_allclose(y, linear_reference(X), rtol=1e-5)
    small = http.post("/v2/models/m/infer", content=v2_body(X[:1]), headers=accept)
    assert small.status_code == 200 and "content-encoding" not in small.headers
    plain = http.post("/v2/models/m/infer", content=v2_body(), headers={"Accept-Encoding": ""})
    assert "content-encoding" not in plain.headers
    refused = http.post(
        "/v2/models/m/infer", content=v2_body(), headers={"Accept-Encoding": "gzip;q=0"}
    )
    assert "content-encoding" not in refused.headers


def test_streaming_responses_stay_streams() -> None:
    async def events(_request: object) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {'x' * 2000} {i}\n\n".encode()

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def ndjson(_request: object) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(3):
                yield json.dumps({"i": i, "pad": "y" * 2000}).encode() + b"\n"

        return StreamingResponse(gen(), media_type="application/x-ndjson")

    app = Compress(Starlette(routes=[Route("/sse", events), Route("/nd", ndjson)]))

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(path, headers={"Accept-Encoding": "gzip"})

    sse = asyncio.run(get("/sse"))
    assert "content-encoding" not in sse.headers  # events must reach the client at once
    assert sse.text.count("data: ") == 3
    nd = asyncio.run(get("/nd"))
    assert nd.headers["content-encoding"] == "gzip" and "content-length" not in nd.headers
    assert [json.loads(line)["i"] for line in nd.text.splitlines()] == [0, 1, 2]
