"""Rate limits (token bucket per key) and daily quotas (requests, items, tokens per key).

State lives in a backend: in process memory for one node, or Redis when several replicas must
share it (`MODELWORKS_LIMITS_URL=redis://host:6379/0`). Both answer the same questions, so the
code above them does not know which one runs.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from modelworks.errors import TooManyRequests

QUOTA_KINDS = ("requests", "items", "tokens")


@dataclass(frozen=True)
class Limits:
    """What one key may use: `rate` requests/s with `burst`, and per-UTC-day quotas."""

    rate: float | None = None
    burst: int | None = None
    quota: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.rate is None and not self.quota


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    return max(1, 86400 - (now.hour * 3600 + now.minute * 60 + now.second))


class Backend(Protocol):
    shared: bool

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        """Take one token; 0 when allowed, else seconds until a token is there."""

    async def used(self, counter: str) -> dict[str, int]: ...

    async def add(self, counter: str, counts: dict[str, int], ttl_s: int) -> None: ...

    async def close(self) -> None: ...

    async def revoke(self, prefix: str) -> None:
        """Tell every replica sharing this backend that a key is revoked."""

    async def is_revoked(self, prefix: str) -> bool: ...


class MemoryBackend:
    shared = False  # one process: its own key cache is dropped on revocation already

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # tokens, last refill (monotonic)
        self._counters: dict[str, dict[str, int]] = {}
        self._lock = asyncio.Lock()

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        now = time.monotonic()
        tokens, last = self._buckets.get(bucket, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[bucket] = (tokens - 1.0, now)
            return 0.0
        self._buckets[bucket] = (tokens, now)
        return (1.0 - tokens) / rate

    async def used(self, counter: str) -> dict[str, int]:
        return dict(self._counters.get(counter, {}))

    async def add(self, counter: str, counts: dict[str, int], ttl_s: int) -> None:
        current = self._counters.setdefault(counter, {})
        for k, v in counts.items():
            current[k] = current.get(k, 0) + v
        if len(self._counters) > 100_000:  # yesterday's counters are of no use
            day = today()
            self._counters = {k: v for k, v in self._counters.items() if day in k}

    async def close(self) -> None:
        return None

    async def revoke(self, prefix: str) -> None:
        return None

    async def is_revoked(self, prefix: str) -> bool:
        return False


# Atomic token bucket in Redis: the server's clock, one round trip, state expires when idle.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""


class RedisBackend:
    shared = True
    REVOKED_TTL_S = 7 * 86400  # far longer than any replica caches a key

    def __init__(self, url: str, prefix: str = "modelworks:") -> None:
        import redis.asyncio as redis

        self.client = redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self._take = self.client.register_script(_TAKE)

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        wait = await self._take(keys=[f"{self.prefix}bucket:{bucket}"], args=[rate, burst])
        return float(wait)

    async def used(self, counter: str) -> dict[str, int]:
        raw = await self.client.hgetall(f"{self.prefix}quota:{counter}")
        return {str(k): int(v) for k, v in raw.items()}

    async def add(self, counter: str, counts: dict[str, int], ttl_s: int) -> None:
        key = f"{self.prefix}quota:{counter}"
        async with self.client.pipeline(transaction=True) as pipe:
            for k, v in counts.items():
                pipe.hincrby(key, k, v)
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()

    async def revoke(self, prefix: str) -> None:
        await self.client.set(f"{self.prefix}revoked:{prefix}", "1", ex=self.REVOKED_TTL_S)

    async def is_revoked(self, prefix: str) -> bool:
        return bool(await self.client.exists(f"{self.prefix}revoked:{prefix}"))


def make_backend(url: str) -> Backend:
    if not url or url.startswith("memory"):
        return MemoryBackend()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBackend(url)
    raise ValueError(f"unsupported limits backend {url!r}: use memory:// or redis://host:port/db")


class Limiter:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def hit(self, key_id: int, limits: Limits) -> None:
        """Count one request against the key's rate limit; 429 with Retry-After when over."""
        if limits.rate is None or limits.rate <= 0:
            return
        burst = limits.burst or default_burst(limits.rate)
        wait = await self.backend.take(f"key:{key_id}", limits.rate, burst)
        if wait > 0:
            raise TooManyRequests(
                f"rate limit of {limits.rate:g} requests/s (burst {burst}) for this key exceeded; "
                f"retry in {wait:.2f} s or ask an owner to raise the key's rate_limit",
                details={"retry_after": max(1, math.ceil(wait)), "limit": "rate"},
            )

    async def check_quota(self, key_id: int, limits: Limits) -> None:
        """Refuse a new inference once any daily quota of the key is used up."""
        if not limits.quota:
            return
        used = await self.backend.used(f"key:{key_id}:{today()}")
        for kind, allowed in limits.quota.items():
            if used.get(kind, 0) >= allowed:
                raise TooManyRequests(
                    f"daily {kind} quota of {allowed} for this key is used up; it resets at "
                    "00:00 UTC, or ask an owner to raise the key's quota",
                    details={"retry_after": seconds_to_midnight(), "limit": f"quota.{kind}"},
                )

    async def add_usage(self, key_id: int, limits: Limits, counts: dict[str, int]) -> None:
        if limits.quota:
            await self.backend.add(f"key:{key_id}:{today()}", counts, ttl_s=2 * 86400)

    async def close(self) -> None:
        await self.backend.close()


def default_burst(rate: float) -> int:
    """The burst of a rate set without one: a second's worth."""
    return max(1, math.ceil(rate))


class FailureThrottle:
    """Failed authentications per client address per minute. Past the budget, bad keys from
    that address get 429 instead of 401; a valid key is still checked and let in, so an
    attacker sharing an address cannot lock the key's owner out."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, tuple[float, int]] = {}

    def failed(self, client: str) -> bool:
        """Count a failure; True when the address is over its budget."""
        now = time.monotonic()
        start, count = self._windows.get(client, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        count += 1
        self._windows[client] = (start, count)
        if len(self._windows) > 100_000:
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < 60}
        return count > self.per_minute
