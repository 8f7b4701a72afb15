"""The model pool: one loaded runtime per stored artifact, loaded once, off the event loop."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelworks.errors import ModelworksError, ServiceUnavailable
from modelworks.runtimes import LoadedModel, load
from modelworks.serving.batcher import Batcher, BatchSettings
from modelworks.store import ArtifactStore

log = logging.getLogger("modelworks.serving")


@dataclass
class Entry:
    model: LoadedModel | None = None
    error: str | None = None
    load_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelPool:
    """Keyed by digest: two versions with the same bytes share one session."""

    def __init__(
        self, store: ArtifactStore, threads: int = 0, batching: BatchSettings | None = None
    ) -> None:
        self.store = store
        self.threads = threads
        self.batching = batching or BatchSettings()
        self._entries: dict[str, Entry] = {}
        self._batchers: dict[str, Batcher] = {}
        self._guard = threading.Lock()

    def batcher(self, digest: str, model: LoadedModel, name: str) -> Batcher:
        """The batcher of a loaded artifact (created on first use, on the event loop)."""
        b = self._batchers.get(digest)
        if b is None or b.model is not model:
            b = self._batchers[digest] = Batcher(model, self.batching, name=name)
        return b

    def batchers(self) -> dict[str, Batcher]:
        return dict(self._batchers)

    def _entry(self, digest: str) -> Entry:
        with self._guard:
            return self._entries.setdefault(digest, Entry())

    def get(self, digest: str, format: str, signature: dict[str, Any]) -> LoadedModel:
        """Load (once) and return the runtime for this artifact. Blocking: call from a thread."""
        entry = self._entry(digest)
        if entry.model is not None:
            return entry.model
        with entry.lock:
            if entry.model is not None:
                return entry.model
            started = time.perf_counter()
            try:
                path = self.store.local_path(digest)
                entry.model = load(format, path, signature, threads=self.threads)
                entry.error = None
            except ModelworksError as exc:
                entry.error = exc.message
            except Exception as exc:  # a runtime's parser message may hold server paths
                log.warning("model %s failed to load: %s", digest, exc)
                entry.error = (
                    f"the runtime could not load this {format} model ({type(exc).__name__})"
                )
            entry.load_seconds = time.perf_counter() - started
            if entry.model is None:
                # forget the failure so a later call retries (e.g. after a transient I/O error)
                with self._guard:
                    self._entries.pop(digest, None)
                raise ServiceUnavailable(f"model is not ready: {entry.error}")
            return entry.model

    def is_loaded(self, digest: str) -> bool:
        e = self._entries.get(digest)
        return e is not None and e.model is not None

    def drop(self, digest: str) -> None:
        with self._guard:
            self._entries.pop(digest, None)
            self._batchers.pop(digest, None)
