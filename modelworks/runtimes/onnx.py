"""ONNX Runtime: CPU provider, CUDA used automatically when the installed build has it.

Memory (SECURITY.md rule 11): a shape chosen by the input can make one run allocate gigabytes,
and requests run at the same time add up. So once `cap_memory` is given a limit, every session
allocates host memory from one arena the whole process shares (ONNX Runtime's environment
allocator), capped at that limit: what runs allocate, the outputs they hand back (numpy views of
the arena, until the answer is sent) and the packed copies of loaded weights all count. A run
that would pass the cap fails inside ONNX Runtime before it allocates, and answers 413 naming
the setting; the process and every other request go on. The arena keeps what it grew to (at
most the cap) for the next runs, and grows only by what is asked (no doubling).

Constant folding is off: ONNX Runtime folds at load, outside the arena, so a few bytes of graph
(`ConstantOfShape` of a constant shape, repeated) would fold into gigabytes before any cap
applies. Those nodes run inside the cap instead; in exported transformers that leaves a few
cheap shape nodes unfolded.

What the arena does not hold (the characters of string tensors, kernels' working memory) is
bounded by the process's data limit (`modelworks.memory`): an allocation past it fails with
`std::bad_alloc` inside the run, which answers 413 naming that setting, and the heap the run
took is handed back.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from modelworks import memory
from modelworks.errors import PayloadTooLarge, ServiceUnavailable
from modelworks.runtimes import Result
from modelworks.tensors import as_text

MEMORY_SETTING = "MODELWORKS_INFERENCE_MEMORY_MB"
SAME_AS_REQUESTED = 1  # ONNX Runtime's kSameAsRequested arena extend strategy
# what ONNX Runtime says when an allocation is refused (the arena's cap, the system's malloc)
# or when a shape asks for more bytes than an address can hold
_OUT_OF_MEMORY = (
    "Available memory of",
    "Failed to allocate memory",
    "Tensor storage size overflowed",
)
# what a kernel's failed allocation reads like: the process's data limit (modelworks.memory)
_PROCESS_OUT_OF_MEMORY = ("bad_alloc",)


class _Arena:
    """The process's one capped arena: the limit asked for, and the one registered with ONNX
    Runtime (registered when the next session is made, so setting a limit imports nothing)."""

    def __init__(self) -> None:
        self.limit = 0
        self.registered = 0
        self.lock = threading.Lock()

    def shared(self) -> bool:
        """Whether new sessions should use the shared arena (registering it first)."""
        with self.lock:
            if self.limit and self.limit != self.registered:
                _register(self.limit)
                self.registered = self.limit
            return self.limit > 0


_ARENA = _Arena()


def cap_memory(run_bytes: int, weights_bytes: int = 0) -> None:
    """Cap what ONNX Runtime may allocate on the host, for sessions made from now on: `run_bytes`
    for running models, all requests together, on top of `weights_bytes` for the packed weights
    of loaded models (the model memory budget), as both live in the same arena. 0 `run_bytes`:
    no cap, each session keeps its own arena as ONNX Runtime does by default."""
    with _ARENA.lock:
        _ARENA.limit = run_bytes + weights_bytes if run_bytes > 0 else 0


def _register(limit: int) -> None:
    import onnxruntime as ort

    cpu = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    config = ort.OrtArenaCfg({"max_mem": limit, "arena_extend_strategy": SAME_AS_REQUESTED})
    ort.create_and_register_allocator(cpu, config)  # replaces the last one for new sessions


def out_of_memory(exc: BaseException) -> bool:
    """Whether ONNX Runtime failed a run because an allocation was refused."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return any(marker in text for marker in _OUT_OF_MEMORY)


def memory_refusal() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the model needed more memory than {MEMORY_SETTING} allows for running models "
        "(all requests together); send fewer rows or smaller inputs, or retry when the "
        "server is less busy"
    )


def process_out_of_memory(exc: BaseException) -> bool:
    """Whether a run failed because the process's data limit refused an allocation."""
    text = str(exc)
    return any(marker in text for marker in _PROCESS_OUT_OF_MEMORY)


def process_memory_refusal() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the model needed more memory than {memory.SETTING} leaves the server (all requests "
        "together); send fewer rows or smaller inputs, or retry when the server is less busy"
    )


def run(session: Any, names: list[str] | None, feeds: dict[str, Any], options: Any | None) -> Any:
    """`session.run`, with a refused allocation answered as the 413 it is (any other failure
    is the caller's to word)."""
    try:
        return session.run(names, feeds, options)
    except MemoryError:
        memory.trim()
        raise process_memory_refusal() from None
    except Exception as exc:
        if process_out_of_memory(exc):
            memory.trim()
            raise process_memory_refusal() from None
        if out_of_memory(exc):
            raise memory_refusal() from None
        raise


def providers(device: str = "auto") -> list[Any]:
    """ONNX Runtime's providers for `device`: `auto` takes CUDA when this build has it."""
    import onnxruntime as ort

    from modelworks.runtimes import parse_device

    kind, index = parse_device(device)
    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if kind == "cuda" and not cuda:
        raise ServiceUnavailable(
            f"device {device!r} asked, but this ONNX Runtime build has no CUDA provider; "
            "install onnxruntime-gpu or use the cpu device"
        )
    if kind == "cuda" or (kind == "auto" and cuda):
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


SMALL_MODEL_BYTES = 4 * 1024 * 1024


def session_options(path: Path, threads: int = 0) -> Any:
    """Threads: small models run on one thread (more only adds hand-offs); bigger ones use
    the cores. Spinning is off: idle worker threads would otherwise burn a core between
    requests and starve the event loop. Memory: the shared, capped arena, no constant folding
    (see the module's docstring)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads <= 0:
        cores = os.cpu_count() or 1
        threads = 1 if path.stat().st_size < SMALL_MODEL_BYTES else cores
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
    if _ARENA.shared():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


class OnnxModel:
    def __init__(
        self, path: Path, signature: dict[str, Any], threads: int = 0, device: str = "auto"
    ) -> None:
        import onnxruntime as ort

        opts = session_options(path, threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=providers(device))
        self.signature = signature
        self.output_names = [o.name for o in self.session.get_outputs()]

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any | None = None,
    ) -> Result:
        names = outputs or self.output_names
        # ONNX Runtime wants str elements in string tensors: it str()s bytes elements and
        # cuts `S` elements at a NUL; UTF-8 text (NULs included) goes through exactly
        feeds = {k: _as_text(k, v) if v.dtype.kind in "OS" else v for k, v in feeds.items()}
        results = run(self.session, names, feeds, run_options)
        return Result({n: np.asarray(r) for n, r in zip(names, results, strict=True)})


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    # bytes that are not UTF-8 are a 400 (check_against_signature refuses them earlier)
    return np.array(as_text(name, arr), dtype=np.object_).reshape(arr.shape)
