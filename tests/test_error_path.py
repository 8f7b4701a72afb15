"""A model run that fails: a 400 naming the fix when the input caused it, a logged 500 with
the request id when the server or its runtime did (modelworks.serving.engine.input_fault)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from modelworks.client import Client
from modelworks.errors import InternalError, InvalidInput
from modelworks.runtimes.onnx import OnnxModel
from modelworks.serving.engine import input_fault


def graph_model(path: Path, nodes: list[Any], inputs: list[Any], inits: list[Any]) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def reshaper(path: Path) -> Path:
    """x FP32 [batch, n] -> y = x reshaped to [-1, 3]: n must make a multiple of 3."""
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    return graph_model(path, [helper.make_node("Reshape", ["x", "shape"], ["y"])], [x], [shape])


def lookup(path: Path) -> Path:
    """i INT64 [batch] -> y = rows i of a 5 x 2 table: each i must be in [-5, 4]."""
    table = numpy_helper.from_array(np.zeros((5, 2), np.float32), "table")
    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])
    return graph_model(path, [helper.make_node("Gather", ["table", "i"], ["y"])], [i], [table])


def adder(path: Path) -> Path:
    """a, b FP32 [any] -> y = a + b: the lengths must broadcast."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["m"])
    return graph_model(path, [helper.make_node("Add", ["a", "b"], ["y"])], [a, b], [])


def failure(path: Path, feeds: dict[str, np.ndarray], options: Any = None) -> Exception:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as info:
        session.run(None, feeds, options)
    assert isinstance(info.value, Exception)
    return info.value


def test_input_fault_rule_on_real_runtime_failures(tmp_path: Path) -> None:
    """What ONNX Runtime raises for an input it cannot run on is a 400 in its own words,
    without its source locations; the rest is not the input's fault."""
    cases: list[tuple[Any, dict[str, np.ndarray], str, str]] = [
        (reshaper, {"x": np.zeros((1, 4), np.float32)}, "Reshape", "cannot be reshaped"),
        (reshaper, {"x": np.zeros((1, 3), np.float64)}, "", "Unexpected input data type"),
        (lookup, {"i": np.array([7], np.int64)}, "Gather", "out of data bounds"),
        (adder, {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}, "Add", "broadcast"),
    ]
    for build, feeds, op, words in cases:
        exc = failure(build(tmp_path / f"{build.__name__}.onnx"), feeds)
        refusal = input_fault(exc)
        assert isinstance(refusal, InvalidInput), exc
        assert op in refusal.message and words in refusal.message
        assert "onnxruntime_src" not in refusal.message and ".h:" not in refusal.message
        assert "check" in refusal.message  # names the fix

    # a run told to stop fails outside any node: not the input's doing
    stopped = ort.RunOptions()
    stopped.terminate = True
    exc = failure(tmp_path / "reshaper.onnx", {"x": np.zeros((1, 3), np.float32)}, stopped)
    assert type(exc).__name__ == "Fail" and input_fault(exc) is None


def test_refusal_names_no_server_path(tmp_path: Path) -> None:
    exc = ort_errors.InvalidArgument(
        f"[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while "
        f"running Gather node. Name:'g' Status Message: table {tmp_path}/store/ab.bin too short"
    )
    refusal = input_fault(exc)
    assert refusal is not None and "Gather" in refusal.message
    assert str(tmp_path) not in refusal.message and "too short" in refusal.message


@pytest.mark.parametrize(
    "exc",
    [
        ort_errors.EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : the provider failed"),
        ort_errors.EngineError("[ONNXRuntimeError] : 12 : ENGINE_ERROR : engine"),
        ort_errors.NotImplemented("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : no kernel"),
        ort_errors.RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : state"),
        ort_errors.Fail(
            "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul "
            "node. Name:'mm' Status Message: CUBLAS failure 13: CUBLAS_STATUS_EXECUTION_FAILED"
        ),
        TypeError("unsupported operand"),
        KeyError("embedding"),
        AttributeError("'NoneType' object has no attribute 'run'"),
        ValueError("Required inputs (['x']) are missing from input feed (['z'])."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_faults_of_the_server_or_runtime_are_not_the_inputs(exc: Exception) -> None:
    assert input_fault(exc) is None


@pytest.fixture
def reshape_model(client: Client, tmp_path: Path) -> str:
    client.create_model("reshaper")
    client.push("reshaper", reshaper(tmp_path / "reshaper.onnx"))
    return "reshaper"


def test_input_the_model_cannot_run_is_a_400_naming_the_node(
    client: Client, http: httpx.Client, reshape_model: str
) -> None:
    ok = client.infer(reshape_model, {"x": np.ones((2, 3), np.float32)})
    assert ok["y"].shape == (2, 3)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    r = http.post(f"/v2/models/{reshape_model}/infer", json=body)
    assert r.status_code == 400, r.text
    assert "Reshape" in r.json()["error"] and "cannot be reshaped" in r.json()["error"]
    assert r.headers["x-error-code"] == "invalid_input"
    # the SDK raises the server's own class, though OIP's error body carries no code
    with pytest.raises(InvalidInput, match="Reshape"):
        client.infer(reshape_model, {"x": np.ones((1, 4), np.float32)})


def broken_runtime(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """Every ONNX model run raises `exc`: a fault of our code or of the runtime."""

    def predict(self: OnnxModel, *args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(OnnxModel, "predict", predict)


@pytest.mark.parametrize(
    "exc",
    [KeyError("weights"), ort_errors.EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : lost")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("route", ["oip", "tfserving"])
def test_runtime_fault_is_a_logged_500_with_the_request_id(
    client: Client,
    http: httpx.Client,
    reshape_model: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    exc: Exception,
    route: str,
) -> None:
    client.infer(reshape_model, {"x": np.ones((1, 3), np.float32)})  # loaded and well
    broken_runtime(monkeypatch, exc)
    caplog.set_level(logging.ERROR, logger="modelworks")
    rid = f"fault-{route}"
    if route == "oip":
        path = f"/v2/models/{reshape_model}/infer"
        x = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
        body: dict[str, Any] = {"inputs": [x]}
    else:
        path = f"/v1/models/{reshape_model}:predict"
        body = {"instances": [[1.0, 2.0, 3.0]]}
    r = http.post(path, json=body, headers={"x-request-id": rid})
    assert r.status_code == 500, r.text
    assert r.headers["x-request-id"] == rid
    assert r.headers["x-content-type-options"] == "nosniff"
    message = r.json()["error"]
    assert rid in message
    assert str(exc) not in message and type(exc).__name__ not in message  # reveals nothing
    # the server's log holds the traceback, under the request id, naming the model
    assert any(rid in rec.getMessage() and rec.exc_info for rec in caplog.records)
    assert "Traceback" in caplog.text and f"while model {reshape_model}:1 ran" in caplog.text
    with pytest.raises(InternalError):
        client.infer(reshape_model, {"x": np.ones((1, 3), np.float32)})


def test_memory_refused_during_a_run_is_a_503_not_a_400(
    client: Client, http: httpx.Client, reshape_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.infer(reshape_model, {"x": np.ones((1, 3), np.float32)})
    broken_runtime(monkeypatch, MemoryError())
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = http.post(f"/v2/models/{reshape_model}/infer", json=body)
    assert r.status_code == 503, r.text
    assert "MODELWORKS_PROCESS_MEMORY_MB" in r.json()["error"] and r.headers["retry-after"] == "1"
