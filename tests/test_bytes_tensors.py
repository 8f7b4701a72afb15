"""BYTES tensors carry the exact bytes, or are refused with a 400: never changed (no U+FFFD).

ONNX Runtime holds string tensors as UTF-8 text, so a BYTES input must be UTF-8 (NULs and all,
which go through exactly); anything else is a 400 that says so, over the binary tensor extension,
OIP JSON and TF-Serving `{"b64": ...}` alike. Outputs that are not UTF-8 (no runtime here makes
them today; a stub model stands in) come back exactly in binary and as `{"b64"}` on TF-Serving,
and are a 400 naming the fix on OIP JSON, which has no form for them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelworks.client import Client
from modelworks.errors import InvalidInput
from modelworks.runtimes.onnx import OnnxModel
from modelworks.runtimes.text import TextModel
from modelworks.tensors import check_against_signature, from_binary, to_binary
from tests.conftest import LiveServer
from tests.models import echo_strings

RAW = b"\x00\x01\x02\xff"  # the element the third-party client sent
TEXT = [b"a\x00b", "h\u00e9llo".encode(), b""]  # UTF-8, a NUL and an empty string included
SIGNATURE = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [-1]}]}


@pytest.fixture
def echo(client: Client, tmp_path: Path) -> str:
    client.create_model("echo")
    client.push("echo", echo_strings(tmp_path / "echo.onnx"))
    return "echo"


@pytest.fixture
def triton_client(live_server: LiveServer, admin_key: str) -> Iterator[Any]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{live_server.port}")
    c.auth = {"Authorization": f"Bearer {admin_key}"}  # ours, for triton_infer
    yield c
    c.close()


def triton_infer(c: Any, values: list[bytes], binary: bool) -> Any:
    inp = triton.InferInput("s", [len(values)], "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    out = triton.InferRequestedOutput("s_out", binary_data=binary)
    # a copy: tritonclient writes Inference-Header-Content-Length into the dict it is given
    return c.infer("echo", [inp], outputs=[out], headers=dict(c.auth))


def b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode()}


def test_onnx_runtime_string_tensors_hold_utf8_text(tmp_path: Path) -> None:
    """Why BYTES inputs must be UTF-8. If this fails, ONNX Runtime now carries raw bytes:
    carry them end to end instead of refusing them."""
    s = ort.InferenceSession(str(echo_strings(tmp_path / "e.onnx")))
    assert s.run(["s_out"], {"s": np.array([RAW], dtype=np.object_)})[0].tolist() == [str(RAW)]
    assert s.run(["s_out"], {"s": np.array(["a\x00\u00e9"], dtype=np.object_)})[0].tolist() == [
        "a\x00\u00e9"
    ]
    assert s.run(["s_out"], {"s": np.array([b"a\x00b"], dtype="S")})[0].tolist() == ["a"]
    with pytest.raises(UnicodeDecodeError):  # a string output is decoded as strict UTF-8
        s.run(["s_out"], {"s": np.array([b"\x01\x02\xff"], dtype="S")})


def test_tritonclient_utf8_bytes_echo_exactly(echo: str, triton_client: Any) -> None:
    assert triton_infer(triton_client, TEXT, binary=True).as_numpy("s_out").tolist() == TEXT
    got = triton_infer(triton_client, TEXT, binary=False).as_numpy("s_out").tolist()
    assert got == [t.decode() for t in TEXT]  # tritonclient reads JSON BYTES as str


def test_tritonclient_non_utf8_bytes_are_400(
    echo: str, triton_client: Any, live_server: LiveServer
) -> None:
    with pytest.raises(InferenceServerException) as exc:
        triton_infer(triton_client, [b"ok", RAW], binary=True)
    assert exc.value.status() == "400"
    assert "BYTES element 1 of input 's' is not UTF-8" in str(exc.value.message())
    # OIP JSON strings cannot hold 0xff (tritonclient refuses to send it); a lone surrogate is
    # the one non-UTF-8 thing JSON text can say
    body = b'{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":["\\udcff"]}]}'
    resp = httpx.post(
        f"{live_server.url}/v2/models/echo/infer", content=body, headers=triton_client.auth
    )
    assert resp.status_code == 400, resp.text
    assert "inputs[0].data[0] is not valid Unicode text" in resp.text


def test_tfserving_b64_bytes(echo: str, http: httpx.Client) -> None:
    p = "/v1/models/echo:predict"
    resp = http.post(p, json={"instances": [b64(t) for t in TEXT]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [{"s_out": t.decode(), "s_bytes": b64(t)} for t in TEXT]}
    for body in ({"instances": [b64(RAW)]}, {"inputs": {"s": ["ok", b64(RAW)]}}):
        bad = http.post(p, json=body)
        assert bad.status_code == 400, bad.text
        assert "of input 's' is not UTF-8" in bad.json()["error"]
    bad = http.post(p, content=b'{"instances": ["\\ud800"]}')
    assert bad.status_code == 400 and "not valid Unicode" in bad.json()["error"], bad.text


def test_non_utf8_bytes_are_refused_before_batching() -> None:
    """The check runs with the signature check, before requests share a batch (in the runtime
    one bad element would fail every request batched with it)."""
    with pytest.raises(InvalidInput, match="BYTES element 1 of input 's' is not UTF-8"):
        check_against_signature(SIGNATURE, {"s": np.array([b"ok", RAW], dtype=np.object_)})
    check_against_signature(SIGNATURE, {"s": np.array(TEXT, dtype=np.object_)})


def test_runtimes_refuse_non_utf8_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    onnx_model = OnnxModel(echo_strings(tmp_path / "e.onnx"), SIGNATURE)
    out = onnx_model.predict({"s": np.array(TEXT, dtype=np.object_)})
    assert [x.encode() for x in out.outputs["s_out"].tolist()] == TEXT
    with pytest.raises(InvalidInput, match="not UTF-8"):
        onnx_model.predict({"s": np.array([RAW], dtype=np.object_)})
    text_model = TextModel.__new__(TextModel)  # the bytes -> text step comes before tokenizing
    monkeypatch.setattr(text_model, "tokenize", lambda texts: pytest.fail(f"tokenized {texts}"))
    with pytest.raises(InvalidInput, match="input 'text' is not UTF-8"):
        text_model.predict({"text": np.array([RAW], dtype=np.object_)})


# outputs ---------------------------------------------------------------------------------------
@pytest.fixture
def raw_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model answers RAW for each row: bytes no runtime here makes today."""

    def predict(
        self: OnnxModel,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any = None,
    ) -> dict[str, np.ndarray]:
        raw = np.array([RAW] * len(feeds["s"]), dtype=np.object_)
        return {"s_out": raw, "s_bytes": raw}

    monkeypatch.setattr(OnnxModel, "predict", predict)


