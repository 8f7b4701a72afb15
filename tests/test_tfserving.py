"""TensorFlow Serving REST routes, called with plain HTTP as TF-Serving callers do (there is no
official Python REST client): status, metadata, :predict (row and columnar), :classify and
:regress, and the `{"error": "<message>"}` error bodies."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from fastapi import FastAPI
from onnx import TensorProto, helper

from modelworks.api.protocols import tfserving, tfserving_codec
from modelworks.client import Client
from modelworks.demo import build_demo_onnx
from modelworks.errors import InvalidInput
from tests.models import echo_strings, linear_onnx, linear_reference

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 4 - 1


@pytest.fixture(autouse=True)
def _mount_tfserving(app: FastAPI) -> None:
    """Mount the router unless the app already does (once app.py includes it)."""
    if not any(getattr(r, "path", None) == "/v1/models/{model}/metadata" for r in app.routes):
        app.include_router(tfserving.router)


def push(
    client: Client,
    tmp_path: Path,
    name: str,
    seed: int = 0,
    task: str = "tensor",
    n_out: int = 2,
) -> int:
    """Create `name` if needed; push a linear 4 -> n_out model (weights from `seed`)."""
    if name not in {m["name"] for m in client.list_models()}:
        client.create_model(name, task=task)
    path = linear_onnx(tmp_path / f"{name}-{seed}.onnx", seed=seed, n_out=n_out)
    version: int = client.push(name, path)["version"]
    return version


def error(resp: httpx.Response, status: int) -> str:
    """The response is `status` with a TF-Serving error body; returns the message."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    message: str = body["error"]
    return message


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


