"""Write a press-wear ONNX model (three press readings -> die wear in µm) for the README tours.

    python examples/press_wear_onnx.py press_wear.onnx

A linear regression over stroke force (kN), strokes since the last regrind (thousands) and die
temperature (°C): input `readings` FP32 [-1, 3], output `wear_um` FP32 [-1, 1]. Fixed weights,
so the README's numbers are reproducible.
"""

from __future__ import annotations

import sys
from pathlib import Path

WEIGHTS = (0.02, 1.5, 0.1)
BIAS = 2.0


def build(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array(WEIGHTS, dtype=np.float32).reshape(3, 1), "weights")
    b = numpy_helper.from_array(np.array([BIAS], dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["readings", "weights"], ["raw"]),
            helper.make_node("Add", ["raw", "bias"], ["wear_um"]),
        ],
        "press_wear",
        [helper.make_tensor_value_info("readings", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("wear_um", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


if __name__ == "__main__":
    out = build(Path(sys.argv[1] if len(sys.argv) > 1 else "press_wear.onnx"))
    print(f"wrote {out}")
