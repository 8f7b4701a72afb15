"""The model pool: loads runtimes off the event loop, warms them up, keeps them within a
memory budget and gives each served version its own batcher.

What is shared and what is not (SECURITY.md rule 12): an entry belongs to one project's
version and holds everything a tenant could feel: its batcher (queue, capacity, deadlines,
statistics), its load error, its warm-up text, its place in the eviction order. Only memory is
shared: versions whose artifacts are identical, in any project, use one loaded runtime (an
ONNX Runtime session), counted once against the budget and unloaded with its last user. A
load failure is an entry's own: another version of the same bytes tries its own load.

The memory budget is shared fairly. Past it, the least recently used entry of the project
using the most memory is unloaded first; a runtime shared by several projects counts a share
to each. A project within its fair share (budget / projects with loaded models) keeps its
models while another is over, so one tenant touching many models evicts its own. Entries with
queued requests and the one just loaded are never unloaded. An unloaded runtime stays alive
until its in-flight requests finish (they hold a reference), which is how a promotion drains
the old version; then it is garbage: its entry lets go of its batcher, and a request that
reaches the pool after the unload gets a batcher of its own, which goes with it.

The server freezes the heap after each load (`settle_heap`). A frozen object is never
collected, so a cycle through a request in flight on a model being unloaded (a failed
request's traceback holds its frames, and they the model) would keep the model for good: an
unload unfreezes the heap, and it is frozen again only once every unloaded model is gone.
"""

from __future__ import annotations

import gc
import logging
import math
import re
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelworks.archives import SafeRelPath
from modelworks.errors import ModelworksError, ServiceUnavailable
from modelworks.runtimes import Artifact, LoadedModel, load
from modelworks.serving.batcher import Batcher, BatchSettings, ModelStats
from modelworks.serving.target import Target, output_bytes
from modelworks.store import ArtifactStore
from modelworks.tensors import NUMPY_TYPES

log = logging.getLogger("modelworks.serving")
RETRY_FAILED_S = 10.0  # a model that failed to load is retried at most this often
WARMUP_MAX_BYTES = 16 * 1024 * 1024  # a larger warm-up (inputs and outputs) is skipped
# a generated text element: numpy's pointer, the str ONNX Runtime is handed, its std::string
TEXT_ELEMENT_BYTES = 64
WARMUP_TEXT = b"0"  # text that also casts to a number (string models often parse numbers)
REASON_CHARS = 300
# an absolute path (POSIX, home-relative or Windows) up to the next blank or quote
_PATH = re.compile(r"(?:(?<![\w.~/])/|~/|\b[A-Za-z]:\\)[^\s'\"]*")
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : ")
# where ONNX Runtime raised: a C++ source file and line, then its function (a bare name, or
# the return type of a full signature, which _CPP_NAME removes)
_CPP_LOCATION = re.compile(
    r"(?:/[^\s'\"]*/)?[\w.-]+\.(?:cc|cpp|cxx|c|h|hpp|cu|cuh|inc):\d+(?:\s+\w+(?=\s))?\s*"
)
# a qualified C++ name (onnxruntime::Model::Model, std::vector), continued after _drop_groups
_CPP_NAME = re.compile(r"\b(?:[A-Za-z_]\w*::)+~?[A-Za-z_]\w*")
_CPP_PART = re.compile(r"~?[A-Za-z_]\w*")
_CPP_GROUPS = {"(": ")", "<": ">"}
# an exception named with its module path (safetensors._safetensors_rust.SafetensorError)
_MODULE_PATH = re.compile(r"\b(?:[a-z_]\w*\.)+([A-Z]\w*)")

RuntimeKey = tuple[str, str, str]  # format, serving digest, source digest


@dataclass
class Runtime:
    """A loaded artifact, shared by the entries (version ids) in `users`."""

    key: RuntimeKey
    model: LoadedModel
    cost: int
    warmup_error: str | None
    users: set[int] = field(default_factory=set)


