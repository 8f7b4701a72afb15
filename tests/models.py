"""Small ONNX models built inside the tests (seeded, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_onnx(
    path: Path,
    n_in: int = 4,
    n_out: int = 2,
    seed: int = 0,
    input_name: str = "x",
    output_name: str = "y",
) -> Path:
    """y = x @ W + b with seeded weights; input FP32 [batch, n_in]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], [output_name]),
        ],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_out])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def linear_reference(x: np.ndarray, n_in: int = 4, n_out: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    return x @ w + b


def external_data_onnx(path: Path, location: str) -> Path:
    """A model whose weight claims to live in an external file at `location`."""
    linear_onnx(path)
    model = onnx.load_model(str(path))
    for init in model.graph.initializer:
        if init.name == "W":
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            for key, value in (("location", location), ("offset", "0"), ("length", "32")):
                entry = init.external_data.add()
                entry.key = key
                entry.value = value
    path.write_bytes(model.SerializeToString())
    return path


def echo_strings(path: Path) -> Path:
    """s BYTES [-1] -> s_out (same strings) and s_bytes (same strings, named like TF's b64)."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["s"], ["s_out"]),
            helper.make_node("Identity", ["s"], ["s_bytes"]),
        ],
        "echo",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
        [
            helper.make_tensor_value_info("s_out", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("s_bytes", TensorProto.STRING, ["batch"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path
