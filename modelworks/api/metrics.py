"""Prometheus metrics: per-model requests, latency, batch sizes, queue depth, load time, errors.

A pure ASGI middleware times every request; handlers and the serving engine fill in the
model through a context variable, so no protocol adapter has to remember to count.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelworks.api.protocols import protocol_of
from modelworks.context import CURRENT, note
from modelworks.serving.pool import ModelPool

__all__ = ["CURRENT", "Metrics", "MetricsMiddleware", "note"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _PoolCollector(Collector):
    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "modelworks_queue_depth",
            "Requests waiting per served model version.",
            labels=["project_id", "model"],
        )
        loaded = GaugeMetricFamily(
            "modelworks_models_loaded", "Served model versions loaded in memory."
        )
        count = 0
        for entry in self.pool.entries():
            name = f"{entry.target.model}:{entry.target.version}"
            if entry.model is not None:
                count += 1
            if entry.batcher is not None:
                depth.add_metric([str(entry.target.project_id), name], entry.batcher.depth)
        loaded.add_metric([], count)
        yield depth
        yield loaded


class Metrics:
    def __init__(self, pool: ModelPool) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelworks_requests",
            "Inference requests.",
            ["protocol", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "modelworks_request_duration_seconds",
            "Inference request latency.",
            ["protocol", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "modelworks_errors",
            "Failed inference requests by error code.",
            ["protocol", "model", "code"],
            registry=r,
        )
        self.items = Counter(
            "modelworks_inference_items",
            "Rows, sentences or images inferred.",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "modelworks_inference_tokens", "Tokens processed.", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "modelworks_batch_size",
            "Rows per executed batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "modelworks_batch_duration_seconds",
            "Time the runtime took per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.load_seconds = Gauge(
            "modelworks_model_load_seconds",
            "Time the last load (and warm-up) of a model took.",
            ["model"],
            registry=r,
        )
        r.register(_PoolCollector(pool))
        pool.on_load = lambda t, s: self.load_seconds.labels(f"{t.model}:{t.version}").set(s)
        pool.on_batch = self._observe_batch

    def _observe_batch(self, name: str, rows: int, seconds: float) -> None:
        self.batch_size.labels(name).observe(rows)
        self.batch_seconds.labels(name).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record(self, protocol: str, facts: dict[str, Any], status: int, seconds: float) -> None:
        model = str(facts.get("model", ""))
        self.requests.labels(protocol, model, str(status)).inc()
        self.latency.labels(protocol, model).observe(seconds)
        if status >= 400:
            self.errors.labels(protocol, model, str(facts.get("error", status))).inc()
        elif model:
            self.items.labels(model).inc(facts.get("items", 0))
            if facts.get("tokens"):
                self.tokens.labels(model).inc(facts["tokens"])


class MetricsMiddleware:
    """Times and counts inference requests, and hands each one to `on_done` (usage metering,
    quotas) once the response has gone out."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        on_done: Callable[[str, dict[str, Any], int], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        proto = protocol_of(scope) if scope["type"] == "http" else None
        if proto is None:
            await self.app(scope, receive, send)
            return
        protocol = proto.name
        facts: dict[str, Any] = {"method": scope["method"]}
        token = CURRENT.set(facts)
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            CURRENT.reset(token)
            self.metrics.record(protocol, facts, status, time.perf_counter() - started)
            if self.on_done is not None:
                await self.on_done(protocol, facts, status)
