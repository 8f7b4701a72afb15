"""Tabular classification and regression: an MLP on numeric and text columns.

The preprocessing is learned from the training split only (numeric columns: mean and standard
deviation, a missing value taking the mean; booleans as 0/1; text columns: their
`max_categories` most frequent values, anything else one "other" slot) and is exported INSIDE
the ONNX graph, so the server takes raw columns: one graph input per column ([-1] FP32 for a
number, [-1] STRING for text), answering `label` and `probabilities` (classification) or
`value` (regression). The ONNX model is checked against PyTorch on the test rows.

Data parallel under torch's elastic launcher: every rank reads the whole file, and a
`DistributedSampler` deals it the rows of its shard; `batch_size` is the global batch, so
with the same seed a run on N ranks takes the same optimizer steps over the same batches as
a run on one (up to the order floating-point sums are made in).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelworks.jobs.report import emit
from modelworks.recipes.common import BAD_DATA, Ranks, TrainingFailed
from modelworks.recipes.loop import (
    add_outputs,
    evaluate,
    fit,
    metric_name,
    parity,
    predict,
    seed_everything,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

PARITY_TOLERANCE = 1e-4
KEEP_CHECKPOINTS = 2
OPSET, ML_OPSET = 17, 3


@dataclass
class Prep:
    """The preprocessing fitted on the training split (JSON-able, saved with the model)."""

    numeric: list[tuple[str, float, float]] = field(default_factory=list)  # name, mean, std
    categorical: list[tuple[str, list[str]]] = field(default_factory=list)  # name, vocabulary
    labels: list[str] | None = None  # classification
    y_mean: float = 0.0  # regression
    y_std: float = 1.0

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) + 1 for _, v in self.categorical)

    def matrix(self, df: pd.DataFrame) -> np.ndarray:
        cols = []
        for name, mean, std in self.numeric:
            x = numeric_values(df[name])
            cols.append(((np.where(np.isnan(x), mean, x) - mean) / std)[:, None])
        for name, vocab in self.categorical:
            index = {v: i + 1 for i, v in enumerate(vocab)}
            idx = np.array([index.get(v, 0) for v in text_values(df[name])], dtype=np.int64)
            cols.append(np.eye(len(vocab) + 1, dtype=np.float64)[idx])
        return np.concatenate(cols, axis=1).astype(np.float32)


def numeric_values(s: pd.Series) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_bool_dtype(s):
        return np.asarray(s.astype(np.float64).to_numpy())
    x = np.asarray(pd.to_numeric(s, errors="coerce").astype(np.float64).to_numpy())
    return np.where(np.isinf(x), np.nan, x)  # an infinite reading is as good as a missing one


def text_values(s: pd.Series) -> list[str]:
    """A text column as the server receives it: missing values as the empty string."""
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in s]


def fit_prep(df: pd.DataFrame, features: list[str], max_categories: int) -> Prep:
    import pandas as pd

    prep = Prep()
    for name in features:
        s = df[name]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            x = numeric_values(s)
            present = x[~np.isnan(x)]
            mean = float(present.mean()) if present.size else 0.0
            std = float(present.std()) if present.size else 1.0
            prep.numeric.append((name, mean, std if std > 1e-12 else 1.0))
        else:
            counts: dict[str, int] = {}
            for v in text_values(s):
                if v:
                    counts[v] = counts.get(v, 0) + 1
            ranked = sorted(counts, key=lambda v: (-counts[v], v))[:max_categories]
            prep.categorical.append((name, ranked))
    return prep


def mlp(width: int, hidden: list[int], dropout: float, out: int) -> torch.nn.Module:
    from torch import nn

    layers: list[nn.Module] = []
    last = width
    for units in hidden:
        layers += [nn.Linear(last, units), nn.ReLU(), nn.Dropout(dropout)]
        last = units
    layers.append(nn.Linear(last, out))
    return nn.Sequential(*layers)


# the run ------------------------------------------------------------------------------------
def train(spec: dict[str, Any], out: Path, ranks: Ranks) -> None:
    from modelworks.datasets import load_frame, split

    params = spec["params"]
    classify = spec["recipe"] == "tabular-classification"
    lead = ranks.lead
    if lead:
        emit(phase="loading", progress=0.0, message="reading the dataset")
    df = load_frame(Path(spec["data"]), spec["format"])
    target, group = spec["target"], spec.get("group")
    if target not in df.columns:
        raise TrainingFailed(f"the dataset has no column {target!r}", BAD_DATA)
    df = df[df[target].notna()].reset_index(drop=True)
    features = [c for c in df.columns if c not in (target, group)]
    if not features:
        raise TrainingFailed("the dataset has no feature columns beside the target", BAD_DATA)
    fractions = (
        1.0 - params["validation_fraction"] - params["test_fraction"],
        params["validation_fraction"],
        params["test_fraction"],
    )
    if len(df) < 10:
        raise TrainingFailed(f"{len(df)} rows with a target: too few to split", BAD_DATA)
    groups = df[group].astype(str).tolist() if group else None
    parts = split(len(df), params["seed"], fractions, groups)
    train_df = df.iloc[parts["train"]]
    prep = fit_prep(train_df, features, params["max_categories"])
    if classify:
        prep.labels = sorted({str(v) for v in train_df[target]})
        if len(prep.labels) < 2:
            raise TrainingFailed(
                f"the training split has one class of {target!r}; a classifier needs two",
                BAD_DATA,
            )
        index = {v: i for i, v in enumerate(prep.labels)}

        def targets(frame: pd.DataFrame) -> np.ndarray:
            return np.array([index.get(str(v), -1) for v in frame[target]], dtype=np.int64)
    else:
        y = numeric_values(train_df[target])
        if np.isnan(y).any():
            raise TrainingFailed(f"the target {target!r} is not numeric", BAD_DATA)
        prep.y_mean, prep.y_std = float(y.mean()), float(y.std()) or 1.0

        def targets(frame: pd.DataFrame) -> np.ndarray:
            return ((numeric_values(frame[target]) - prep.y_mean) / prep.y_std).astype(np.float32)

    sets = {k: (prep.matrix(df.iloc[v]), targets(df.iloc[v])) for k, v in parts.items()}
    if classify:  # a class unseen in training cannot be predicted: leave those rows out
        sets = {k: (x[y >= 0], y[y >= 0]) for k, (x, y) in sets.items()}

    seed_everything(params["seed"])
    outputs = len(prep.labels) if prep.labels else 1
    model = mlp(prep.width, params["hidden"], params["dropout"], outputs)
    x_val, y_val = sets["validation"]

    def validate(m: torch.nn.Module) -> float:
        scores = evaluate(predict(m, x_val), y_val, classify, prep.y_mean, prep.y_std)
        return float(scores[metric_name(classify)])

    fitted = fit(
        model,
        *sets["train"],
        validate,
        classify=classify,
        params=params,
        checkpoint_dir=Path(spec["checkpoint_dir"]),
        ranks=ranks,
        extra={"prep": asdict(prep)},
    )
    state = fitted.state
    if not lead:
        return
    emit(phase="evaluating", progress=1.0, message="scoring the test split")
    x_test, y_test = sets["test"]
    report = {
        "metrics": evaluate(
            predict(model, x_test), y_test, classify, prep.y_mean, prep.y_std, full=True
        ),
        "validation": evaluate(predict(model, x_val), y_val, classify, prep.y_mean, prep.y_std),
        "labels": prep.labels,
        "epochs_run": state["epoch"] + 1,
        "best_epoch": state["best_epoch"] + 1,
        "rows": {k: len(v[0]) for k, v in sets.items()},
        "seed": params["seed"],
        "world_size": ranks.world,
        "train_seconds": fitted.train_seconds,  # this attempt's epochs
        "epochs_this_attempt": fitted.epochs_this_attempt,
        "params": params,
        "features": features,
    }
    emit(phase="exporting", progress=1.0, message="exporting to ONNX")
    out.mkdir(parents=True, exist_ok=True)
    test_rows = df.iloc[parts["test"]]
    report["onnx_max_abs_diff"] = export(model, prep, classify, test_rows, out / "model.onnx")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    config = {"recipe": spec["recipe"], "prep": asdict(prep), "params": params}
    (out / "config.json").write_text(json.dumps(config))
    (out / "report.json").write_text(json.dumps(report, default=float))


# export -------------------------------------------------------------------------------------
def export(
    model: torch.nn.Module, prep: Prep, classify: bool, rows: pd.DataFrame, path: Path
) -> float:
    """ONNX with the preprocessing inside; returns its largest difference from PyTorch on the
    test rows (a run fails past PARITY_TOLERANCE)."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    model.eval()
    core = path.with_suffix(".core.onnx")
    dummy = torch.zeros(2, prep.width)
    torch.onnx.export(
        model,
        (dummy,),
        str(core),
        input_names=["features"],
        output_names=["logits"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    graph_model = onnx.load(str(core))
    core.unlink()
    g = graph_model.graph
    pre: list[Any] = []
    inits: list[Any] = [numpy_helper.from_array(np.array([1], dtype=np.int64), "pre_axis1")]
    inputs: list[Any] = []
    parts: list[str] = []
    for i, (name, mean, std) in enumerate(prep.numeric):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]))
        inits += [  # a missing (NaN) or infinite reading takes the training mean
            numpy_helper.from_array(np.array(mean, dtype=np.float32), f"pre{i}_mean"),
            numpy_helper.from_array(np.array(std, dtype=np.float32), f"pre{i}_std"),
        ]
        pre += [
            helper.make_node("IsNaN", [name], [f"pre{i}_isnan"]),
            helper.make_node("IsInf", [name], [f"pre{i}_isinf"]),
            helper.make_node("Or", [f"pre{i}_isnan", f"pre{i}_isinf"], [f"pre{i}_nan"]),
            helper.make_node("Where", [f"pre{i}_nan", f"pre{i}_mean", name], [f"pre{i}_full"]),
            helper.make_node("Sub", [f"pre{i}_full", f"pre{i}_mean"], [f"pre{i}_c"]),
            helper.make_node("Div", [f"pre{i}_c", f"pre{i}_std"], [f"pre{i}_s"]),
            helper.make_node("Unsqueeze", [f"pre{i}_s", "pre_axis1"], [f"pre{i}_col"]),
        ]
        parts.append(f"pre{i}_col")
    for j, (name, vocab) in enumerate(prep.categorical):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["batch"]))
        inits += [
            numpy_helper.from_array(np.array([len(vocab) + 1], dtype=np.int64), f"cat{j}_depth"),
            numpy_helper.from_array(np.array([0.0, 1.0], dtype=np.float32), f"cat{j}_values"),
        ]
        pre += [
            helper.make_node(
                "LabelEncoder",
                [name],
                [f"cat{j}_idx"],
                domain="ai.onnx.ml",
                keys_strings=vocab or ["\x00"],
                values_int64s=list(range(1, len(vocab) + 1)) or [0],
                default_int64=0,
            ),
            helper.make_node(
                "OneHot", [f"cat{j}_idx", f"cat{j}_depth", f"cat{j}_values"], [f"cat{j}_col"]
            ),
        ]
        parts.append(f"cat{j}_col")
    pre.append(helper.make_node("Concat", parts, ["features"], axis=1))
    nodes = [*pre, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    kept_inputs = [i for i in g.input if i.name != "features"]
    del g.input[:]
    g.input.extend([*inputs, *kept_inputs])
    add_outputs(graph_model, prep.labels if classify else None, prep.y_mean, prep.y_std)
    graph_model.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {}
    for name, _, _ in prep.numeric:
        feeds[name] = numeric_values(rows[name]).astype(np.float32)
    for name, _ in prep.categorical:
        feeds[name] = np.array(text_values(rows[name]), dtype=object)
    raw = predict(model, prep.matrix(rows))
    got = session.run(["probabilities" if classify else "value"], feeds)[0]
    return parity(raw, got, classify, prep.y_mean, prep.y_std, PARITY_TOLERANCE)
