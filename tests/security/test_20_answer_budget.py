"""SECURITY.md class 11: amplification, answer side.

A request of a few bytes must not make the server build and send a big answer: every protocol
bounds its encoded answer by `MODELWORKS_MAX_RESPONSE_BYTES` (here 64 KiB) before it encodes it
and checks the real length after, and a requested output is returned once. The models' output
size is chosen by the input (a shape input, or the number of texts), and the raw arrays stay
under the budget: only their JSON text would exceed it, so the refusal is the answer side's, a
413 that names the setting and says what to ask for instead. The binary forms of the same
answers (OIP's binary tensor extension, OpenAI's base64) fit, and are served.

One module-scoped server on a real socket, so the real OpenAI and Hugging Face clients can call
it; each case also shows that the server still answers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper

from modelworks.api.app import create_app
from modelworks.api.protocols.tfserving_codec import tf_json, to_json
from modelworks.api.responses import (
    SLICE_ELEMENTS,
    AnswerBudget,
    Encoder,
    dumps,
    flat_json,
    json_data,
    numpy_json,
)
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.errors import BadRequest, PayloadTooLarge
from modelworks.settings import Settings
from tests.conftest import LiveServer
from tests.models import linear_onnx

pytestmark = pytest.mark.socket

BUDGET = 64 * 1024
THIRD = 1 / 3  # "0.33333334": ~11 characters of JSON per 4 bytes of float32
ROWS = 8000  # 32 KB raw float32, ~90 KB as JSON
DIMS = 8000
SETTING = "MODELWORKS_MAX_RESPONSE_BYTES"


def grow_onnx(path: Path) -> Path:
    """n INT64 [1] -> y FP32 [n], every value 1/3: the caller picks the answer's size."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["n"],
                ["y"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [THIRD]),
            )
        ],
        "grow",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def wide_embeddings_onnx(path: Path, dims: int = DIMS) -> Path:
    """text STRING [batch] -> embedding FP32 [batch, dims], every value 1/3."""
    width = helper.make_tensor("dims", TensorProto.INT64, [1], [dims])
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["text"], ["rows"]),
            helper.make_node("Concat", ["rows", "dims"], ["shape"], axis=0),
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["embedding"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [THIRD]),
            ),
        ],
        "wide",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dims])],
        initializer=[width],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@dataclass
class Server:
    url: str
    key: str
    http: httpx.Client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("answer-budget")
    settings = Settings(home=folder / "home", max_response_bytes=BUDGET)
    settings.home.mkdir()
    upgrade(settings.resolved_database_url)
    services = Services.build(settings)
    key = services.keys.bootstrap_admin()
    assert key is not None
    models = {
        "grow": ("tensor", grow_onnx(folder / "grow.onnx")),
        "lin": ("tensor", linear_onnx(folder / "lin.onnx")),
        "emb": ("embeddings", wide_embeddings_onnx(folder / "emb.onnx")),
    }
    try:
        with (
            LiveServer(create_app(settings, services)) as live,
            httpx.Client(
                base_url=live.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as http,
        ):
            for name, (task, path) in models.items():
                r = http.post("/api/v1/models", json={"name": name, "task": task})
                assert r.status_code == 201, r.text
                files = {"file": (path.name, path.read_bytes())}
                r = http.post(f"/api/v1/models/{name}/versions", files=files)
                assert r.status_code == 201, r.text
            yield Server(live.url, key, http)
    finally:
        services.close()


def grow(rows: int, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [rows]}], **extra}


def assert_refused(r: httpx.Response) -> str:
    """A 413 naming the setting; returns the message."""
    assert r.status_code == 413, r.text
    body = r.json()
    message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    assert SETTING in message and str(BUDGET) in message
    return str(message)


def assert_still_serving(server: Server) -> None:
    r = server.http.post("/v2/models/grow/infer", json=grow(3))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == pytest.approx([THIRD] * 3)
    assert server.http.get("/livez").status_code == 200


# OIP v2 -----------------------------------------------------------------------------------------
def test_v2_json_answer_over_the_budget_is_413_and_points_at_binary(server: Server) -> None:
    body = json.dumps(grow(ROWS)).encode()
    assert len(body) < 100

    message = assert_refused(server.http.post("/v2/models/grow/infer", content=body))

    assert "binary_data_output" in message
    assert_still_serving(server)


def test_v2_the_same_answer_in_binary_fits(server: Server) -> None:
    r = server.http.post(
        "/v2/models/grow/infer", json=grow(ROWS, parameters={"binary_data_output": True})
    )

    assert r.status_code == 200, r.text
    header = int(r.headers["Inference-Header-Content-Length"])
    assert np.frombuffer(r.content[header:], dtype="<f4") == pytest.approx([THIRD] * ROWS)


def test_v2_binary_answer_is_bounded_by_its_raw_bytes(server: Server) -> None:
    rows = BUDGET // 4 + 1
    r = server.http.post(
        "/v2/models/grow/infer", json=grow(rows, parameters={"binary_data_output": True})
    )

    assert_refused(r)
    assert_still_serving(server)


def test_v2_echoed_id_counts_too(server: Server) -> None:
    """What the bound cannot know before encoding, the check after it sees."""
    r = server.http.post("/v2/models/grow/infer", json=grow(1, id="x" * BUDGET))

    assert_refused(r)
    assert_still_serving(server)


REQUESTED_OUTPUTS: dict[str, Any] = {
    "same-output-twice": [{"name": "y"}, {"name": "y"}],
    "same-output-1000-times": [{"name": "y"}] * 1000,
    "unknown-output": [{"name": "z"}],
    "nameless-entry": [{}],
    "not-a-list": {"name": "y"},
    "a-string": "y",
}