def status_body(version: int) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def two_in_two_out(path: Path) -> Path:
    """a, b FP32 [-1, 2] -> sum = a + b, prod = a * b."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["prod"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


# status and metadata --------------------------------------------------------------------------
def test_status_by_version_and_label(
    database_url: str, http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    push(client, tmp_path, "press", seed=0)
    push(client, tmp_path, "press", seed=1)
    client.set_alias("press", "stable", 1)

    assert ok(http.get("/v1/models/press/versions/1")) == status_body(1)
    assert ok(http.get("/v1/models/press/versions/2")) == status_body(2)
    assert ok(http.get("/v1/models/press/labels/stable")) == status_body(1)
    client.set_alias("press", "stable", 2)  # moving the label is seen at once
    assert ok(http.get("/v1/models/press/labels/stable")) == status_body(2)

    assert "no version 3" in error(http.get("/v1/models/press/versions/3"), 404)
    assert "canary" in error(http.get("/v1/models/press/labels/canary"), 404)
    error(http.get("/v1/models/press/labels/1"), 404)  # a label is never a version number
    error(http.get("/v1/models/ghost/versions/1"), 404)
    assert "integer" in error(http.get("/v1/models/press/versions/latest"), 400)
    error(http.get("/v1/models/press/versions/1.5"), 400)
    error(http.get(f"/v1/models/press/versions/{2**63}"), 400)  # past int64
    error(http.get("/v1/models/press/versions/0"), 404)


def test_metadata(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press", seed=0)
    push(client, tmp_path, "press", seed=1)
    client.set_alias("press", "stable", 1)

    def dims(*sizes: int) -> dict[str, Any]:
        return {"dim": [{"size": str(s), "name": ""} for s in sizes], "unknown_rank": False}

    def expected(version: int) -> dict[str, Any]:
        return {
            "model_spec": {"name": "press", "signature_name": "", "version": str(version)},
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        "serving_default": {
                            "inputs": {
                                "x": {"dtype": "DT_FLOAT", "tensor_shape": dims(-1, 4), "name": "x"}
                            },
                            "outputs": {
                                "y": {"dtype": "DT_FLOAT", "tensor_shape": dims(-1, 2), "name": "y"}
                            },
                            "method_name": "tensorflow/serving/predict",
                            "defaults": {},
                        }
                    }
                }
            },
        }

    assert ok(http.get("/v1/models/press/metadata")) == expected(2)
    assert ok(http.get("/v1/models/press/versions/1/metadata")) == expected(1)
    assert ok(http.get("/v1/models/press/labels/stable/metadata")) == expected(1)
    error(http.get("/v1/models/press/versions/9/metadata"), 404)
    error(http.get("/v1/models/press/versions/v9/metadata"), 400)
    error(http.get("/v1/models/ghost/metadata"), 404)


# predict ------------------------------------------------------------------------------------
def test_predict_row_and_columnar(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press")
    want = linear_reference(X)

    row = ok(http.post("/v1/models/press:predict", json={"instances": X.tolist()}))
    assert set(row) == {"predictions"}
    np.testing.assert_allclose(np.asarray(row["predictions"]), want, rtol=1e-5, atol=1e-5)

    # the exact request shape the TF-Serving demo caller sends (PROTOCOLS.md §4.4)
    body = {"signature_name": "serving_default", "inputs": {"x": X.tolist()}}
    cols = ok(http.post("/v1/models/press/versions/1:predict", json=body))
    assert set(cols) == {"outputs"}
    np.testing.assert_allclose(np.asarray(cols["outputs"]), want, rtol=1e-5, atol=1e-5)

    bare = ok(http.post("/v1/models/press:predict", json={"inputs": X.tolist()}))
    np.testing.assert_allclose(np.asarray(bare["outputs"]), want, rtol=1e-5, atol=1e-5)

    named = ok(
        http.post("/v1/models/press:predict", json={"instances": [{"x": r} for r in X.tolist()]})
    )
    np.testing.assert_allclose(np.asarray(named["predictions"]), want, rtol=1e-5, atol=1e-5)

    # a finite input whose output overflows: NaN/Infinity come back as tokens
    big = http.post("/v1/models/press:predict", json={"instances": [[3e38] * 4]})
    assert big.status_code == 200, big.text
    assert "Infinity" in big.text or "NaN" in big.text
    assert not np.isfinite(np.asarray(big.json()["predictions"])).all()


def test_predict_version_label_and_default(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    push(client, tmp_path, "press", seed=0)
    push(client, tmp_path, "press", seed=1)
    body = {"instances": X.tolist()}

    def predict(path: str) -> np.ndarray:
        return np.asarray(ok(http.post(path, json=body))["predictions"], dtype=np.float32)

    v1, v2 = linear_reference(X, seed=0), linear_reference(X, seed=1)
    np.testing.assert_allclose(predict("/v1/models/press:predict"), v2, atol=1e-5)  # latest
    np.testing.assert_allclose(predict("/v1/models/press/versions/1:predict"), v1, atol=1e-5)
    np.testing.assert_allclose(predict("/v1/models/press/versions/2:predict"), v2, atol=1e-5)
    client.set_alias("press", "stable", 1)
    np.testing.assert_allclose(predict("/v1/models/press/labels/stable:predict"), v1, atol=1e-5)
    client.set_alias("press", "production", 1)  # the default follows `production`
    np.testing.assert_allclose(predict("/v1/models/press:predict"), v1, atol=1e-5)


def test_predict_errors(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press")
    rows = X.tolist()

    def post(path: str, body: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return http.post(path, content=content, headers={"Content-Type": "application/json"})

    p = "/v1/models/press:predict"
    msg = error(post(p, {"signature_name": "classify_x", "instances": rows}), 400)
    assert "serving_default" in msg
    assert "'x'" in error(post(p, {"instances": [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]}), 400)
    assert "ragged" in error(post(p, {"inputs": {"x": [[1.0, 2.0, 3.0, 4.0], [1.0]]}}), 400)
    assert "'z'" in error(post(p, {"inputs": {"z": rows}}), 400)
    assert "'z'" in error(post(p, {"instances": [{"z": r} for r in rows]}), 400)
    assert "[-1, 4]" in error(post(p, {"instances": [[1.0, 2.0, 3.0]]}), 400)  # wrong width
    assert "does not fit DT_FLOAT" in error(post(p, {"instances": [[1e39, 1.0, 2.0, 3.0]]}), 400)
    error(post(p, {"instances": [["a", "b", "c", "d"]]}), 400)
    error(post(p, {"instances": rows, "inputs": rows}), 400)
    error(post(p, {"instances": []}), 400)
    error(post(p, {"rows": rows}), 400)
    error(post(p, b""), 400)
    error(post(p, b"{not json"), 400)
    error(post(p, [1, 2]), 400)

    assert "integer" in error(
        post("/v1/models/press/versions/one:predict", {"instances": rows}), 400
    )
    error(post("/v1/models/press/versions/7:predict", {"instances": rows}), 404)
    error(post("/v1/models/press/labels/nope:predict", {"instances": rows}), 404)
    error(post("/v1/models/ghost:predict", {"instances": rows}), 404)
    assert ":predict" in error(post("/v1/models/press:explain", {"instances": rows}), 404)
    error(post("/v1/models/press/versions/1:explain", {"instances": rows}), 404)


def test_no_key_is_401(anon: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press")
    for resp in (
        anon.post("/v1/models/press:predict", json={"instances": X.tolist()}),
        anon.get("/v1/models/press/metadata"),
        anon.get("/v1/models/press/versions/1"),
    ):
        assert "API key" in error(resp, 401)


def test_predict_several_inputs_and_outputs(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    client.create_model("pair")
    client.push("pair", two_in_two_out(tmp_path / "pair.onnx"))
    a = [[1.0, 2.0], [3.0, 4.0]]
    b = [[0.5, 0.5], [2.0, -1.0]]
    instances = [{"a": a[i], "b": b[i]} for i in range(2)]
    row = ok(http.post("/v1/models/pair:predict", json={"instances": instances}))
    assert row == {
        "predictions": [
            {"sum": [1.5, 2.5], "prod": [0.5, 1.0]},
            {"sum": [5.0, 3.0], "prod": [6.0, -4.0]},
        ]
    }
    cols = ok(http.post("/v1/models/pair:predict", json={"inputs": {"a": a, "b": b}}))
    assert cols == {"outputs": {"sum": [[1.5, 2.5], [5.0, 3.0]], "prod": [[0.5, 1.0], [6.0, -4.0]]}}

    assert "'b'" in error(http.post("/v1/models/pair:predict", json={"inputs": {"a": a}}), 400)
    error(http.post("/v1/models/pair:predict", json={"instances": a}), 400)  # needs objects
    mixed = [{"a": a[0], "b": b[0]}, {"a": a[1]}]
    error(http.post("/v1/models/pair:predict", json={"instances": mixed}), 400)


def test_b64_strings_decode_and_encode() -> None:
    """BYTES inputs: strings or {"b64"}; BYTES outputs: UTF-8 text, else (or `*_bytes`) b64."""
    spec = {"name": "s", "datatype": "BYTES", "shape": [-1]}
    b64 = base64.b64encode("héllo".encode()).decode()
    arr = tfserving_codec.tensor("s", spec, ["plain", {"b64": b64}], 100)
    assert arr.dtype == np.object_ and arr.tolist() == [b"plain", "héllo".encode()]
    out = np.array([[b"ok", b"\xff\xfe"]], dtype=np.object_)
    assert tfserving_codec.to_json("s_out", out) == [["ok", {"b64": "//4="}]]
    assert tfserving_codec.to_json("s_bytes", out) == [[{"b64": "b2s="}, {"b64": "//4="}]]
    with pytest.raises(InvalidInput, match="base64"):
        tfserving_codec.tensor("s", spec, [{"b64": "not base64!"}], 100)
    with pytest.raises(InvalidInput, match="DT_STRING"):
        tfserving_codec.tensor("s", spec, [3], 100)


def test_predict_strings_and_b64(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    client.create_model("echo")
    client.push("echo", echo_strings(tmp_path / "echo.onnx"))
    b64 = base64.b64encode("héllo".encode()).decode()
    resp = ok(http.post("/v1/models/echo:predict", json={"instances": ["plain", {"b64": b64}]}))
    assert resp == {
        "predictions": [
            {"s_out": "plain", "s_bytes": {"b64": base64.b64encode(b"plain").decode()}},
            {"s_out": "héllo", "s_bytes": {"b64": b64}},
        ]
    }


def identity(path: Path) -> Path:
    """x FP32 [-1, 4] -> y = x."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def test_nan_and_infinity_are_data(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    """NaN/Infinity/-Infinity tokens reach the model as such and come back as tokens, as in
    TensorFlow Serving; the other protocols' JSON stays strict."""
    client.create_model("same")
    client.push("same", identity(tmp_path / "same.onnx"))
    headers = {"Content-Type": "application/json"}

    def post(path: str, body: bytes) -> httpx.Response:
        return http.post(path, content=body, headers=headers)

    rows = post("/v1/models/same:predict", b'{"instances": [[NaN, Infinity, -Infinity, 1.5]]}')
    assert rows.status_code == 200, rows.text
    assert rows.text == '{"predictions":[[NaN,Infinity,-Infinity,1.5]]}'
    cols = post("/v1/models/same:predict", b'{"inputs": {"x": [[1, NaN, 2, 3], [4, 5, 6, 7]]}}')
    assert cols.text == '{"outputs":[[1.0,NaN,2.0,3.0],[4.0,5.0,6.0,7.0]]}', cols.text

    push(client, tmp_path, "yield", task="tabular-regression", n_out=1)
    body = b'{"examples": [{"f0": NaN, "f1": 1, "f2": 2, "f3": 3}, {"x": [0, 0, 0, 0]}]}'
    got = post("/v1/models/yield:regress", body)
    assert got.text.startswith('{"results":[NaN,'), got.text
    push(client, tmp_path, "churn", task="tabular-classification", n_out=2)
    got = post("/v1/models/churn:classify", b'{"examples": [{"x": [NaN, 0, 0, 0]}]}')
    assert got.text == '{"results":[[["0",NaN],["1",NaN]]]}', got.text

    deep = b'{"instances": ' + b"[" * 100 + b"NaN" + b"]" * 100 + b"}"
    assert "nested" in error(post("/v1/models/same:predict", deep), 400)
    v2 = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}'
    assert post("/v2/models/same/infer", v2).status_code == 400
    assert (
        post("/v1/embeddings", b'{"model": "same", "input": "a", "user": NaN}').status_code == 400
    )
    # a literal past float64's range is refused everywhere, never read as Infinity
    assert "1e400" in error(
        post("/v1/models/same:predict", b'{"instances": [[1e400, 0, 0, 0]]}'), 400
    )
    assert post("/v2/models/same/infer", v2.replace(b"NaN", b"-1E+999")).status_code == 400


