"""Export a Hugging Face text model to ONNX, so ONNX Runtime serves it (about 2.5x faster
than PyTorch eager on CPU) and the server never imports torch.

Runs as the child process of an `export` job (`python -m modelworks.recipes.export FOLDER TASK
OUT`; `modelworks.jobs.export` plans and records it), with its address space capped by
MODELWORKS_EXPORT_MEMORY_MB. Exit status 0: OUT holds a model that matches PyTorch;
`OUT_OF_MEMORY`: the cap was hit; anything else: the last line of stderr says why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from modelworks.jobs.export import MEMORY_ENV, OOM_MARKS, OUT_OF_MEMORY
from modelworks.jobs.report import emit

PARITY_TOLERANCE = 1e-3


def export_transformer(folder: Path, task: str, out: Path) -> None:
    """torch.onnx.export with dynamic batch and sequence axes; checked against PyTorch."""
    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers

    from modelworks.quiet import runtime_telemetry_off
    from modelworks.runtimes.text import TextConfig, load_tokenizer, pool

    runtime_telemetry_off()
    emit(phase="loading", progress=0.05, message="loading the model with transformers")

    cls = (
        transformers.AutoModelForSequenceClassification
        if task == "text-classification"
        else transformers.AutoModel
    )
    # eager attention traces to plain ops that every ONNX Runtime build runs
    model = cls.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, attn_implementation="eager"
    )
    model.eval()
    cfg = TextConfig(folder)
    tokenizer = load_tokenizer(folder, cfg.max_length)
    enc = tokenizer.encode_batch(
        ["A pump bearing runs hot.", "Replace the worn conveyor belt now."]
    )
    sample = {
        "input_ids": torch.tensor([e.ids for e in enc]),
        "attention_mask": torch.tensor([e.attention_mask for e in enc]),
        "token_type_ids": torch.tensor([e.type_ids for e in enc]),
    }
    names = ["input_ids", "attention_mask"]
    if model.config.type_vocab_size if hasattr(model.config, "type_vocab_size") else False:
        names.append("token_type_ids")
    output = "logits" if task == "text-classification" else "last_hidden_state"

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args: Any) -> Any:
            return getattr(self.inner(**dict(zip(names, args, strict=True))), output)

    wrapped = Wrapped().eval()  # export restores the wrapper's mode: it must be eval too
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if task == "text-classification" else {0: "batch", 1: "sequence"}
    args = tuple(sample[n] for n in names)
    emit(phase="exporting", progress=0.3, message="tracing to ONNX (opset 17)")
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            args,
            str(out),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        expected = wrapped(*args).numpy()
    emit(phase="checking", progress=0.8, message="comparing ONNX Runtime with PyTorch")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: sample[n].numpy() for n in names})[0]
    mask = sample["attention_mask"].numpy()
    if task != "text-classification":
        expected, got = pool(expected, mask, "mean"), pool(got, mask, "mean")
    diff = float(np.abs(expected - got).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e}")
    emit(phase="checked", progress=0.95, metrics={"max_abs_diff": diff})


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space: an allocation past it fails here, in the child,
    instead of the machine running out of memory."""
    import resource

    from modelworks.memory import lift

    lift()  # the server's own data ceiling is not this child's
    if megabytes > 0:
        size = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(mark in str(exc) for mark in OOM_MARKS)


def main(argv: list[str]) -> int:
    from modelworks.quiet import OFFLINE, no_telemetry

    if len(argv) != 3:
        print("usage: python -m modelworks.recipes.export FOLDER TASK OUT.onnx", file=sys.stderr)
        return 2
    os.environ.update(OFFLINE)  # before torch, transformers and ONNX Runtime are imported
    no_telemetry()
    limit_memory(int(os.environ.get(MEMORY_ENV) or 0))
    try:
        export_transformer(Path(argv[0]), argv[1], Path(argv[2]))
    except Exception as exc:
        if out_of_memory(exc):
            print(f"out of memory ({type(exc).__name__})", file=sys.stderr)
            return OUT_OF_MEMORY
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