@dataclass
class Entry:
    """One served version in this process: nothing here is shared with another version."""

    target: Target
    model: LoadedModel | None = None
    runtime: Runtime | None = None
    batcher: Batcher | None = None
    error: str | None = None
    warmup_error: str | None = None  # the model serves; its synthetic warm-up input failed
    load_seconds: float = 0.0
    last_used: float = 0.0
    failed_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def artifact_for(target: Target, store: ArtifactStore) -> Artifact:
    """The local files a version's runtime loads: its ONNX file (the upload, or the export of
    a Hugging Face folder) and, for text models, the unpacked folder beside it."""
    if target.format != "transformers":
        path = store.local_path(target.digest)
        return Artifact(target.format, path, target.task, target.signature)
    if target.digest == target.source_digest:
        # no ONNX export: this server runs ONNX Runtime only (torch stays in job processes)
        reason = target.status_reason or "it has no ONNX export"
        raise ServiceUnavailable(
            f"version {target.version} of {target.model!r} cannot be served: {reason}; "
            "fix the model and upload it again, or upload an ONNX file"
        )
    folder = store.unpacked(target.source_digest)
    root = str(target.signature.get("root") or "")
    if root:
        folder = folder / SafeRelPath(root)
    return Artifact(
        "transformers",
        store.local_path(target.digest),
        target.task,
        target.signature,
        folder=folder,
    )


def runtime_key(target: Target) -> RuntimeKey:
    return (target.format, target.digest, target.source_digest)


def _watch(model: LoadedModel) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(model)
    except TypeError:  # a model without weak references cannot be watched
        return None


def settle_heap() -> None:
    """Move everything alive now (modules, settings, loaded models) out of the collector's
    reach. A full collection walks every tracked object; with a transformer's tokenizer and
    the web stack loaded that took 60-80 ms, a pause every second or two under load that
    showed as the p99 of a 0.2 ms request. Objects created later are collected as usual."""
    gc.collect()
    gc.freeze()


def _element_bytes(datatype: str) -> int:
    if datatype == "BYTES":
        return TEXT_ELEMENT_BYTES
    return int(np.dtype(NUMPY_TYPES.get(datatype, np.float32)).itemsize)


