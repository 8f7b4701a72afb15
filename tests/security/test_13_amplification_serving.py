"""SECURITY.md class 11, on the serving side: amplification.

A small request must not make the server build or send a large answer: a byte budget
(`MODELWORKS_MAX_RESPONSE_BYTES`) caps every answer, whether its size is chosen by the input
(shapes, repeated text, several copies of an output) or fixed by the signature (refused before
the model runs or even loads). A model's own declarations cannot make a load allocate much
for its warm-up. And a request's rows are charged to its quotas before any work starts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelworks.api.services import Services
from modelworks.auth.keys import Principal
from modelworks.client import Client
from modelworks.context import CURRENT
from modelworks.db import upgrade
from modelworks.errors import TooManyRequests
from modelworks.settings import Settings
from tests.models import linear_onnx

BUDGET = 1024 * 1024  # this module's MODELWORKS_MAX_RESPONSE_BYTES
WIDE = 65536  # floats per row of the wide model: 256 KiB


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(
        home=tmp_path / "home",
        max_upload_bytes=1024 * 1024,
        max_response_bytes=BUDGET,
        allowed_hosts="testserver,127.0.0.1,localhost",
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    return s


def save(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], **kw: Any) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, **kw)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def zeros_of_shape_onnx(path: Path, copies: int = 1) -> Path:
    """`copies` outputs, each zeros of the shape the caller sends."""
    return save(
        path,
        [helper.make_node("ConstantOfShape", ["shape"], ["z0"])]
        + [helper.make_node("Identity", ["z0"], [f"z{i}"]) for i in range(1, copies)],
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [
            helper.make_tensor_value_info(f"z{i}", TensorProto.FLOAT, ["r", "c"])
            for i in range(copies)
        ],
    )


def repeated_text_onnx(path: Path) -> Path:
    """The caller's text, repeated as many times as the caller asks."""
    return save(
        path,
        [helper.make_node("Expand", ["s", "count"], ["out"])],
        [
            helper.make_tensor_value_info("s", TensorProto.STRING, [1]),
            helper.make_tensor_value_info("count", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["n"])],
    )


def wide_onnx(path: Path) -> Path:
    """Each input row becomes a declared WIDE-float output row."""
    ones = numpy_helper.from_array(np.array([1, WIDE], dtype=np.int64), "wide")
    return save(
        path,
        [helper.make_node("Expand", ["x", "wide"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDE])],
        initializer=[ones],
    )


def push(client: Client, name: str, path: Path) -> None:
    client.create_model(name)
    client.push(name, path)


def shape_body(rows: int, cols: int) -> dict[str, Any]:
    return {"inputs": [{"name": "shape", "shape": [2], "datatype": "INT64", "data": [rows, cols]}]}


def text_body(text: str, count: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": [text]},
            {"name": "count", "shape": [1], "datatype": "INT64", "data": [count]},
        ]
    }


def assert_refused_for_size(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text[:300]
    message = r.json()["error"]
    assert "MODELWORKS_MAX_RESPONSE_BYTES" in message and "fewer rows" in message, message


# answers whose size the input chooses -----------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "huge", "small"),
    [
        # 4 MiB of zeros from a 16-byte shape
        (zeros_of_shape_onnx, shape_body(1024, 1024), shape_body(2, 2)),
        # three copies of 1 MiB each: every output fits, the answer does not
        (lambda p: zeros_of_shape_onnx(p, copies=3), shape_body(512, 512), shape_body(2, 2)),
        # 2 MB of text from a 1 kB request
        (repeated_text_onnx, text_body("é" * 500, 2000), text_body("é" * 500, 2)),
    ],
    ids=["shape", "copies", "text"],
)
def test_answer_over_the_budget_is_413(
    http: httpx.Client, client: Client, tmp_path: Path, build: Any, huge: Any, small: Any
) -> None:
    push(client, "amp", build(tmp_path / "amp.onnx"))

    assert_refused_for_size(http.post("/v2/models/amp/infer", json=huge))

    assert http.post("/v2/models/amp/infer", json=small).status_code == 200
    assert http.get("/livez").status_code == 200


def test_answer_the_signature_makes_too_large_is_refused_before_the_model_loads(
    http: httpx.Client, client: Client, services: Services, tmp_path: Path
) -> None:
    push(client, "wide", wide_onnx(tmp_path / "wide.onnx"))
    rows = BUDGET // (WIDE * 4) + 1
    body = {"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32", "data": [1] * rows}]}

    assert_refused_for_size(http.post("/v2/models/wide/infer", json=body))
    assert services.pool.entries() == [], "refused before the model loaded or ran"

    one = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [2]}]}
    r = http.post("/v2/models/wide/infer", json=one)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, WIDE]


# what a model's declarations may cost at load -------------------------------------------------
def identity_onnx(path: Path, elem_type: int, shape: list[int]) -> Path:
    return save(
        path,
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )


def declared_output_onnx(path: Path) -> Path:
    """A one-float input, and an output the model fixes at 2048 x 4096 floats (32 MiB)."""
    shape = numpy_helper.from_array(np.array([2048, 4096], dtype=np.int64), "shape")
    return save(
        path,
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2048, 4096])],
        initializer=[shape],
    )


@pytest.mark.parametrize(
    "build",
    [
        # 4M float64 elements: 32 MiB for a warm-up input
        lambda p: identity_onnx(p, TensorProto.DOUBLE, [1, 2048, 2048]),
        # 1M text elements: far more than their count in bytes once generated and converted
        lambda p: identity_onnx(p, TensorProto.STRING, [1, 1024, 1024]),
        lambda p: declared_output_onnx(p),
    ],
    ids=["float64-input", "text-input", "declared-output"],
)
def test_warm_up_past_its_byte_cap_is_skipped(
    http: httpx.Client, client: Client, tmp_path: Path, build: Any
) -> None:
    push(client, "big", build(tmp_path / "big.onnx"))

    r = http.get("/v2/models/big/ready")

    assert r.status_code == 200, r.text
    (version,) = client.get_model("big")["version_list"]
    assert version["load_status"] == "ready"
    assert "warm-up skipped" in version["load_reason"], version["load_reason"]


# cost reserved before work ----------------------------------------------------------------------
def test_rows_are_reserved_before_the_model_loads(
    client: Client, services: Services, tmp_path: Path
) -> None:
    push(client, "m", linear_onnx(tmp_path / "m.onnx"))
    principal = Principal(
        key_id=None, prefix="test", project_id=services.default_project_id, role="owner"
    )
    target = services.serving.resolve(principal, "m")
    asked: list[dict[str, int]] = []

    async def refuse(counts: dict[str, int]) -> None:
        asked.append(counts)
        raise TooManyRequests("the key's daily item quota is spent")

    async def main() -> None:
        token = CURRENT.set({"reserve": refuse})
        try:
            await services.serving.predict(target, {"x": np.ones((7, 4), np.float32)})
        finally:
            CURRENT.reset(token)

    with pytest.raises(TooManyRequests):
        asyncio.run(main())
    assert asked == [{"items": 7}]
    assert services.pool.entries() == [], "nothing loaded or ran for a refused request"
