"""Process-wide environment hygiene: no telemetry, and every library cache under the home.

ONNX Runtime writes a device id and an event database under `~/.cache` when it is imported;
Hugging Face, PyTorch and their helpers keep caches under `~` and may phone home. Each of
them reads its environment variable once, at import, so `confine` runs before any of them is
imported: at the CLI entry, in `create_app` and in the export child (SECURITY.md, rule 14).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# switches that stop a library from sending or queueing anything
NO_TELEMETRY = {
    "DO_NOT_TRACK": "1",
    "ORT_DISABLE_TELEMETRY": "1",  # ONNX Runtime: no device id, no event database
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
}
# models arrive by upload: nothing is fetched from a hub. These also stop a Hugging Face
# *client* in the same process, so only processes that are wholly ours set them.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# cache variable -> folder under `<home>/cache`
CACHES = {
    "XDG_CACHE_HOME": "",
    "HF_HOME": "huggingface",
    "TORCH_HOME": "torch",
    "TORCH_EXTENSIONS_DIR": "torch_extensions",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "PYTORCH_KERNEL_CACHE_PATH": "torch/kernels",
    "TRITON_CACHE_DIR": "triton",
    "CUDA_CACHE_PATH": "nvidia",
    "NUMBA_CACHE_DIR": "numba",
    "MPLCONFIGDIR": "matplotlib",
    "ONNX_HOME": "onnx",
    "SENTENCE_TRANSFORMERS_HOME": "sentence_transformers",
}


def confine(home: Path, *, offline: bool = True) -> None:
    """Turn telemetry off and point every known cache at `<home>/cache/...` in this process
    and the children it starts. Call it before the libraries are imported: most read these
    variables once. Caches are overridden even when set, since an operator's shared cache
    is outside the home too. `offline=False` (an app embedded in another program) leaves
    the hub switches alone."""
    cache = Path(home).expanduser().resolve() / "cache"
    for var, sub in CACHES.items():
        os.environ[var] = str(cache / sub) if sub else str(cache)
    if offline:
        os.environ.update(OFFLINE)
    no_telemetry()


def no_telemetry() -> None:
    """Only the telemetry switches (the export child inherits its caches from the server)."""
    os.environ.update(NO_TELEMETRY)
    runtime_telemetry_off()


def runtime_telemetry_off() -> None:
    """Switch ONNX Runtime's event telemetry off where it is already loaded (imported before
    `confine` ran, the variable came too late for it)."""
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        ort.disable_telemetry_events()