def test_non_utf8_outputs_over_oip(raw_outputs: None, echo: str, triton_client: Any) -> None:
    assert triton_infer(triton_client, [b"x"], binary=True).as_numpy("s_out").tolist() == [RAW]
    with pytest.raises(InferenceServerException) as exc:
        triton_infer(triton_client, [b"x"], binary=False)
    assert exc.value.status() == "400"
    message = str(exc.value.message())
    assert "is bytes that are not UTF-8" in message and "binary_data: true" in message


def test_non_utf8_outputs_over_tfserving(raw_outputs: None, echo: str, http: httpx.Client) -> None:
    rows = http.post("/v1/models/echo:predict", json={"instances": ["x"]})
    assert rows.json() == {"predictions": [{"s_out": b64(RAW), "s_bytes": b64(RAW)}]}
    cols = http.post("/v1/models/echo:predict", json={"inputs": ["x", "y"]})
    assert cols.json() == {"outputs": {"s_out": [b64(RAW)] * 2, "s_bytes": [b64(RAW)] * 2}}


def test_binary_codec_carries_any_bytes() -> None:
    arr = np.array([RAW, b"", b"\xff" * 3], dtype=np.object_)
    blob = to_binary(arr)
    assert blob == b"".join(len(x).to_bytes(4, "little") + x for x in arr.tolist())
    assert from_binary("s", "BYTES", [3], blob, 10).tolist() == arr.tolist()


def test_sdk_refuses_non_utf8_bytes_before_sending() -> None:
    from modelworks.client._base import encode_infer

    ok = encode_infer({"s": np.array([b"a\x00b", "é"], dtype=object)}, None, {})
    assert ok["inputs"][0]["data"] == ["a\x00b", "é"]
    with pytest.raises(InvalidInput, match="element 1 of input 's' is not UTF-8"):
        encode_infer({"s": np.array([b"ok", b"\x00\x01\x02\xff"], dtype=object)}, None, {})