# classify and regress ---------------------------------------------------------------------------
def test_regress(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "yield", task="tabular-regression", n_out=1)
    want = linear_reference(X, n_out=1)[:, 0]
    p = "/v1/models/yield:regress"

    by_column = [{f"f{j}": v for j, v in enumerate(r)} for r in X.tolist()]
    got = ok(http.post(p, json={"examples": by_column}))
    assert set(got) == {"results"}
    np.testing.assert_allclose(got["results"], want, rtol=1e-5, atol=1e-5)

    by_row = {
        "signature_name": "tensorflow/serving/regress",
        "examples": [{"x": r} for r in X.tolist()],
    }
    np.testing.assert_allclose(ok(http.post(p, json=by_row))["results"], want, atol=1e-5)

    # common features in `context`; one-element lists as TF Examples carry them
    context = {"f0": float(X[0, 0])}
    examples = [{"f1": [float(X[0, 1])], "f2": float(X[0, 2]), "f3": float(X[0, 3])}]
    got = ok(
        http.post(
            "/v1/models/yield/versions/1:regress", json={"context": context, "examples": examples}
        )
    )
    np.testing.assert_allclose(got["results"], want[:1], atol=1e-5)

    both = {"context": {"f0": 1.0}, "examples": [{"f0": 1.0, "f1": 1.0, "f2": 1.0, "f3": 1.0}]}
    assert "context" in error(http.post(p, json=both), 400)
    assert "f0" in error(http.post(p, json={"examples": [{"f0": 1.0, "f2": 1.0}]}), 400)
    assert "'x'" in error(http.post(p, json={"examples": [{"sensor": 1.0}]}), 400)
    error(http.post(p, json={"examples": [{"x": [1.0, 2.0]}]}), 400)  # 2 values, needs 4
    error(http.post(p, json={"examples": []}), 400)
    assert "does not fit" in error(http.post(p, json={"examples": [{"x": [1e39, 1, 2, 3]}]}), 400)
    msg = error(http.post("/v1/models/yield:classify", json={"examples": by_column}), 400)
    assert ":predict" in msg
    # predict still serves the model
    pred = ok(http.post("/v1/models/yield:predict", json={"instances": X.tolist()}))
    np.testing.assert_allclose(np.asarray(pred["predictions"])[:, 0], want, atol=1e-5)


