"""The training loop every recipe shares: data-parallel batches, early stopping on a
validation metric, a checkpoint every epoch (and resuming from the newest), progress events,
and the scores of the report. A recipe brings the model, its tensors and its export.

With N ranks, `DistributedSampler` deals rank r the positions r, r+N, r+2N… of each epoch's
seeded permutation, so the N per-rank batches of `batch_size // N` rows together are the
`batch_size` rows one rank would take, and DDP averages their gradients: the same steps.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelworks.jobs.report import emit
from modelworks.recipes.common import BAD_DATA, LOSS_DIVERGED, Ranks, TrainingFailed

if TYPE_CHECKING:
    import torch

KEEP_CHECKPOINTS = 2


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Fitted:
    state: dict[str, Any]
    train_seconds: float  # this attempt's epochs
    epochs_this_attempt: int


def metric_name(classify: bool) -> str:
    return "macro_f1" if classify else "rmse"


def fit(
    model: torch.nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    validate: Callable[[torch.nn.Module], float],
    *,
    classify: bool,
    params: dict[str, Any],
    checkpoint_dir: Path,
    ranks: Ranks,
    extra: dict[str, Any] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Fitted:
    """Train `model` (in place; it ends with the best epoch's weights). `validate` scores the
    model on the validation split: higher is better for a classifier (macro-F1), lower for a
    regressor (RMSE). `extra` is saved in each checkpoint (the recipe's preprocessing)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    if params["batch_size"] < ranks.world:
        raise TrainingFailed(
            f"batch_size {params['batch_size']} is smaller than the {ranks.world} ranks", BAD_DATA
        )
    opt = torch.optim.Adam(
        model.parameters(), lr=params["learning_rate"], weight_decay=params["weight_decay"]
    )
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
    name = metric_name(classify)

    state = _resume(checkpoint_dir, model, opt, ranks.lead)
    epochs, patience = params["epochs"], params["patience"]
    started = time.monotonic()
    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, epochs):
        sampler.set_epoch(epoch)
        net.train()
        total, seen = 0.0, 0
        for xb, yb in loader:
            if augment is not None:
                xb = augment(xb)
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
        model.eval()
        metric = validate(model)
        better = state["best"] is None or (
            metric > state["best"] if classify else metric < state["best"]
        )
        if better:
            state.update(best=metric, best_epoch=epoch, bad=0)
            state["best_state"] = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            state["bad"] += 1
        state["epoch"] = epoch
        if ranks.lead:
            done = epoch + 1 - first_epoch
            eta = (time.monotonic() - started) / done * (epochs - epoch - 1)
            _checkpoint(checkpoint_dir, model, opt, state, extra or {})
            emit(
                phase="training",
                progress=(epoch + 1) / epochs,
                step=state["step"],
                metrics={"epoch": epoch + 1, "loss": total / max(1, seen), f"val_{name}": metric},
                eta_s=eta,
                message=f"epoch {epoch + 1}/{epochs}",
            )
        if state["bad"] >= patience:
            break
    seconds = time.monotonic() - started
    if state.get("best_state") is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    return Fitted(state, seconds, state["epoch"] + 1 - first_epoch)


def evaluate(
    logits: np.ndarray,
    y: np.ndarray,
    classify: bool,
    y_mean: float = 0.0,
    y_std: float = 1.0,
    full: bool = False,
) -> dict[str, Any]:
    """The scores of a model's raw outputs against the truth: accuracy and macro-F1 (with
    `full`: ROC-AUC, confusion matrix, support) for a classifier; RMSE and MAE (with `full`:
    R²) for a regressor, in the target's own units. scikit-learn computes them."""
    from sklearn import metrics as m

    if len(logits) == 0:
        return {}
    raw = logits.astype(np.float64)
    out: dict[str, Any]
    if not classify:
        pred = raw[:, 0] * y_std + y_mean
        true = y.astype(np.float64) * y_std + y_mean
        out = {
            "rmse": float(np.sqrt(m.mean_squared_error(true, pred))),
            "mae": float(m.mean_absolute_error(true, pred)),
        }
        if full:
            out["r2"] = float(m.r2_score(true, pred)) if len(true) > 1 else None
        return out
    shifted = raw - raw.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
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


def predict(model: torch.nn.Module, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The model's raw outputs on `x`, a batch at a time."""
    import torch

    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            parts.append(model(torch.from_numpy(x[start : start + batch])).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)


# checkpoints --------------------------------------------------------------------------------
def _checkpoint(
    folder: Path, model: torch.nn.Module, opt: Any, state: dict[str, Any], extra: dict[str, Any]
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
            "extra": extra,
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
    # our own file, written by this job's previous attempt into its own folder
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
def add_outputs(graph_model: Any, labels: list[str] | None, y_mean: float, y_std: float) -> None:
    """Replace a graph's `logits` output by what the server answers: `label` (STRING [-1]) and
    `probabilities` (FP32 [-1, K]) for a classifier, `value` (FP32 [-1], in the target's
    units) for a regressor."""
    from onnx import TensorProto, helper, numpy_helper

    g = graph_model.graph
    if labels is not None:
        inits = [numpy_helper.from_array(np.array(labels, dtype=object), "post_labels")]
        post = [
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["post_best"], axis=1, keepdims=0),
            helper.make_node("Gather", ["post_labels", "post_best"], ["label"], axis=0),
        ]
        outs = [
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", len(labels)]
            ),
        ]
    else:
        inits = [
            numpy_helper.from_array(np.array(y_std, dtype=np.float32), "post_std"),
            numpy_helper.from_array(np.array(y_mean, dtype=np.float32), "post_mean"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "post_axis1"),
        ]
        post = [
            helper.make_node("Mul", ["logits", "post_std"], ["post_scaled"]),
            helper.make_node("Add", ["post_scaled", "post_mean"], ["post_value"]),
            helper.make_node("Squeeze", ["post_value", "post_axis1"], ["value"]),
        ]
        outs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"])]
    g.node.extend(post)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(outs)


def parity(
    expected_logits: np.ndarray,
    got: np.ndarray,
    classify: bool,
    y_mean: float,
    y_std: float,
    tolerance: float = 1e-4,
) -> float:
    """The largest difference between PyTorch's answers and ONNX Runtime's (probabilities, or
    values relative to the target's spread); past `tolerance` the run fails."""
    raw = expected_logits.astype(np.float64)
    if classify:
        shifted = raw - raw.max(axis=1, keepdims=True)
        expected = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        diff = float(np.abs(expected - got).max()) if len(got) else 0.0
    else:
        expected = raw[:, 0] * y_std + y_mean
        scale = max(1.0, abs(y_std))
        diff = float(np.abs(expected - got).max() / scale) if len(got) else 0.0
    if diff > tolerance:
        raise RuntimeError(f"the ONNX model differs from PyTorch by {diff:.2e}")
    return diff
