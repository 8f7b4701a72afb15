"""ONNX Runtime: CPU provider, CUDA used automatically when the installed build has it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


class OnnxModel:
    def __init__(self, path: Path, signature: dict[str, Any], threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=providers())
        self.signature = signature
        self.output_names = [o.name for o in self.session.get_outputs()]

    def predict(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        # ONNX Runtime wants str elements in string tensors (bytes would be str()-ed)
        feeds = {k: _as_text(v) if v.dtype == np.object_ else v for k, v in feeds.items()}
        results = self.session.run(names, feeds)
        return {n: np.asarray(r) for n, r in zip(names, results, strict=True)}


def _as_text(arr: np.ndarray) -> np.ndarray:
    flat = [
        x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)
        for x in arr.reshape(-1)
    ]
    return np.array(flat, dtype=np.object_).reshape(arr.shape)