def test_classify(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "churn", task="tabular-classification", n_out=2)
    scores = linear_reference(X)  # logits serve as scores
    by_column = [{f"f{j}": v for j, v in enumerate(r)} for r in X.tolist()]
    got = ok(http.post("/v1/models/churn:classify", json={"examples": by_column}))
    assert set(got) == {"results"}
    assert len(got["results"]) == 2
    for row, want in zip(got["results"], scores, strict=True):
        assert [label for label, _ in row] == ["0", "1"]
        np.testing.assert_allclose([s for _, s in row], want, rtol=1e-5, atol=1e-5)
    client.set_alias("churn", "stable", 1)
    by_row = {"examples": [{"x": r} for r in X.tolist()]}
    assert ok(http.post("/v1/models/churn/labels/stable:classify", json=by_row)) == got
    error(http.post("/v1/models/churn:regress", json={"examples": by_column}), 400)

    # a single probability column (the demo model): TF-Serving's bare-score label ""
    client.create_model("pump", task="tabular-classification")
    client.push("pump", build_demo_onnx(tmp_path / "pump.onnx"))
    pump = ok(
        http.post(
            "/v1/models/pump:classify", json={"examples": [{"sensors": [0.2, 0.4, 0.1, 0.9]}]}
        )
    )
    [[[label, prob]]] = pump["results"]
    assert label == "" and 0.0 < prob < 1.0


def test_classify_and_regress_need_a_fitting_task(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    push(client, tmp_path, "press")  # task "tensor"
    examples = {"examples": [{"x": [1.0, 2.0, 3.0, 4.0]}]}
    for verb in ("classify", "regress"):
        msg = error(http.post(f"/v1/models/press:{verb}", json=examples), 400)
        assert "'tensor'" in msg and ":predict" in msg
    error(http.post("/v1/models/ghost:classify", json=examples), 404)