def warmup_feeds(signature: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A generated batch-of-one input matching the signature; None when what the signature
    declares (inputs, and the outputs it fixes) would take more than WARMUP_MAX_BYTES: a
    99-byte model may declare gigabytes, and a load must not allocate them."""
    specs = signature.get("inputs", [])
    shapes = {spec["name"]: [1 if d == -1 else d for d in spec["shape"]] for spec in specs}
    if any(d < 0 for shape in shapes.values() for d in shape):
        return None
    size = sum(math.prod(shapes[s["name"]]) * _element_bytes(s["datatype"]) for s in specs)
    if size + output_bytes(signature, rows=1) > WARMUP_MAX_BYTES:
        return None
    feeds = {}
    for spec in specs:
        shape = shapes[spec["name"]]
        if spec["datatype"] == "BYTES":
            feeds[spec["name"]] = np.full(shape, WARMUP_TEXT, dtype=np.object_)
        else:
            feeds[spec["name"]] = np.zeros(
                shape, dtype=NUMPY_TYPES.get(spec["datatype"], np.float32)
            )
    return feeds


def _drop_groups(text: str, end: int) -> int:
    """Where a C++ name that ends at `end` really ends: after its template and argument
    lists (balanced <…> and (…), nested), a further ::name, and a trailing const, & or *."""
    depth: list[str] = []
    pos = end
    while pos < len(text):
        char = text[pos]
        if char in _CPP_GROUPS:
            depth.append(_CPP_GROUPS[char])
        elif depth and char == depth[-1]:
            depth.pop()
        elif not depth:
            rest = _CPP_PART.match(text, pos + 2) if text.startswith("::", pos) else None
            if rest is not None:
                pos = rest.end()
                continue
            if char not in "&*" and not text.startswith(" const", pos):
                return pos
            pos += 6 if char == " " else 1
            continue
        pos += 1
    return pos if not depth else end


def _drop_cpp(text: str) -> str:
    """Drop ONNX Runtime's source locations and C++ signatures, which say nothing to a
    client; a C++ type (std::bad_alloc) keeps its last name."""
    text = _CPP_LOCATION.sub("", text)
    kept, pos = [], 0
    while (name := _CPP_NAME.search(text, pos)) is not None:
        kept.append(text[pos : name.start()])
        pos = _drop_groups(text, name.end())
        if "(" not in text[name.end() : pos]:  # a type (std::bad_alloc): its own name tells
            kept.append(name.group().rsplit("::", 1)[-1])
    kept.append(text[pos:])
    return " ".join("".join(kept).split())


def runtime_message(exc: BaseException, roots: Iterable[Path] = ()) -> str:
    """A runtime's own error message, on one short line, without server paths (ONNX Runtime
    names the blob it failed to read, which shows where the store lives), C++ internals or
    the module paths of Python exceptions."""
    if isinstance(exc, ModelworksError):
        return exc.message
    text = " ".join(str(exc).split())
    for root in roots:  # first the known roots: their names may hold blanks
        text = text.replace(str(root), "/")
    text = _MODULE_PATH.sub(r"\1", _PATH.sub("<path>", _drop_cpp(text)))
    text = _ORT_PREFIX.sub("", text) or type(exc).__name__
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
        max_response_bytes: int = 0,
    ) -> None:
        self.store = store
        self.threads = threads
        self.budget = memory_budget_bytes
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._entries: dict[int, Entry] = {}  # by model version id
        self._runtimes: dict[RuntimeKey, Runtime] = {}
        self._loading: dict[RuntimeKey, threading.Lock] = {}
        self._guard = threading.Lock()
        self.on_load: Callable[[Target, float], None] | None = None
        self.on_batch: Callable[[str, int, float], None] | None = None
        self.settle_heap = False  # the server sets it: freeze the heap after each load
        self._unloaded: list[weakref.ref[Any]] = []  # models let go, while settle_heap is on
        self._roots = [
            getattr(store, name)
            for name in ("root", "scratch", "cache", "plain")
            if hasattr(store, name)
        ]

    def _entry(self, target: Target) -> Entry:
        with self._guard:
            entry = self._entries.get(target.version_id)
            if entry is not None and runtime_key(entry.target) == runtime_key(target):
                return entry
            if entry is not None:  # the version now serves another artifact (its export)
                self._detach(entry)
            entry = self._entries[target.version_id] = Entry(target)
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
                runtime = self._attach(entry)
            except ModelworksError as exc:
                entry.error = exc.message
            except Exception as exc:
                log.warning("model %s:%s failed to load: %r", target.model, target.version, exc)
                entry.error = (
                    f"the runtime could not load this model: {runtime_message(exc, self._roots)}"
                )
            else:
                entry.warmup_error = runtime.warmup_error
                entry.model = runtime.model
                entry.error = None
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
        self._enforce_budget(keep=target.version_id)
        self._settle()
        return loaded

    def _attach(self, entry: Entry) -> Runtime:
        """The entry's runtime: the one already loaded from the same artifact, else a new one
        (loaded once however many versions ask at the same time)."""
        key = runtime_key(entry.target)
        with self._guard:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                runtime = self._runtimes.get(key)
                if runtime is not None:
                    return self._use(runtime, entry)
            target = entry.target
            try:
                model = load(artifact_for(target, self.store), threads=self.threads)
                warmup_error = self._warm_up(target, model)
                with self._guard:
                    return self._use(
                        Runtime(key, model, target.memory_estimate, warmup_error), entry
                    )
            finally:
                with self._guard:
                    self._loading.pop(key, None)

    def _use(self, runtime: Runtime, entry: Entry) -> Runtime:
        """Count `entry` as a user of `runtime` (under the guard, with the lookup, so a runtime
        found is not unloaded before it is used). An entry replaced meanwhile is served once
        but not counted: the runtime goes when its requests end."""
        if self._entries.get(entry.target.version_id) is entry:
            runtime = self._runtimes.setdefault(runtime.key, runtime)
            runtime.users.add(entry.target.version_id)
            entry.runtime = runtime
        return runtime

    def _detach(self, entry: Entry) -> None:
        """Forget an entry (under the guard) and let go of its batcher and model; its runtime
        goes with its last user."""
        if self._entries.get(entry.target.version_id) is entry:
            del self._entries[entry.target.version_id]
        if entry.batcher is not None:
            entry.batcher.retire()
        entry.batcher = entry.model = None
        runtime, entry.runtime = entry.runtime, None
        if runtime is None:
            return
        runtime.users.discard(entry.target.version_id)
        if runtime.users or self._runtimes.get(runtime.key) is not runtime:
            return
        del self._runtimes[runtime.key]
        if self.settle_heap:
            model = _watch(runtime.model)
            del runtime  # most often the model's last reference: it goes now
            self._let_go(model)

    def _let_go(self, model: weakref.ref[Any] | None) -> None:
        """An unloaded model (under the guard) that is still alive is held by requests in
        flight, or by a cycle frozen with one: hand the frozen heap back to the collector
        until the model is gone (`_settle`)."""
        if model is not None:
            if model() is None:
                return
            self._unloaded.append(model)
        gc.unfreeze()

    def _settle(self) -> None:
        """After a load or an unload (settle_heap on): collect, then freeze the heap unless an
        unloaded model is still alive, held by requests in flight; the next load or unload
        looks again."""
        if not self.settle_heap:
            return
        gc.collect()
        with self._guard:
            self._unloaded = [ref for ref in self._unloaded if ref() is not None]
            if self._unloaded:
                return
        gc.freeze()

    def _warm_up(self, target: Target, model: LoadedModel) -> str | None:
        """Run one generated input so the first request does not pay for lazy setup. Only
        real inputs can condemn a model: a synthetic one may be refused where real ones pass
        (text a graph casts to numbers, values a model checks), so a failure is reported."""
        feeds = warmup_feeds(model.signature)
        if feeds is None:
            return (
                f"warm-up skipped: the signature declares more than {WARMUP_MAX_BYTES} bytes "
                "of inputs and outputs for one row"
            )
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
        entry = self._entries.get(target.version_id)
        if entry is None or entry.model is None or entry.target.digest != target.digest:
            return None
        entry.last_used = time.monotonic()
        return entry.model

    def batcher(
        self, target: Target, model: LoadedModel, stats: ModelStats | None = None
    ) -> Batcher:
        """The version's batcher (created on first use, on the event loop); a change of the
        model's serving options applies to its next batch. `stats` are the version's counts,
        kept by the caller across reloads. A `model` the version no longer serves (unloaded
        since the caller got it) runs on a batcher of its own, which the pool does not keep."""
        entry = self._entries.get(target.version_id)
        if entry is None or entry.model is not model:
            own = self._new_batcher(target, model, stats)
            own.retire()
            return own
        opts = target.batching
        if entry.batcher is not None and entry.batcher.model is model:
            settings = entry.batcher.settings
            settings.max_batch_size = int(opts["max_batch_size"])
            settings.max_delay_ms = float(opts["max_delay_ms"])
            return entry.batcher
        entry.batcher = self._new_batcher(target, model, stats)
        return entry.batcher

    def _new_batcher(self, target: Target, model: LoadedModel, stats: ModelStats | None) -> Batcher:
        opts = target.batching
        batcher = Batcher(
            model,
            BatchSettings(
                max_batch_size=int(opts["max_batch_size"]),
                max_delay_ms=float(opts["max_delay_ms"]),
                max_queue=self.queue_size,
                timeout_s=self.timeout_s,
                max_result_bytes=self.max_response_bytes,
            ),
            name=f"{target.model}:{target.version}",
            stats=stats,
        )
        if self.on_batch is not None:
            hook = self.on_batch
            name = batcher.name
            batcher.on_batch = lambda rows, seconds: hook(name, rows, seconds)
        return batcher

    def status(self, version: Target | int) -> tuple[str, str]:
        """('ready'|'loading'|'failed'|'unloaded', reason) of a served version (a Target or
        its version id) in this process: why it failed to load, or what its warm-up said when
        it is ready. Per version, never per file: the texts name only its own model."""
        entry = self._entries.get(version if isinstance(version, int) else version.version_id)
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

    def _enforce_budget(self, keep: int) -> None:
        if self.budget <= 0:
            return
        with self._guard:
            while (victim := self._victim(keep)) is not None:
                self._detach(victim)
                log.info(
                    "unloaded %s:%s of project %s (memory budget)",
                    victim.target.model,
                    victim.target.version,
                    victim.target.project_id,
                )

    def _victim(self, keep: int) -> Entry | None:
        """The entry to unload next (under the guard), or None when within the budget or when
        no project over its fair share has an idle entry to give back."""
        if sum(r.cost for r in self._runtimes.values()) <= self.budget:
            return None
        usage = self._usage()
        fair = self.budget / len(usage)
        for project in sorted(usage, key=usage.__getitem__, reverse=True):
            if usage[project] <= fair:
                return None
            idle = [
                e
                for e in self._entries.values()
                if e.target.project_id == project
                and e.runtime is not None
                and e.target.version_id != keep
                and (e.batcher is None or e.batcher.depth == 0)  # never unload under a queue
            ]
            if idle:
                return min(idle, key=lambda e: e.last_used)
        return None

    def _usage(self) -> dict[int, float]:
        """Memory per project: each runtime's cost split between the projects using it."""
        usage: dict[int, float] = defaultdict(float)
        for runtime in self._runtimes.values():
            projects = {self._entries[v].target.project_id for v in runtime.users}
            for project in projects:
                usage[project] += runtime.cost / len(projects)
        return usage

    def drop(self, digest: str) -> None:
        """Forget every version serving `digest` (its blob was deleted)."""
        with self._guard:
            for entry in [e for e in self._entries.values() if e.target.digest == digest]:
                self._detach(entry)
        self._settle()
