"""Warm-up runs a generated input; only a real load failure condemns a model. A model that
refuses the generated input is served and the refusal is reported; a model that cannot load
says why in the runtime's words, without server paths."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelworks.client import Client
from modelworks.serving import pool
from modelworks.settings import Settings
from tests.conftest import LiveServer

WIDTH = 16


def simple_string_onnx(path: Path) -> Path:
    """Triton's `simple_string`: two STRING [-1, 16] inputs read as INT32; their sum and
    difference come back as strings."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["difference"]),
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
        ],
        "simple_string",
        [
            helper.make_tensor_value_info(name, TensorProto.STRING, [-1, WIDTH])
            for name in ("INPUT0", "INPUT1")
        ],
        [
            helper.make_tensor_value_info(name, TensorProto.STRING, [-1, WIDTH])
            for name in ("OUTPUT0", "OUTPUT1")
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def identity_onnx(path: Path, shape: list[int]) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def mistyped_onnx(path: Path) -> Path:
    """Well-formed ONNX that ONNX Runtime refuses to load: Add of FLOAT and INT64."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "n"], ["y"])],
        "mistyped",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [-1, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def only_version(client: Client, name: str) -> dict[str, object]:
    (v,) = client.get_model(name)["version_list"]
    assert isinstance(v, dict)
    return v


def test_string_model_that_fails_its_warm_up_is_served(
    client: Client,
    live_server: LiveServer,
    admin_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tritonclient.http as triton

    # a text the Cast cannot parse, as the warm-up used to send
    monkeypatch.setattr(pool, "WARMUP_TEXT", b"warm up")
    client.create_model("simple_string")
    client.push("simple_string", simple_string_onnx(tmp_path / "simple_string.onnx"))
    assert only_version(client, "simple_string")["load_status"] == "unloaded"

    headers = {"Authorization": f"Bearer {admin_key}"}
    c = triton.InferenceServerClient(url=f"127.0.0.1:{live_server.port}")
    try:
        assert c.is_model_ready("simple_string", headers=headers)
        first = np.array([[str(i).encode() for i in range(WIDTH)]], dtype=np.object_)
        second = np.full((1, WIDTH), b"1", dtype=np.object_)
        inputs = [
            triton.InferInput("INPUT0", [1, WIDTH], "BYTES"),
            triton.InferInput("INPUT1", [1, WIDTH], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(first)
        inputs[1].set_data_from_numpy(second)
        r = c.infer("simple_string", inputs, headers=headers)
    finally:
        c.close()
    total = [int(x) for x in r.as_numpy("OUTPUT0").reshape(-1)]
    difference = [int(x) for x in r.as_numpy("OUTPUT1").reshape(-1)]
    assert total == [i + 1 for i in range(WIDTH)]
    assert difference == [i - 1 for i in range(WIDTH)]

    v = only_version(client, "simple_string")
    assert v["load_status"] == "ready"
    reason = str(v["load_reason"])
    assert "warm-up" in reason and "Cast" in reason, reason
    # and `modelworks models show` says so
    from typer.testing import CliRunner

    from modelworks.cli import app as cli

    monkeypatch.setenv("MODELWORKS_URL", live_server.url)
    monkeypatch.setenv("MODELWORKS_API_KEY", admin_key)
    monkeypatch.setenv("COLUMNS", "80")
    shown = CliRunner().invoke(cli, ["models", "show", "simple_string"])
    assert shown.exit_code == 0, shown.output
    assert "ready: " in shown.stdout and "warm-up" in shown.stdout, shown.stdout


def test_text_warm_up_value_casts_to_numbers(client: Client, tmp_path: Path) -> None:
    client.create_model("simple_string")
    client.push("simple_string", simple_string_onnx(tmp_path / "simple_string.onnx"))
    ones = [["1"] * WIDTH]
    out = client.infer("simple_string", {"INPUT0": ones, "INPUT1": ones})
    assert [int(x) for x in out["OUTPUT0"].reshape(-1)] == [2] * WIDTH
    v = only_version(client, "simple_string")
    assert (v["load_status"], v["load_reason"]) == ("ready", "")


def test_model_that_cannot_load_reports_the_runtime_message_without_paths(
    client: Client, http: httpx.Client, settings: Settings, tmp_path: Path
) -> None:
    client.create_model("m")
    client.push("m", mistyped_onnx(tmp_path / "mistyped.onnx"))
    digest = client.get_version("m", 1)["digest"]

    r = http.get("/v2/models/m/ready")
    assert r.status_code == 503, r.text
    assert r.json()["ready"] is False
    v = only_version(client, "m")
    assert v["load_status"] == "failed"
    for reason in (r.json()["error"], str(v["load_reason"])):
        assert "Type Error" in reason and "Add" in reason, reason
        assert "Load model from <path> failed" in reason, reason
        assert str(settings.home) not in reason and str(tmp_path) not in reason, reason
        assert digest[7:] not in reason and len(reason) < 400, reason
    # TF-Serving's status says END with the reason, as TF-Serving reports a failed servable
    (status,) = http.get("/v1/models/m/versions/1").json()["model_version_status"]
    assert status["state"] == "END" and status["status"]["error_code"] == "UNKNOWN", status
    assert "Type Error" in status["status"]["error_message"], status


def test_runtime_message_drops_paths_with_blanks() -> None:
    root = Path("/srv/model store")
    exc = RuntimeError(
        f"[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from {root}/blobs/ab/cd "
        "failed:Protobuf parsing failed. See ~/.cache/x and C:\\models\\m.onnx"
    )
    assert pool.runtime_message(exc, [root]) == (
        "INVALID_PROTOBUF : Load model from <path> failed:Protobuf parsing failed. "
        "See <path> and <path>"
    )
    assert pool.runtime_message(RuntimeError("x" * 1000)).endswith("…")


def test_huge_declared_input_is_not_allocated_for_warm_up(
    client: Client, http: httpx.Client, tmp_path: Path
) -> None:
    client.create_model("wide")
    # 32 MiB for one row: under the upload's element cap, over the warm-up's byte cap
    client.push("wide", identity_onnx(tmp_path / "wide.onnx", [-1, 2048, 4096]))
    r = http.get("/v2/models/wide/ready")
    assert r.status_code == 200, r.text
    v = only_version(client, "wide")
    assert v["load_status"] == "ready"
    assert "warm-up skipped" in str(v["load_reason"])
