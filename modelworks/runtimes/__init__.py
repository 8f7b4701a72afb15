"""Runtimes: load a model from local files onto a device, then run batches.

The contract training, compression, evaluation and serving share. A runtime knows nothing of
the registry, the store or serving: it is given an `Artifact` (local paths, the model's format,
task and signature) and a device (`cpu`, `cuda`, `cuda:N`, or `auto`: CUDA when this ONNX
Runtime build has it), so an evaluation job loads and times a candidate exactly as serving
does. Runtimes are found by format (`load`, `register`).

`predict` takes named numpy arrays whose first axis is the batch and returns a `Result`: the
outputs, and separately per-row statistics (`counts`, e.g. `tokens`) the server meters.
Outputs whose names start with `_` (e.g. `_logits`) are extra results a protocol may use,
never sent as outputs themselves. A runtime that produces results over time (LLM generation)
also has `stream()`, yielding `Result`s.

A run cannot be cancelled like a coroutine: it holds a worker thread until it returns. So
`predict` takes optional `run_options` (ONNX Runtime's `RunOptions`, from `run_options()`):
the batcher calls `terminate(run_options)` from the event loop once nobody waits for the
answer, and ONNX Runtime stops the run at its next node (or loop iteration). A runtime with
no such switch ignores them and the run finishes on its own.

A run whose memory ONNX Runtime refuses (see `runtimes.onnx.cap_memory`) raises
PayloadTooLarge (413) from `predict`; any other failure is the runtime's own exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEVICES = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Artifact:
    """What a runtime loads: `path` is the file it runs (an ONNX file); `folder` the model's
    folder beside it (tokenizer, config) for formats that have one."""

    format: str
    path: Path
    task: str = "tensor"
    signature: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None


@dataclass
class Result:
    """A run's outputs, and per-row statistics (first axis the batch, like the outputs)."""

    outputs: dict[str, np.ndarray]
    counts: dict[str, np.ndarray] = field(default_factory=dict)


class LoadedModel(Protocol):
    signature: dict[str, Any]

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any | None = None,
    ) -> Result | Mapping[str, np.ndarray]: ...


@runtime_checkable
class StreamingModel(Protocol):
    """A runtime whose results come over time (token by token)."""

    signature: dict[str, Any]

    def stream(
        self, feeds: dict[str, np.ndarray], run_options: Any | None = None
    ) -> Iterator[Result]: ...


def as_result(value: Result | Mapping[str, np.ndarray]) -> Result:
    """A runtime with no statistics may return its outputs mapping; this is the one shape."""
    if isinstance(value, Result):
        return value
    return Result(dict(value))


def parse_device(device: str) -> tuple[str, int]:
    """("auto" | "cpu" | "cuda", index) from `auto`, `cpu`, `cuda` or `cuda:N`."""
    kind, _, index = device.strip().lower().partition(":")
    if kind in ("auto", "cpu") and not index:
        return kind, 0
    if kind == "cuda" and (not index or index.isdigit()):
        return kind, int(index or 0)
    raise ValueError(f"unknown device {device!r}; use {DEVICES}")


Factory = Callable[[Artifact, str, int], LoadedModel]


def _onnx(artifact: Artifact, device: str, threads: int) -> LoadedModel:
    from modelworks.runtimes.onnx import OnnxModel

    return OnnxModel(artifact.path, artifact.signature, threads=threads, device=device)


def _text(artifact: Artifact, device: str, threads: int) -> LoadedModel:
    from modelworks.runtimes.text import TextModel

    if artifact.folder is None:
        raise ValueError("a text model needs its folder (tokenizer and config)")
    return TextModel(
        artifact.folder,
        artifact.path,
        artifact.task,
        artifact.signature,
        threads=threads,
        device=device,
    )


RUNTIMES: dict[str, Factory] = {"onnx": _onnx, "transformers": _text}


def register(format: str, factory: Factory) -> None:
    """Make `load` run artifacts of `format` with `factory(artifact, device, threads)`."""
    RUNTIMES[format] = factory


def load(artifact: Artifact, device: str = "auto", threads: int = 0) -> LoadedModel:
    parse_device(device)
    factory = RUNTIMES.get(artifact.format)
    if factory is None:
        known = ", ".join(sorted(RUNTIMES))
        raise ValueError(f"no runtime for format {artifact.format!r}; known: {known}")
    return factory(artifact, device, threads)


def run_options() -> Any:
    """A fresh stop switch for one run (each run gets its own: a terminated one stays so)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    # a run's failure comes back as an exception; ONNX Runtime would also print each one (a
    # terminated run's too) on stderr
    options.log_severity_level = 4
    return options


def terminate(options: Any) -> None:
    """Ask the run holding `options` to stop; it raises in its own thread, soon."""
    options.terminate = True