@pytest.mark.parametrize("case", sorted(REQUESTED_OUTPUTS))
def test_v2_requested_outputs_are_each_known_and_once(server: Server, case: str) -> None:
    r = server.http.post("/v2/models/lin/infer", json=grow_lin(REQUESTED_OUTPUTS[case]))

    assert r.status_code == 400, r.text
    assert "the model's outputs are ['y']" in r.json()["error"]
    assert_still_serving(server)


def grow_lin(outputs: Any) -> dict[str, Any]:
    x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    return {"inputs": [x], "outputs": outputs}


def test_v2_each_output_once_still_works(server: Server) -> None:
    r = server.http.post("/v2/models/lin/infer", json=grow_lin([{"name": "y"}]))

    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["y"]


# TF-Serving -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body", [{"inputs": {"n": [ROWS]}}, {"inputs": [ROWS]}], ids=["columns-named", "columns"]
)
def test_tfserving_answer_over_the_budget_is_413(server: Server, body: dict[str, Any]) -> None:
    r = server.http.post("/v1/models/grow:predict", json=body)

    message = assert_refused(r)
    assert "fewer instances" in message
    r = server.http.post("/v1/models/grow:predict", json={"inputs": [3]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == pytest.approx([THIRD] * 3)


def test_tfserving_rows_are_counted_too(server: Server) -> None:
    """2000 rows of two floats: 16 KB raw, ~80 KB as TF-Serving writes them."""
    rows = [[1.0, 2.0, 3.0, 4.0]] * 2000

    assert_refused(server.http.post("/v1/models/lin:predict", json={"instances": rows}))
    r = server.http.post("/v1/models/lin:predict", json={"instances": rows[:200]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 200


# OpenAI and Hugging Face, with their own clients -------------------------------------------------
def test_openai_float_answer_over_the_budget_is_413_and_base64_fits(server: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            client.embeddings.create(model="emb", input="hi", encoding_format="float")
        served = client.embeddings.create(model="emb", input=["hi"], encoding_format="base64")
    finally:
        client.close()

    assert refused.value.status_code == 413
    assert SETTING in refused.value.message
    row = np.frombuffer(base64.b64decode(str(served.data[0].embedding)), dtype="<f4")
    assert row == pytest.approx([THIRD] * DIMS)
    assert_still_serving(server)


def test_hugging_face_answer_over_the_budget_is_413(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(model=f"{server.url}/models/emb", token=server.key)

    with pytest.raises(HfHubHTTPError) as refused:
        client.feature_extraction("hi")

    assert refused.value.response is not None
    assert_refused(httpx.Response(413, content=refused.value.response.content))
    assert_still_serving(server)


# the budget's encoding: the same text, counted exactly -------------------------------------------
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((2, SLICE_ELEMENTS + 5)).astype(np.float32)
    return {
        "scalar": np.array(2.5, dtype=np.float32),
        "vector-f64": rng.standard_normal(SLICE_ELEMENTS * 2 + 3),
        "rows-wider-than-a-slice": wide,
        "many-small-rows": rng.integers(-(2**40), 2**40, (SLICE_ELEMENTS, 3)),
        "nested-wide": wide.reshape(2, 1, -1),
        "bool": rng.random(70000) > 0.5,
        "non-finite": np.array([[1.5, np.nan], [np.inf, -np.inf]], dtype=np.float32),
        "empty-rows": np.zeros((3, 0), dtype=np.float32),
        "text": np.array(["a", "é", 'q"\n'] * 30000, dtype=np.object_),
    }


def encoders(name: str) -> dict[str, tuple[Encoder, Any]]:
    """Each protocol's encoder, and how the same array is written in one piece."""
    return {
        "oip-flat": (flat_json(name), lambda a: dumps(json_data(a, name))),
        "tfserving": (tf_json(name), lambda a: json.dumps(to_json(name, a), allow_nan=True)),
        "numpy": (numpy_json, lambda a: orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY)),
    }


# orjson's numpy writer serves embeddings only: finite rows
PAIRS = [
    (case, encoder)
    for case in sorted(arrays())
    for encoder in sorted(encoders("y"))
    if not (encoder == "numpy" and case in ("non-finite", "text", "scalar"))
]


@pytest.mark.parametrize(("case", "encoder"), PAIRS)
def test_budget_writes_what_one_encoding_would_and_counts_it_exactly(
    case: str, encoder: str
) -> None:
    arr = arrays()[case]
    if encoder == "oip-flat":
        arr = arr.reshape(-1)  # OIP's data is flat
    encode, whole = encoders("y")[encoder]
    expected = json.loads(whole(arr))
    size = len(orjson.dumps(expected)) if encoder == "numpy" else None

    text = AnswerBudget(10**9, "").body({"a": AnswerBudget(10**9, "").array(arr, encode)})
    got = json.loads(text)["a"]
    exact = AnswerBudget(10**9, "")
    exact.array(arr, encode)
    used = 10**9 - exact.left

    assert json.dumps(got, allow_nan=True) == json.dumps(expected, allow_nan=True)
    assert used == len(text) - len('{"a":}')
    assert size is None or used == size
    with pytest.raises(PayloadTooLarge, match=SETTING):
        AnswerBudget(used - 1, "").array(arr, encode)


def test_a_bytes_output_that_is_not_text_is_named_by_its_index_past_a_slice() -> None:
    arr = np.array([b"ok"] * (SLICE_ELEMENTS + 7) + [b"\xff"], dtype=np.object_)

    with pytest.raises(BadRequest, match=f"element {SLICE_ELEMENTS + 7} of output 'y'"):
        AnswerBudget(10**9, "").array(arr, flat_json("y"))
