"""The server process's memory ceiling: SECURITY.md rule 11 at the operating system's level.

ONNX Runtime's capped arena (`runtimes.onnx.cap_memory`) holds the tensors a run allocates, but
not everything a run can make the process take: the characters of a string tensor are ordinary
heap memory (a `Tile` of one 1 MiB string costs a megabyte per repeat), and kernels such as
`Unique`, `TopK` or `NonZero` keep their own working memory beside their outputs. So `modelworks
serve` also asks the kernel to bound the process's data memory (`RLIMIT_DATA`: the heap and
private writable mappings; not shared libraries, mapped files or reserved but unused address
space). An allocation past it fails where it is made: inside ONNX Runtime the run fails with
`std::bad_alloc` and answers 413, in Python a `MemoryError` answers 503. The process and every
other request go on, and the memory the failed run took is handed back to the system.

The ceiling is `MODELWORKS_PROCESS_MEMORY_MB`; by default (-1) it is derived: what the process
holds when it starts serving, plus the model memory budget, plus the inference memory, plus
headroom for thread stacks, request bodies and answers (`HEADROOM` and `HEADROOM_PER_CORE`).
It is a soft limit: child processes (exports, job workers) lift it back with `lift()` and set
their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
from typing import Any

log = logging.getLogger("modelworks.memory")

MIB = 1024 * 1024
SETTING = "MODELWORKS_PROCESS_MEMORY_MB"
AUTO = -1
HEADROOM = 1024 * MIB  # Python's heap, request bodies and answers being encoded
HEADROOM_PER_CORE = 256 * MIB  # thread stacks: ONNX Runtime's pools grow with the cores
_LIMIT = resource.RLIMIT_DATA


def data_bytes() -> int:
    """The data memory this process holds now (Linux's VmData), 0 where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def ceiling(settings: Any, cuda: bool = False) -> int:
    """Bytes of data memory the server process may hold under `settings` (0: no ceiling).

    Derived (the default) only where both memory settings bound something and the process's
    memory can be read; with CUDA the device's driver maps memory of its own, so a derived
    ceiling is left off there (set one explicitly to have one)."""
    chosen = int(settings.process_memory_mb)
    if chosen > 0:
        return chosen * MIB
    if chosen == 0 or cuda:
        return 0
    if settings.memory_budget_mb <= 0 or settings.inference_memory_mb <= 0:
        return 0
    held = data_bytes()
    if held <= 0:
        return 0
    cores = os.cpu_count() or 1
    models = (settings.memory_budget_mb + settings.inference_memory_mb) * MIB
    return int(held + models + HEADROOM + cores * HEADROOM_PER_CORE)


def apply(limit: int) -> int:
    """Set this process's soft data limit to `limit` bytes (never above the hard limit, which
    stays as it is so children can lift theirs). Returns the limit now in force (0: none)."""
    if limit <= 0:
        return 0
    _soft, hard = resource.getrlimit(_LIMIT)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(_LIMIT, (limit, hard))
    return limit


def lift() -> None:
    """Give this process its full data limit back (a child of the server, before its own)."""
    _soft, hard = resource.getrlimit(_LIMIT)
    resource.setrlimit(_LIMIT, (hard, hard))


def current() -> int:
    """The soft data limit in force, in bytes (0: none)."""
    soft, _hard = resource.getrlimit(_LIMIT)
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def refusal_message() -> str:
    return (
        f"the server ran short of memory for this request ({SETTING}); "
        "retry shortly, or send smaller inputs"
    )


_libc: Any = None


def trim() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise), after a run that
    failed for memory left the heap at its peak."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    trim_heap = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim_heap is not None:
        trim_heap(0)
