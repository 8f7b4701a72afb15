"""Runtimes load a stored artifact and run a batch: setup -> predict.

`predict` takes and returns named numpy arrays whose first axis is the batch. Keys starting
with `_` in a result (e.g. `_tokens`) are bookkeeping for usage metering, not outputs.
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
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]: ...


def load(target: Target, store: ArtifactStore, threads: int = 0) -> LoadedModel:
    if target.format == "onnx":
        from modelworks.runtimes.onnx import OnnxModel

        return OnnxModel(store.local_path(target.digest), target.signature, threads=threads)
    if target.format == "transformers":
        from modelworks.runtimes.text import load_text_model

        return load_text_model(target, store, threads=threads)
    raise ValueError(f"no runtime for format {target.format!r}")
