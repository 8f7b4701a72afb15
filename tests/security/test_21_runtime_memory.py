"""SECURITY.md class 11, inside the runtime: what ONNX Runtime may allocate.

The answer budget is checked once the model has run, so a shape chosen by the input could make
one run allocate gigabytes first (and the kernel kill the server). ONNX Runtime's host memory is
one arena the process shares, capped by `MODELWORKS_INFERENCE_MEMORY_MB` (here CAP_MB, with no
model budget on top): a run past it answers 413 naming the setting, the server goes on, and the
process grows by at most the cap. Sessions share it (answers still held count), and a model's
constant folding cannot allocate past it at load.

Memory is read from /proc/self/status: the peak (VmHWM, reset through /proc/self/clear_refs
before each measure) against the resident size before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelworks.api.services import Services
from modelworks.auth.keys import Principal
from modelworks.client import Client
from modelworks.db import upgrade
from modelworks.errors import PayloadTooLarge
from modelworks.runtimes.onnx import OnnxModel, cap_memory
from modelworks.settings import Settings

CAP_MB = 64
CAP = CAP_MB * 1024 * 1024
SETTING = "MODELWORKS_INFERENCE_MEMORY_MB"
WIDE = 1024 * 1024  # floats the `wide` output declares per row: 4 MiB


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(
        home=tmp_path / "home",
        max_upload_bytes=1024 * 1024,
        allowed_hosts="testserver,127.0.0.1,localhost",
        inference_memory_mb=CAP_MB,
        memory_budget_mb=0,
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    yield s
    cap_memory(0)  # the cap is the process's: later tests get ONNX Runtime's own arenas again


@pytest.fixture
def capped() -> Iterator[None]:
    cap_memory(CAP)
    yield
    cap_memory(0)


def save(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], **kw: Any) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, **kw)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def expand_onnx(path: Path, copy: bool = True) -> Path:
    """y = v expanded to the shape the caller sends, and z = a copy of y."""
    nodes = [helper.make_node("Expand", ["v", "s"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])]
    if copy:
        nodes.append(helper.make_node("Identity", ["y"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["a", "b"]))
    inputs = [
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("s", TensorProto.INT64, [2]),
    ]
    return save(path, nodes, inputs, outputs)


def folding_onnx(path: Path, nodes: int, floats: int) -> Path:
    """y = the sum of x plus `nodes` constants of `floats` floats each, every one a
    ConstantOfShape of a constant shape: a few hundred bytes of graph that fold into
    nodes x floats x 4 bytes."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [floats])
    graph: list[Any] = []
    total = "x"
    for i in range(nodes):  # values differ: ONNX Runtime shares equal constants
        value = helper.make_tensor("v", TensorProto.FLOAT, [1], [float(i)])
        graph.append(helper.make_node("ConstantOfShape", ["shape"], [f"c{i}"], value=value))
        graph.append(helper.make_node("Add", [total, f"c{i}"], [f"t{i}"]))
        total = f"t{i}"
    graph.append(helper.make_node("ReduceSum", [total], ["y"], keepdims=0))
    return save(
        path,
        graph,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializer=[shape],
    )


def expand_body(rows: int, cols: int, outputs: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "v", "shape": [1], "datatype": "FP32", "data": [1.5]},
            {"name": "s", "shape": [2], "datatype": "INT64", "data": [rows, cols]},
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def expand_feeds(rows: int, cols: int) -> dict[str, np.ndarray]:
    return {"v": np.array([1.5], np.float32), "s": np.array([rows, cols], np.int64)}


def _kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) * 1024


class Growth:
    """How far the process's peak memory rose above its resident size at the start."""

    def __init__(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
        self.start = _kib("VmRSS")

    def bytes(self) -> int:
        return _kib("VmHWM") - self.start


def assert_memory_refusal(message: str) -> None:
    assert SETTING in message and "fewer rows" in message, message


def test_run_past_the_cap_is_413_and_costs_at_most_the_cap(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    client.create_model("amp")
    client.push("amp", expand_onnx(tmp_path / "amp.onnx"))
    assert http.post("/v2/models/amp/infer", json=expand_body(2, 3)).status_code == 200
    growth = Growth()

    # 256 MiB for y (and as much again for z before the fix) from a 16-byte shape
    r = http.post("/v2/models/amp/infer", json=expand_body(8192, 8192, outputs=["y"]))

    assert r.status_code == 413, r.text[:300]
    assert_memory_refusal(r.json()["error"])
    assert growth.bytes() <= CAP
    small = http.post("/v2/models/amp/infer", json=expand_body(2, 3))
    assert small.status_code == 200 and small.json()["outputs"][0]["data"] == [1.5] * 6
    assert http.get("/livez").status_code == 200


def test_sessions_share_the_cap_and_answers_held_count(tmp_path: Path, capped: None) -> None:
    first = OnnxModel(expand_onnx(tmp_path / "a.onnx", copy=False), {})
    second = OnnxModel(expand_onnx(tmp_path / "b.onnx", copy=False), {})
    half = CAP // 2 // 4 // 1024 + 1  # rows of 1024 floats: a bit over half the cap

    held = first.predict(expand_feeds(half, 1024))  # an answer not yet sent
    with pytest.raises(PayloadTooLarge) as refused:
        second.predict(expand_feeds(half, 1024))

    assert_memory_refusal(refused.value.message)
    del held
    assert second.predict(expand_feeds(half, 1024)).outputs["y"].shape == (half, 1024)


@pytest.mark.parametrize(
    ("nodes", "floats"),
    [(1, 16384 * 16384), (64, 1024 * 1024)],
    ids=["one-1GiB-constant", "64-distinct-4MiB-constants"],
)
def test_constants_are_not_folded_past_the_cap_at_load(
    tmp_path: Path, capped: None, nodes: int, floats: int
) -> None:
    path = folding_onnx(tmp_path / "fold.onnx", nodes, floats)
    growth = Growth()

    model = OnnxModel(path, {})
    with pytest.raises(PayloadTooLarge) as refused:  # they are computed when it runs, capped
        model.predict({"x": np.zeros(1, np.float32)})

    assert_memory_refusal(refused.value.message)
    assert growth.bytes() <= CAP


def declared_wide_onnx(path: Path) -> Path:
    """Two copies of x: `narrow` declared [batch, 1], `wide` declared [batch, WIDE] floats."""
    return save(
        path,
        [helper.make_node("Identity", ["x"], [n]) for n in ("narrow", "wide")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [
            helper.make_tensor_value_info("narrow", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("wide", TensorProto.FLOAT, ["batch", WIDE]),
        ],
    )


def test_the_answer_budget_counts_only_the_outputs_asked_for(
    client: Client, services: Services, settings: Settings, tmp_path: Path
) -> None:
    client.create_model("two")
    client.push("two", declared_wide_onnx(tmp_path / "two.onnx"))
    principal = Principal(
        key_id=None, prefix="test", project_id=services.default_project_id, role="owner"
    )
    target = services.serving.resolve(principal, "two")
    rows = settings.max_response_bytes // (WIDE * 4) + 1  # `wide` alone is over the budget
    feeds = {"x": np.ones((rows, 1), np.float32)}

    with pytest.raises(PayloadTooLarge):
        asyncio.run(services.serving.predict(target, feeds))
    assert services.pool.entries() == [], "refused before the model loaded"

    answer = asyncio.run(services.serving.predict(target, feeds, wanted=["narrow"]))
    assert answer.outputs["narrow"].shape == (rows, 1)
