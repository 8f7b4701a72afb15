"""Runtimes load a stored artifact and run a batch: setup -> predict.

`predict` takes and returns named numpy arrays whose first axis is the batch. Keys starting
with `_` in a result (e.g. `_tokens`) are bookkeeping for usage metering, not outputs.

A run cannot be cancelled like a coroutine: it holds a worker thread until it returns. So
`predict` takes optional `run_options` (ONNX Runtime's `RunOptions`, from `run_options()`):
the batcher calls `terminate(run_options)` from the event loop once nobody waits for the
answer, and ONNX Runtime stops the run at its next node (or loop iteration). A runtime with
no such switch ignores them and the run finishes on its own.

A run whose memory ONNX Runtime refuses (see `runtimes.onnx.cap_memory`) raises
PayloadTooLarge (413) from `predict`; any other failure is the runtime's own exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from modelworks.serving.target import Target
    from modelworks.store import ArtifactStore


class LoadedModel(Protocol):
    signature: dict[str, Any]

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any | None = None,
    ) -> dict[str, np.ndarray]: ...


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


def load(target: Target, store: ArtifactStore, threads: int = 0) -> LoadedModel:
    if target.format == "onnx":
        from modelworks.runtimes.onnx import OnnxModel

        return OnnxModel(store.local_path(target.digest), target.signature, threads=threads)
    if target.format == "transformers":
        from modelworks.runtimes.text import load_text_model

        return load_text_model(target, store, threads=threads)
    raise ValueError(f"no runtime for format {target.format!r}")
