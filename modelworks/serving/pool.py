"""The model pool: loads runtimes off the event loop, warms them up, keeps them within a
memory budget (least recently used first out) and gives each one a batcher.

Entries are keyed by the serving artifact's digest, so versions with the same bytes share one
session. An evicted or replaced runtime stays alive until its in-flight requests finish (they
hold a reference), which is how a promotion drains the old version.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelworks.errors import ModelworksError, ServiceUnavailable
from modelworks.runtimes import LoadedModel, load
from modelworks.serving.batcher import Batcher, BatchSettings
from modelworks.serving.target import Target
from modelworks.store import ArtifactStore
from modelworks.tensors import NUMPY_TYPES

log = logging.getLogger("modelworks.serving")
RETRY_FAILED_S = 10.0  # a model that failed to load is retried at most this often
WARMUP_MAX_ELEMENTS = 1 << 22  # a larger warm-up input is skipped, not allocated
WARMUP_TEXT = b"0"  # text that also casts to a number (string models often parse numbers)
REASON_CHARS = 300
# an absolute path (POSIX, home-relative or Windows) up to the next blank or quote
_PATH = re.compile(r"(?:(?<![\w.~/])/|~/|\b[A-Za-z]:\\)[^\s'\"]*")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : ")


@dataclass
class Entry:
    target: Target
    model: LoadedModel | None = None
    batcher: Batcher | None = None
    error: str | None = None
    warmup_error: str | None = None  # the model serves; its synthetic warm-up input failed
    load_seconds: float = 0.0
    cost: int = 0
    last_used: float = 0.0
    failed_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def settle_heap() -> None:
    """Move everything alive now (modules, settings, loaded models) out of the collector's
    reach. A full collection walks every tracked object; with a transformer's tokenizer and
    the web stack loaded that took 60-80 ms, a pause every second or two under load that
    showed as the p99 of a 0.2 ms request. Objects created later are collected as usual."""
    gc.collect()
    gc.freeze()


def warmup_feeds(signature: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A generated batch-of-one input matching the signature; None when the declared shapes
    are too large to allocate for a warm-up."""
    shapes = {
        spec["name"]: [1 if d == -1 else d for d in spec["shape"]]
        for spec in signature.get("inputs", [])
    }
    if sum(int(np.prod(s, dtype=object)) for s in shapes.values()) > WARMUP_MAX_ELEMENTS:
        return None
    feeds = {}
    for spec in signature.get("inputs", []):
        shape = shapes[spec["name"]]
        if spec["datatype"] == "BYTES":
            feeds[spec["name"]] = np.full(shape, WARMUP_TEXT, dtype=np.object_)
        else:
            feeds[spec["name"]] = np.zeros(
                shape, dtype=NUMPY_TYPES.get(spec["datatype"], np.float32)
            )
    return feeds


def runtime_message(exc: BaseException, roots: Iterable[Path] = ()) -> str:
    """A runtime's own error message, on one short line and without server paths (ONNX
    Runtime names the blob it failed to read, which shows where the store lives)."""
    if isinstance(exc, ModelworksError):
        return exc.message
    text = " ".join(str(exc).split())
    for root in roots:  # first the known roots: their names may hold blanks
        text = text.replace(str(root), "/")
    text = _ORT_PREFIX.sub("", _PATH.sub("<path>", text)) or type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


