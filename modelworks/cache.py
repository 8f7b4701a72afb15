"""A small per-process cache whose expired entries are refreshed by one caller at a time.

Hot-path lookups (API keys, model references) are cached for a few seconds. When an entry
runs out, the first caller to see it gets a miss and goes back to the source of truth; the
entry is kept `refresh_s` longer for everyone else meanwhile, so a busy entry costs one
lookup per expiry, not one per request in flight at that moment. Whoever refreshes `put`s
the new value, or `pop`s the entry when the source says it is gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RefreshingCache(Generic[K, V]):
    def __init__(self, refresh_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.refresh_s = refresh_s
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value while it is fresh; None when absent, or to the first caller after it
        expired (that caller refreshes it; the others keep the old value meanwhile)."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        now = time.monotonic()
        if hit[0] < now:
            self._entries[key] = (now + self.refresh_s, hit[1])
            return None
        return hit[1]

    def put(self, key: K, value: V, ttl_s: float) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + ttl_s, value)

    def pop(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def drop(self, where: Callable[[K], bool]) -> None:
        """Remove every entry whose key matches."""
        with self._lock:
            for key in [k for k in self._entries if where(k)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
