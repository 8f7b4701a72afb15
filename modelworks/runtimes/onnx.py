"""ONNX Runtime: CPU provider, CUDA used automatically when the installed build has it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from modelworks.tensors import as_text


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


SMALL_MODEL_BYTES = 4 * 1024 * 1024


def session_options(path: Path, threads: int = 0) -> Any:
    """Threads: small models run on one thread (more only adds hand-offs); bigger ones use
    the cores. Spinning is off: idle worker threads would otherwise burn a core between
    requests and starve the event loop."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads <= 0:
        cores = os.cpu_count() or 1
        threads = 1 if path.stat().st_size < SMALL_MODEL_BYTES else cores
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class OnnxModel:
    def __init__(self, path: Path, signature: dict[str, Any], threads: int = 0) -> None:
        import onnxruntime as ort

        opts = session_options(path, threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=providers())
        self.signature = signature
        self.output_names = [o.name for o in self.session.get_outputs()]

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any | None = None,
    ) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        # ONNX Runtime wants str elements in string tensors: it str()s bytes elements and
        # cuts `S` elements at a NUL; UTF-8 text (NULs included) goes through exactly
        feeds = {k: _as_text(k, v) if v.dtype.kind in "OS" else v for k, v in feeds.items()}
        results = self.session.run(names, feeds, run_options)
        return {n: np.asarray(r) for n, r in zip(names, results, strict=True)}


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    # bytes that are not UTF-8 are a 400 (check_against_signature refuses them earlier)
    return np.array(as_text(name, arr), dtype=np.object_).reshape(arr.shape)