class ModelPool:
    def __init__(
        self,
        store: ArtifactStore,
        *,
        threads: int = 0,
        memory_budget_bytes: int = 0,
        queue_size: int = 512,
        timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.threads = threads
        self.budget = memory_budget_bytes
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._guard = threading.Lock()
        self.on_load: Callable[[Target, float], None] | None = None
        self.on_batch: Callable[[str, int, float], None] | None = None
        self.settle_heap = False  # the server sets it: freeze the heap after each load
        self._roots = [
            getattr(store, name)
            for name in ("root", "scratch", "cache", "plain")
            if hasattr(store, name)
        ]

    def _entry(self, target: Target) -> Entry:
        with self._guard:
            entry = self._entries.get(target.digest)
            if entry is None:
                entry = self._entries[target.digest] = Entry(target)
            self._entries.move_to_end(target.digest)
            return entry

    def get(self, target: Target) -> LoadedModel:
        """Load (once), warm up and return the runtime. Blocking: call it from a thread."""
        entry = self._entry(target)
        entry.last_used = time.monotonic()
        if entry.model is not None:
            return entry.model
        with entry.lock:
            if entry.model is not None:
                return entry.model
            if entry.error is not None and time.monotonic() - entry.failed_at < RETRY_FAILED_S:
                raise ServiceUnavailable(
                    f"model {target.model}:{target.version} is not ready: {entry.error}",
                    details={"retry_after": int(RETRY_FAILED_S)},
                )
            started = time.perf_counter()
            try:
                model = load(target, self.store, threads=self.threads)
            except ModelworksError as exc:
                entry.error = exc.message
            except Exception as exc:
                log.warning("model %s:%s failed to load: %r", target.model, target.version, exc)
                entry.error = (
                    f"the runtime could not load this model: {runtime_message(exc, self._roots)}"
                )
            else:
                entry.warmup_error = self._warm_up(target, model)
                entry.model = model
                entry.error = None
                entry.cost = target.memory_estimate
            entry.load_seconds = time.perf_counter() - started
            if entry.model is None:
                entry.failed_at = time.monotonic()
                raise ServiceUnavailable(
                    f"model {target.model}:{target.version} is not ready: {entry.error}",
                    details={"retry_after": 5},
                )
            if self.on_load is not None:
                self.on_load(target, entry.load_seconds)
            loaded = entry.model
        if self.settle_heap:
            settle_heap()
        self._enforce_budget(keep=target.digest)
        return loaded

    def _warm_up(self, target: Target, model: LoadedModel) -> str | None:
        """Run one generated input so the first request does not pay for lazy setup. Only
        real inputs can condemn a model: a synthetic one may be refused where real ones pass
        (text a graph casts to numbers, values a model checks), so a failure is reported."""
        feeds = warmup_feeds(model.signature)
        if feeds is None:
            return f"warm-up skipped: the inputs declare more than {WARMUP_MAX_ELEMENTS} elements"
        try:
            model.predict(feeds)
        except Exception as exc:
            log.warning("model %s:%s failed its warm-up: %r", target.model, target.version, exc)
            return "served, but its warm-up on a generated input failed: " + runtime_message(
                exc, self._roots
            )
        return None

    def loaded(self, target: Target) -> LoadedModel | None:
        """The runtime if it is loaded already (cheap: no lock, no I/O)."""
        entry = self._entries.get(target.digest)
        if entry is None or entry.model is None:
            return None
        entry.last_used = time.monotonic()
        return entry.model

    def batcher(self, target: Target, model: LoadedModel) -> Batcher:
        """The batcher of a loaded runtime (created on first use, on the event loop); a
        change of the model's serving options applies to its next batch."""
        entry = self._entry(target)
        opts = target.batching
        if entry.batcher is not None and entry.batcher.model is model:
            settings = entry.batcher.settings
            if (settings.max_batch_size, settings.max_delay_ms) != (
                int(opts["max_batch_size"]),
                float(opts["max_delay_ms"]),
            ):
                settings.max_batch_size = int(opts["max_batch_size"])
                settings.max_delay_ms = float(opts["max_delay_ms"])
        if entry.batcher is None or entry.batcher.model is not model:
            entry.batcher = Batcher(
                model,
                BatchSettings(
                    max_batch_size=int(opts["max_batch_size"]),
                    max_delay_ms=float(opts["max_delay_ms"]),
                    max_queue=self.queue_size,
                    timeout_s=self.timeout_s,
                ),
                name=f"{target.model}:{target.version}",
            )
            if self.on_batch is not None:
                hook = self.on_batch
                name = entry.batcher.name
                entry.batcher.on_batch = lambda rows, seconds: hook(name, rows, seconds)
        return entry.batcher

    def status(self, digest: str) -> tuple[str, str]:
        """('ready'|'loading'|'failed'|'unloaded', reason) of the serving artifact `digest` in
        this process: why it failed to load, or what its warm-up said when it is ready."""
        entry = self._entries.get(digest)
        if entry is None:
            return "unloaded", ""
        if entry.model is not None:
            return "ready", entry.warmup_error or ""
        if entry.error is not None:
            return "failed", entry.error
        return "loading", ""

    def entries(self) -> list[Entry]:
        with self._guard:
            return list(self._entries.values())

    def _enforce_budget(self, keep: str) -> None:
        if self.budget <= 0:
            return
        with self._guard:
            total = sum(e.cost for e in self._entries.values() if e.model is not None)
            for digest in list(self._entries):
                if total <= self.budget:
                    break
                entry = self._entries[digest]
                if digest == keep or entry.model is None:
                    continue
                if entry.batcher is not None and entry.batcher.depth > 0:
                    continue  # busy: never unload under a queue
                total -= entry.cost
                del self._entries[digest]
                log.info("unloaded %s:%s (memory budget)", entry.target.model, entry.target.version)

    def drop(self, digest: str) -> None:
        with self._guard:
            self._entries.pop(digest, None)
