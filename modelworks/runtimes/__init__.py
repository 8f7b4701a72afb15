"""Runtimes load a stored artifact and run a batch: setup -> predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class LoadedModel(Protocol):
    signature: dict[str, Any]

    def predict(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]: ...


def load(format: str, path: Path, signature: dict[str, Any], threads: int = 0) -> LoadedModel:
    if format == "onnx":
        from modelworks.runtimes.onnx import OnnxModel

        return OnnxModel(path, signature, threads=threads)
    raise ValueError(f"no runtime for format {format!r}")
