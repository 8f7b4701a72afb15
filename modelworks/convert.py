"""Client-side conversion of scikit-learn models to ONNX (skl2onnx), so the server only ever
receives a data format. Loading the pickle happens here, on the owner's machine, with a file
the owner trusts — never on the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_sklearn(path: Path) -> Any:
    try:
        import joblib
    except ImportError:
        raise RuntimeError("install the converter: pip install 'modelworks[convert]'") from None
    return joblib.load(path)


def sklearn_to_onnx(
    model: Any, n_features: int, out: Path, input_name: str = "input"
) -> dict[str, Any]:
    """Write `model` as ONNX with input FP32 [-1, n_features]; classifiers give `label` and
    `probabilities` tensors (no ZipMap), regressors `variable`."""
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        raise RuntimeError("install the converter: pip install 'modelworks[convert]'") from None
    options: dict[Any, Any] = {}
    if hasattr(model, "predict_proba"):
        options = {id(model): {"zipmap": False}}
    onx = to_onnx(
        model,
        initial_types=[(input_name, FloatTensorType([None, n_features]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    out.write_bytes(onx.SerializeToString())
    return {
        "inputs": [i.name for i in onx.graph.input],
        "outputs": [o.name for o in onx.graph.output],
    }
