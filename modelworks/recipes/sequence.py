"""Sequence classification and regression: a GRU or LSTM over windows of sensor readings, for
failure classification or remaining-useful-life regression from a time series.

The dataset names its machine (`entity`) and `time` columns. Rows are ordered by time within
each machine and cut into windows of `window` steps every `stride` steps; a window's target is
the target of its last row. Machines, not rows, are split between training, validation and
test, so no machine's readings are on both sides. The numeric columns (the features, in the
order the report and the signature's `features` list them) are scaled with the training
split's mean and deviation inside the model, a missing reading taking the mean; the exported
ONNX model takes `window` FP32 [batch, time, features] (any number of steps) and answers
`label` and `probabilities`, or `value`.
"""

from __future__ import annotations

import json
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
OPSET = 17


@dataclass
class SeqPrep:
    features: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    labels: list[str] | None = None
    y_mean: float = 0.0
    y_std: float = 1.0


def _net(prep: SeqPrep, params: dict[str, Any], outputs: int) -> torch.nn.Module:
    import torch
    from torch import nn

    class SeqNet(nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32))
            cell = nn.GRU if params["cell"] == "gru" else nn.LSTM
            self.rnn = cell(
                len(prep.features),
                params["hidden_size"],
                params["layers"],
                batch_first=True,
                dropout=params["dropout"] if params["layers"] > 1 else 0.0,
            )
            self.drop = nn.Dropout(params["dropout"])
            self.head = nn.Linear(params["hidden_size"], outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.where(torch.isnan(x) | torch.isinf(x), self.mean, x)
            x = (x - self.mean) / self.std
            out, _ = self.rnn(x)
            return self.head(self.drop(out[:, -1]))  # type: ignore[no-any-return]

    return SeqNet()


def _windows(
    df: pd.DataFrame,
    rows: np.ndarray,
    prep: SeqPrep,
    entity: str,
    target: str,
    window: int,
    stride: int,
) -> tuple[np.ndarray, list[Any]]:
    """Windows of `rows` (already in time order within each machine) and their targets."""
    xs: list[np.ndarray] = []
    ys: list[Any] = []
    part = df.iloc[rows]
    values = part[prep.features].to_numpy(dtype=np.float64)
    targets = part[target].tolist()
    machines = part[entity].astype(str).to_numpy()
    starts = np.flatnonzero(np.r_[True, machines[1:] != machines[:-1]])
    ends = np.r_[starts[1:], len(part)]
    for a, b in zip(starts, ends, strict=True):
        for s in range(a, b - window + 1, stride):
            xs.append(values[s : s + window])
            ys.append(targets[s + window - 1])
    x = np.stack(xs).astype(np.float32) if xs else np.zeros((0, window, len(prep.features)), "f4")
    return x, ys


def train(spec: dict[str, Any], out: Path, ranks: Ranks) -> None:
    import pandas as pd

    from modelworks.datasets import load_frame, split

    params = spec["params"]
    classify = spec["recipe"] == "sequence-classification"
    lead = ranks.lead
    if lead:
        emit(phase="loading", progress=0.0, message="reading the time series")
    df = load_frame(Path(spec["data"]), spec["format"])
    target, entity, time = spec["target"], spec.get("group"), spec.get("time")
    for what, column in (("target", target), ("entity", entity), ("time", time)):
        if not column or column not in df.columns:
            raise TrainingFailed(f"the dataset has no {what} column {column!r}", BAD_DATA)
    df = df[df[target].notna()].copy()
    order = pd.to_datetime(df[time], errors="coerce", format="ISO8601")
    if order.isna().any() or pd.api.types.is_numeric_dtype(df[time]):
        order = pd.to_numeric(df[time], errors="coerce")
    df = df.assign(_order=order).sort_values([entity, "_order"], kind="stable")
    df = df.drop(columns="_order").reset_index(drop=True)
    prep = SeqPrep()
    prep.features = [
        c
        for c in df.columns
        if c not in (target, entity, time)
        and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))
    ]
    if not prep.features:
        raise TrainingFailed("the time series has no numeric columns to read", BAD_DATA)
    fractions = (
        1.0 - params["validation_fraction"] - params["test_fraction"],
        params["validation_fraction"],
        params["test_fraction"],
    )
    machines = df[entity].astype(str).tolist()
    if len(set(machines)) < 3:
        raise TrainingFailed(
            f"{len(set(machines))} machines: a split by machine needs three at least", BAD_DATA
        )
    parts = split(len(df), params["seed"], fractions, machines)
    train_values = np.array(df.iloc[parts["train"]][prep.features], dtype=np.float64)
    train_values[~np.isfinite(train_values)] = np.nan
    prep.mean = np.nan_to_num(np.nanmean(train_values, axis=0)).tolist()
    std = np.nan_to_num(np.nanstd(train_values, axis=0), nan=1.0)
    prep.std = np.where(std > 1e-12, std, 1.0).tolist()
    window, stride = params["window"], params["stride"]
    raw = {k: _windows(df, v, prep, str(entity), target, window, stride) for k, v in parts.items()}
    if len(raw["train"][0]) == 0:
        raise TrainingFailed(
            f"no machine in the training split has {window} readings; lower 'window'", BAD_DATA
        )
    if classify:
        prep.labels = sorted({str(v) for v in raw["train"][1]})
        if len(prep.labels) < 2:
            raise TrainingFailed(
                "the training windows have one class; a classifier needs two", BAD_DATA
            )
        index = {v: i for i, v in enumerate(prep.labels)}
        sets = {}
        for k, (x, ys) in raw.items():
            y = np.array([index.get(str(v), -1) for v in ys], dtype=np.int64)
            sets[k] = (x[y >= 0], y[y >= 0])
    else:
        try:
            y_train = np.array(raw["train"][1], dtype=np.float64)
        except (TypeError, ValueError):
            raise TrainingFailed(f"the target {target!r} is not numeric", BAD_DATA) from None
        prep.y_mean, prep.y_std = float(y_train.mean()), float(y_train.std()) or 1.0
        sets = {
            k: (x, ((np.array(ys, dtype=np.float64) - prep.y_mean) / prep.y_std).astype("f4"))
            for k, (x, ys) in raw.items()
        }

    seed_everything(params["seed"])
    model = _net(prep, params, len(prep.labels) if prep.labels else 1)
    x_val, y_val = sets["validation"]

    def validate(m: torch.nn.Module) -> float:
        if len(x_val) == 0:
            return 0.0
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
    if not lead:
        return
    emit(phase="evaluating", progress=1.0, message="scoring the test machines")
    x_test, y_test = sets["test"]
    report = {
        "metrics": evaluate(
            predict(model, x_test), y_test, classify, prep.y_mean, prep.y_std, full=True
        ),
        "validation": evaluate(predict(model, x_val), y_val, classify, prep.y_mean, prep.y_std),
        "labels": prep.labels,
        "features": prep.features,
        "window": window,
        "stride": stride,
        "epochs_run": fitted.state["epoch"] + 1,
        "best_epoch": fitted.state["best_epoch"] + 1,
        "rows": {k: len(v[0]) for k, v in sets.items()},  # windows
        "machines": {k: len({machines[i] for i in v}) for k, v in parts.items()},
        "seed": params["seed"],
        "world_size": ranks.world,
        "train_seconds": fitted.train_seconds,
        "epochs_this_attempt": fitted.epochs_this_attempt,
        "params": params,
    }
    emit(phase="exporting", progress=1.0, message="exporting to ONNX")
    out.mkdir(parents=True, exist_ok=True)
    report["onnx_max_abs_diff"] = _export(model, prep, classify, x_test, out / "model.onnx")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    config = {"recipe": spec["recipe"], "prep": asdict(prep), "params": params}
    (out / "config.json").write_text(json.dumps(config))
    (out / "report.json").write_text(json.dumps(report, default=float))


def _export(
    model: torch.nn.Module, prep: SeqPrep, classify: bool, x_test: np.ndarray, path: Path
) -> float:
    import onnx
    import onnxruntime as ort
    import torch

    model.eval()
    dummy = torch.zeros(1, 3, len(prep.features))  # batch 1: the RNN export's advice
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["window"],
        output_names=["logits"],
        dynamic_axes={"window": {0: "batch", 1: "time"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    graph_model = onnx.load(str(path))
    add_outputs(graph_model, prep.labels if classify else None, prep.y_mean, prep.y_std)
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sample = x_test[:256]
    got = session.run(["probabilities" if classify else "value"], {"window": sample})[0]
    return parity(predict(model, sample), got, classify, prep.y_mean, prep.y_std, PARITY_TOLERANCE)
