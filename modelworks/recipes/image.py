"""Image classification: a compact CNN on a zip of image folders (one folder per class).

Images are read with Pillow, converted to RGB and resized to `image_size` squared; the split
is random by seed. Training flips images left to right and shifts them by up to an eighth of
their size (`augment`). The per-channel mean and deviation of the training images are applied
inside the model, so the exported ONNX model takes `image` FP32 [batch, 3, size, size] with
RGB values from 0 to 1 (the signature's `image_size` says which size) and answers `label` and
`probabilities`.
"""

from __future__ import annotations

import json
import shutil
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
    parity,
    predict,
    seed_everything,
)

if TYPE_CHECKING:
    import torch

PARITY_TOLERANCE = 1e-4
OPSET = 17


@dataclass
class ImagePrep:
    size: int = 64
    labels: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


def load_images(items: list[tuple[Path, str]], size: int) -> np.ndarray:
    """[n, 3, size, size] float32 RGB in [0, 1]."""
    from PIL import Image

    out = np.empty((len(items), 3, size, size), dtype=np.float32)
    for i, (path, _) in enumerate(items):
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return out


def _net(prep: ImagePrep, width: int, dropout: float) -> torch.nn.Module:
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1))
            layers: list[nn.Module] = []
            channels = 3
            for k in (1, 2, 4):
                layers += [
                    nn.Conv2d(channels, width * k, 3, padding=1),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                ]
                channels = width * k
            self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, len(prep.labels)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features((x - self.mean) / self.std))  # type: ignore[no-any-return]

    return SmallCNN()


def flip_and_shift(size: int) -> Any:
    """A training batch's augmentation: half the images mirrored, each shifted by up to
    size/8 pixels (wrapping round), from torch's seeded generator."""
    import torch

    reach = max(1, size // 8)

    def augment(xb: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(xb)) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        dy, dx = (int(v) for v in torch.randint(-reach, reach + 1, (2,)))
        return torch.roll(xb, shifts=(dy, dx), dims=(2, 3))

    return augment


def train(spec: dict[str, Any], out: Path, ranks: Ranks) -> None:
    from modelworks.datasets import Limits, image_items, split

    params = spec["params"]
    lead = ranks.lead
    if lead:
        emit(phase="loading", progress=0.0, message="unpacking the images")
    scratch = out.parent / f"images-{ranks.rank}"
    shutil.rmtree(scratch, ignore_errors=True)
    items = image_items(Path(spec["data"]), scratch, Limits())
    prep = ImagePrep(size=params["image_size"], labels=sorted({c for _, c in items}))
    if len(prep.labels) < 2:
        raise TrainingFailed("the images are of one class; a classifier needs two", BAD_DATA)
    images = load_images(items, prep.size)
    shutil.rmtree(scratch, ignore_errors=True)
    index = {c: i for i, c in enumerate(prep.labels)}
    y = np.array([index[c] for _, c in items], dtype=np.int64)
    fractions = (
        1.0 - params["validation_fraction"] - params["test_fraction"],
        params["validation_fraction"],
        params["test_fraction"],
    )
    if len(items) < 10:
        raise TrainingFailed(f"{len(items)} images: too few to split", BAD_DATA)
    parts = split(len(items), params["seed"], fractions)
    train_x = images[parts["train"]]
    prep.mean = train_x.mean(axis=(0, 2, 3)).tolist()
    prep.std = [max(s, 1e-3) for s in train_x.std(axis=(0, 2, 3)).tolist()]
    sets = {k: (images[v], y[v]) for k, v in parts.items()}

    seed_everything(params["seed"])
    model = _net(prep, params["width"], params["dropout"])
    x_val, y_val = sets["validation"]

    def validate(m: torch.nn.Module) -> float:
        return float(evaluate(predict(m, x_val), y_val, True)["macro_f1"]) if len(x_val) else 0.0

    fitted = fit(
        model,
        *sets["train"],
        validate,
        classify=True,
        params=params,
        checkpoint_dir=Path(spec["checkpoint_dir"]),
        ranks=ranks,
        extra={"prep": asdict(prep)},
        augment=flip_and_shift(prep.size) if params["augment"] == "flip-shift" else None,
    )
    if not lead:
        return
    emit(phase="evaluating", progress=1.0, message="scoring the test images")
    x_test, y_test = sets["test"]
    report = {
        "metrics": evaluate(predict(model, x_test), y_test, True, full=True),
        "validation": evaluate(predict(model, x_val), y_val, True),
        "labels": prep.labels,
        "image_size": prep.size,
        "epochs_run": fitted.state["epoch"] + 1,
        "best_epoch": fitted.state["best_epoch"] + 1,
        "rows": {k: len(v[0]) for k, v in sets.items()},
        "seed": params["seed"],
        "world_size": ranks.world,
        "train_seconds": fitted.train_seconds,
        "epochs_this_attempt": fitted.epochs_this_attempt,
        "params": params,
    }
    emit(phase="exporting", progress=1.0, message="exporting to ONNX")
    out.mkdir(parents=True, exist_ok=True)
    report["onnx_max_abs_diff"] = _export(model, prep, x_test, out / "model.onnx")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    config = {"recipe": spec["recipe"], "prep": asdict(prep), "params": params}
    (out / "config.json").write_text(json.dumps(config))
    (out / "report.json").write_text(json.dumps(report, default=float))


def _export(model: torch.nn.Module, prep: ImagePrep, x_test: np.ndarray, path: Path) -> float:
    import onnx
    import onnxruntime as ort
    import torch

    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(2, 3, prep.size, prep.size),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    graph_model = onnx.load(str(path))
    add_outputs(graph_model, prep.labels, 0.0, 1.0)
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sample = x_test[:64]
    got = session.run(["probabilities"], {"image": sample})[0]
    return parity(predict(model, sample), got, True, 0.0, 1.0, PARITY_TOLERANCE)
