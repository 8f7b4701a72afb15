"""Rate limits (token bucket per key) and daily quotas (requests, items, tokens per key).

State lives in a backend: in process memory for one node, or Redis when several replicas must
share it (`MODELWORKS_LIMITS_URL=redis://host:6379/0`). Both answer the same questions, so the
code above them does not know which one runs.

Quotas are *reserved* before work runs: a check and its increment are one atomic step (no
await between them in memory, one Lua script in Redis), so concurrent requests cannot all see
the same "room left" and overspend it. What a request did not use is released afterwards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from modelworks.errors import TooManyRequests

QUOTA_KINDS = ("requests", "items", "tokens")
QUOTA_TTL_S = 2 * 86400  # a day's counters outlive the day by one, then expire

MIN_RATE = 0.001  # requests/s: one every ~17 minutes; below it Retry-After is absurd
MAX_RATE = 1e6


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

    async def add(self, counter: str, counts: dict[str, int], ttl_s: int) -> None: ...

    async def reserve(
        self, counter: str, counts: dict[str, int], limits: dict[str, int], ttl_s: int
    ) -> tuple[str, int] | None:
        """Atomically add `counts` if every counted kind that has a limit still fits
        (`used + max(count, 1) <= limit`); else add nothing and return (kind, used)."""

    async def close(self) -> None: ...

    async def revoke(self, prefix: str) -> None:
        """Tell every replica sharing this backend that a key is revoked."""

    async def is_revoked(self, prefix: str) -> bool: ...


class MemoryBackend:
    shared = False  # one process: its own key cache is dropped on revocation already

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # tokens, last refill (monotonic)
        self._counters: dict[str, dict[str, int]] = {}

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        now = time.monotonic()
        tokens, last = self._buckets.get(bucket, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[bucket] = (tokens - 1.0, now)
            return 0.0
        self._buckets[bucket] = (tokens, now)
        return (1.0 - tokens) / rate

    async def add(self, counter: str, counts: dict[str, int], ttl_s: int) -> None:
        self._add(counter, counts)

    async def reserve(
        self, counter: str, counts: dict[str, int], limits: dict[str, int], ttl_s: int
    ) -> tuple[str, int] | None:
        # plain code from the check to the increment, no await: atomic on the event loop
        current = self._counters.get(counter, {})
        for kind, count in counts.items():
            if kind in limits and current.get(kind, 0) + max(count, 1) > limits[kind]:
                return kind, current.get(kind, 0)
        self._add(counter, counts)
        return None

    def _add(self, counter: str, counts: dict[str, int]) -> None:
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


# Atomic reservation: check every counted kind against its limit (-1: none), then add all or
# nothing. ARGV: ttl, then (kind, count, limit) triples. Returns {} or {kind, used}.
_RESERVE = """
local n = #ARGV
for i = 2, n, 3 do
  local limit = tonumber(ARGV[i + 2])
  if limit >= 0 then
    local used = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
    if used + math.max(tonumber(ARGV[i + 1]), 1) > limit then
      return {ARGV[i], tostring(used)}
    end
  end
end
for i = 2, n, 3 do
  local count = tonumber(ARGV[i + 1])
  if count ~= 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[i], count)
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return {}
"""


class RedisBackend:
    shared = True
    REVOKED_TTL_S = 7 * 86400  # far longer than any replica caches a key

    def __init__(self, url: str, prefix: str = "modelworks:") -> None:
        import redis.asyncio as redis

        self.client = redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self._take = self.client.register_script(_TAKE)
        self._reserve = self.client.register_script(_RESERVE)

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        wait = await self._take(keys=[f"{self.prefix}bucket:{bucket}"], args=[rate, burst])
        return float(wait)

    async def add(self, counter: str, counts: dict[str, int], ttl_s: int) -> None:
        key = f"{self.prefix}quota:{counter}"
        async with self.client.pipeline(transaction=True) as pipe:
            for k, v in counts.items():
                pipe.hincrby(key, k, v)
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def reserve(
        self, counter: str, counts: dict[str, int], limits: dict[str, int], ttl_s: int
    ) -> tuple[str, int] | None:
        args: list[str | int] = [ttl_s]
        for kind, count in counts.items():
            args += [kind, count, limits.get(kind, -1)]
        refused = await self._reserve(keys=[f"{self.prefix}quota:{counter}"], args=args)
        return (str(refused[0]), int(refused[1])) if refused else None

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

    async def reserve(self, key_id: int, limits: Limits, *, requests: int) -> Reservation | None:
        """Refuse a request once any daily quota of the key is used up, and take `requests`
        (1 for an inference, 0 for a metadata read) of its requests quota in the same atomic
        step. None for a key without quotas."""
        if not limits.quota:
            return None
        held = Reservation(key_id, limits, f"key:{key_id}:{today()}")
        await self.reserve_more(held, {"requests": requests, "items": 0, "tokens": 0})
        return held

    async def reserve_more(self, held: Reservation, counts: dict[str, int]) -> None:
        """Take `counts` (items, tokens) for a request before its work runs; 429 naming the
        quota when they do not fit in what is left today (nothing is taken then)."""
        counts = {k: max(0, int(v)) for k, v in counts.items() if k in QUOTA_KINDS}
        quota = held.limits.quota
        refused = await self.backend.reserve(held.counter, counts, quota, QUOTA_TTL_S)
        if refused is not None:
            kind, used = refused
            raise over_quota(kind, quota[kind], used, counts.get(kind, 0))
        for kind, n in counts.items():
            held.counts[kind] = held.counts.get(kind, 0) + n

    async def settle(self, held: Reservation, used: dict[str, int] | None) -> None:
        """After the response: charge what the request used and release the rest of what it
        held. `used=None` (the request failed) releases everything, the request included.
        Counts only known after the run (tokens a model produced) are added even past the
        quota: one request may overshoot it, and the next is refused."""
        final = {kind: int((used or {}).get(kind, 0)) for kind in QUOTA_KINDS}
        delta = {k: final[k] - held.counts.get(k, 0) for k in QUOTA_KINDS}
        delta = {k: v for k, v in delta.items() if v}
        held.counts = final
        if delta:
            await self.backend.add(held.counter, delta, QUOTA_TTL_S)

    async def close(self) -> None:
        await self.backend.close()


@dataclass
class Reservation:
    """What one request holds of its key's daily quotas, taken before its work ran."""

    key_id: int
    limits: Limits
    counter: str  # the day it was taken from: released there, even after midnight
    counts: dict[str, int] = field(default_factory=dict)


def over_quota(kind: str, allowed: int, used: int, asked: int) -> TooManyRequests:
    """The 429 for a quota that cannot cover a request: used up, or too small for it."""
    details = {"retry_after": seconds_to_midnight(), "limit": f"quota.{kind}"}
    left = max(0, allowed - used)
    if left == 0:
        return TooManyRequests(
            f"daily {kind} quota of {allowed} for this key is used up; it resets at "
            "00:00 UTC, or ask an owner to raise the key's quota",
            details=details,
        )
    return TooManyRequests(
        f"this request has {asked} {kind} but only {left} remain of the daily {kind} quota "
        f"of {allowed} for this key; send at most {left}, wait for the reset at 00:00 UTC, "
        "or ask an owner to raise the key's quota",
        details={**details, "requested": asked, "remaining": left},
    )


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
