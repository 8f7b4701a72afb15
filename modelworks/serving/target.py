"""What a model reference resolves to: everything the pool needs to load and batch it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelworks.tensors import NUMPY_TYPES

TEXT_TASKS = ("embeddings", "text-classification")
# sensible batching by task: text models gain most from batching; tiny tabular models are
# cheap per row, so they batch wide. No task waits for company by default (as in Triton):
# under load, batches form while the previous one runs. Waiting cost callers that were all
# already in the batch 2 ms each (tabular at 8 connections: 3,800 req/s with it, 8,200 without).
TASK_BATCHING: dict[str, dict[str, float]] = {
    "embeddings": {"max_batch_size": 32, "max_delay_ms": 0.0},
    "text-classification": {"max_batch_size": 32, "max_delay_ms": 0.0},
}
DEFAULT_BATCHING = {"max_batch_size": 64, "max_delay_ms": 0.0}


@dataclass(frozen=True)
class Target:
    project_id: int
    model: str
    task: str
    version: int
    version_id: int
    format: str  # "onnx" | "transformers"
    digest: str  # the artifact the runtime loads (the ONNX export for transformers)
    source_digest: str  # the upload
    signature: dict[str, Any]
    serving: dict[str, Any]
    status: str
    status_reason: str
    size: int

    @property
    def batching(self) -> dict[str, float]:
        opts = dict(TASK_BATCHING.get(self.task, DEFAULT_BATCHING))
        opts.update({k: v for k, v in self.serving.items() if k in opts})
        return opts

    @property
    def memory_estimate(self) -> int:
        # an ONNX Runtime session holds about its weights plus arenas
        return int(self.size * 1.5) + 32 * 1024 * 1024


def output_bytes(signature: dict[str, Any], rows: int) -> int:
    """Bytes the outputs a signature fixes take for `rows` rows (a first axis of -1 is the
    batch): a lower bound of an answer, known before the model runs. Outputs with another
    variable axis, or text, are not counted."""
    total = 0
    for spec in signature.get("outputs", []):
        datatype = spec.get("datatype")
        if datatype == "BYTES" or datatype not in NUMPY_TYPES:
            continue
        dims = [rows if i == 0 and d == -1 else d for i, d in enumerate(spec.get("shape", []))]
        if all(isinstance(d, int) and d >= 0 for d in dims):
            total += math.prod(dims) * np.dtype(NUMPY_TYPES[datatype]).itemsize
    return total
