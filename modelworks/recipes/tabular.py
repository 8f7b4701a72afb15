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
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelworks.jobs.report import emit
from modelworks.recipes.common import BAD_DATA, LOSS_DIVERGED, Ranks, TrainingFailed

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


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

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
    opt = torch.optim.Adam(
        model.parameters(), lr=params["learning_rate"], weight_decay=params["weight_decay"]
    )
    if params["batch_size"] < ranks.world:
        raise TrainingFailed(
            f"batch_size {params['batch_size']} is smaller than the {ranks.world} ranks", BAD_DATA
        )
    x_train, y_train = sets["train"]
    dataset = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=params["seed"]
    )
    loader = DataLoader(dataset, batch_size=params["batch_size"] // ranks.world, sampler=sampler)
    net: torch.nn.Module = model
    if ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    loss_fn = torch.nn.CrossEntropyLoss() if classify else torch.nn.MSELoss()

    state = _resume(Path(spec["checkpoint_dir"]), model, opt, lead)
    epochs, patience = params["epochs"], params["patience"]
    started = time.monotonic()
    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, epochs):
        sampler.set_epoch(epoch)
        net.train()
        total, seen = 0.0, 0
        for xb, yb in loader:
            opt.zero_grad()
            pred = net(xb)
            loss = loss_fn(pred, yb) if classify else loss_fn(pred[:, 0], yb)
            if not torch.isfinite(loss):
                raise TrainingFailed(
                    f"the loss became {loss.item()} at epoch {epoch + 1} (step "
                    f"{state['step'] + 1}); lower learning_rate",
                    LOSS_DIVERGED,
                )
            loss.backward()
            opt.step()
            state["step"] += 1
            total += float(loss.item()) * len(xb)
            seen += len(xb)
        metric = _evaluate(model, sets["validation"], prep, classify)[_metric(classify)]
        better = state["best"] is None or (
            metric > state["best"] if classify else metric < state["best"]
        )
        if better:
            state.update(best=metric, best_epoch=epoch, bad=0)
            state["best_state"] = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            state["bad"] += 1
        state["epoch"] = epoch
        if lead:
            done = epoch + 1 - first_epoch
            eta = (time.monotonic() - started) / done * (epochs - epoch - 1)
            _checkpoint(Path(spec["checkpoint_dir"]), model, opt, state, prep)
            emit(
                phase="training",
                progress=(epoch + 1) / epochs,
                step=state["step"],
                metrics={
                    "epoch": epoch + 1,
                    "loss": total / max(1, seen),
                    f"val_{_metric(classify)}": metric,
                },
                eta_s=eta,
                message=f"epoch {epoch + 1}/{epochs}",
            )
        if state["bad"] >= patience:
            break
    if state.get("best_state") is not None:
        model.load_state_dict(state["best_state"])
    if not lead:
        return
    emit(phase="evaluating", progress=1.0, message="scoring the test split")
    report = {
        "metrics": _evaluate(model, sets["test"], prep, classify, full=True),
        "validation": _evaluate(model, sets["validation"], prep, classify),
        "labels": prep.labels,
        "epochs_run": state["epoch"] + 1,
        "best_epoch": state["best_epoch"] + 1,
        "rows": {k: len(v[0]) for k, v in sets.items()},
        "seed": params["seed"],
        "world_size": ranks.world,
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


def _metric(classify: bool) -> str:
    return "macro_f1" if classify else "rmse"


def _evaluate(
    model: torch.nn.Module,
    data: tuple[np.ndarray, np.ndarray],
    prep: Prep,
    classify: bool,
    full: bool = False,
) -> dict[str, Any]:
    import torch
    from sklearn import metrics as m

    x, y = data
    if len(x) == 0:
        return {}
    model.eval()
    with torch.no_grad():
        raw = model(torch.from_numpy(x)).numpy().astype(np.float64)
    if not classify:
        pred = raw[:, 0] * prep.y_std + prep.y_mean
        true = y.astype(np.float64) * prep.y_std + prep.y_mean
        out: dict[str, Any] = {
            "rmse": float(np.sqrt(m.mean_squared_error(true, pred))),
            "mae": float(m.mean_absolute_error(true, pred)),
        }
        if full:
            out["r2"] = float(m.r2_score(true, pred)) if len(true) > 1 else None
        return out
    probs = torch.softmax(torch.from_numpy(raw), dim=1).numpy()
    pred = probs.argmax(axis=1)
    k = probs.shape[1]
    out = {
        "accuracy": float(m.accuracy_score(y, pred)),
        "macro_f1": float(m.f1_score(y, pred, average="macro", labels=list(range(k)))),
    }
    if full:
        try:
            auc = (
                m.roc_auc_score(y, probs[:, 1])
                if k == 2
                else m.roc_auc_score(y, probs, multi_class="ovr", labels=list(range(k)))
            )
            out["roc_auc"] = float(auc)
        except ValueError as exc:  # a class missing from the test split
            out["roc_auc"] = None
            out["roc_auc_note"] = str(exc)[:200]
        out["confusion_matrix"] = m.confusion_matrix(y, pred, labels=list(range(k))).tolist()
        out["support"] = np.bincount(y, minlength=k).tolist()
    return out


# checkpoints --------------------------------------------------------------------------------
def _checkpoint(
    folder: Path, model: torch.nn.Module, opt: Any, state: dict[str, Any], prep: Prep
) -> None:
    """Every epoch, written whole then renamed: a run killed mid-write leaves the last one."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{state['epoch']:05d}.pt"
    tmp = folder / f".{path.name}.tmp"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "state": state,
            "prep": asdict(prep),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        },
        tmp,
    )
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in sorted(folder.glob("epoch-*.pt"))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def _resume(folder: Path, model: torch.nn.Module, opt: Any, lead: bool) -> dict[str, Any]:
    """The newest checkpoint's state, loaded into model and optimizer; a fresh state if none."""
    import torch

    fresh = {"epoch": -1, "step": 0, "best": None, "best_epoch": 0, "bad": 0, "best_state": None}
    found = sorted(folder.glob("epoch-*.pt")) if folder.is_dir() else []
    if not found:
        return fresh
    ckpt = torch.load(found[-1], map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    np.random.set_state(ckpt["rng"]["numpy"])
    random.setstate(ckpt["rng"]["python"])
    state: dict[str, Any] = ckpt["state"]
    if lead:
        emit(message=f"resuming after epoch {state['epoch'] + 1} from its checkpoint")
    return state


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
    post: list[Any] = []
    if classify:
        assert prep.labels is not None
        inits.append(numpy_helper.from_array(np.array(prep.labels, dtype=object), "post_labels"))
        post += [
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["post_best"], axis=1, keepdims=0),
            helper.make_node("Gather", ["post_labels", "post_best"], ["label"], axis=0),
        ]
        outs = [
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", len(prep.labels)]
            ),
        ]
    else:
        inits += [
            numpy_helper.from_array(np.array(prep.y_std, dtype=np.float32), "post_std"),
            numpy_helper.from_array(np.array(prep.y_mean, dtype=np.float32), "post_mean"),
        ]
        post += [
            helper.make_node("Mul", ["logits", "post_std"], ["post_scaled"]),
            helper.make_node("Add", ["post_scaled", "post_mean"], ["post_value"]),
            helper.make_node("Squeeze", ["post_value", "pre_axis1"], ["value"]),
        ]
        outs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"])]
    nodes = [*pre, *g.node, *post]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    kept_inputs = [i for i in g.input if i.name != "features"]
    del g.input[:]
    g.input.extend([*inputs, *kept_inputs])
    del g.output[:]
    g.output.extend(outs)
    graph_model.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {}
    for name, _, _ in prep.numeric:
        feeds[name] = numeric_values(rows[name]).astype(np.float32)
    for name, _ in prep.categorical:
        feeds[name] = np.array(text_values(rows[name]), dtype=object)
    with torch.no_grad():
        raw = model(torch.from_numpy(prep.matrix(rows))).numpy()
    if classify:
        expected = torch.softmax(torch.from_numpy(raw), dim=1).numpy()
        got = session.run(["probabilities"], feeds)[0]
    else:
        expected = raw[:, 0] * prep.y_std + prep.y_mean
        got = session.run(["value"], feeds)[0]
        expected, got = expected / max(1.0, abs(prep.y_std)), got / max(1.0, abs(prep.y_std))
    diff = float(np.abs(expected - got).max()) if len(rows) else 0.0
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"the ONNX model differs from PyTorch by {diff:.2e}")
    return diff
