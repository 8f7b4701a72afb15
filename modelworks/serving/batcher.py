"""Dynamic batching per served model version.

Requests queue (bounded); one worker takes whatever is waiting, up to `max_batch_size` rows,
stacks it along the batch axis and runs it in a thread. When the model is idle a request runs
at once (no waiting for company); under load batches form while the previous one runs, and
`max_delay_ms` (0 by default, as in Triton) lets a small batch wait that long for more:
worth it only for open-loop traffic, where more requests are sure to come. A full queue
answers 503 with Retry-After at once; a request whose deadline passes before its batch
starts is dropped (504).

Each batcher also counts what Triton's statistics extension reports (`ModelStats`): requests
that succeeded or failed and their time, time queued, and per executed batch the time to stack
inputs, run the model and split outputs. A few integer additions per request, on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anyio import to_thread

from modelworks.errors import ModelworksError, ServiceUnavailable
from modelworks.runtimes import LoadedModel

log = logging.getLogger("modelworks.serving")
INLINE_RUN_S = 0.0005


class DeadlineExceeded(ModelworksError):
    status = 504
    code = "deadline_exceeded"


@dataclass
class BatchSettings:
    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    max_queue: int = 512
    timeout_s: float = 30.0


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """Cumulative counts of one model version, in Triton's terms: an inference is a row (batch
    item), an execution one run of the model; request durations are summed per request."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)  # by rows per execution


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    deadline: float
    future: asyncio.Future[dict[str, np.ndarray]]
    key: tuple[Any, ...] = field(default=())
    queued_ns: int = 0
    stats: ModelStats = field(default_factory=ModelStats)


class Batcher:
    def __init__(self, model: LoadedModel, settings: BatchSettings, name: str = "") -> None:
        self.model = model
        self.settings = settings
        self.name = name
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=settings.max_queue)
        self._task: asyncio.Task[None] | None = None
        self.batchable = all(
            (i.get("shape") or [0])[0] == -1 for i in model.signature.get("inputs", [])
        ) and bool(model.signature.get("inputs"))
        self.batches = 0
        self._run_ema_s = 1.0  # unknown until measured: start off the loop
        self.on_batch: Any = None  # callback(size_rows, seconds) for metrics
        self.stats = ModelStats()  # for requests submitted without their model version's own

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def submit(
        self,
        feeds: dict[str, np.ndarray],
        timeout_s: float | None = None,
        stats: ModelStats | None = None,
    ) -> dict[str, np.ndarray]:
        """Run `feeds` in the next batch; `stats` counts it (versions with identical files
        share a runtime and its batcher, but each keeps its own counts)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher:{self.name}"
            )
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        loop = asyncio.get_running_loop()
        # items whose non-batch dims differ cannot be stacked together
        key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))
        item = _Item(
            feeds,
            rows,
            loop.time() + (timeout_s or self.settings.timeout_s),
            loop.create_future(),
            key,
            time.perf_counter_ns(),
            stats or self.stats,
        )
        stats = item.stats
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            stats.fail.add(time.perf_counter_ns() - item.queued_ns)
            raise ServiceUnavailable(
                f"model {self.name!r} is at capacity ({self.settings.max_queue} requests queued); "
                "retry shortly",
                details={"retry_after": 1},
            ) from None
        try:
            result = await item.future
        except BaseException:
            stats.fail.add(time.perf_counter_ns() - item.queued_ns)
            raise
        stats.success.add(time.perf_counter_ns() - item.queued_ns)
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self.queue.get()
            batch = [item]
            rows = item.rows
            if self.batchable:
                rows = self._drain(batch, rows)
                if rows < self.settings.max_batch_size:
                    # requests already read off the sockets are one loop turn from the queue
                    await asyncio.sleep(0)
                    rows = self._drain(batch, rows)
                if (
                    rows < self.settings.max_batch_size
                    and len(batch) > 1
                    and self.settings.max_delay_ms > 0
                ):
                    await asyncio.sleep(self.settings.max_delay_ms / 1000)
                    rows = self._drain(batch, rows)
            now = loop.time()
            live = []
            for it in batch:
                if it.future.done():
                    continue
                if it.deadline < now:
                    it.future.set_exception(
                        DeadlineExceeded(
                            f"model {self.name!r} did not start this request before its deadline; "
                            "the server is overloaded, retry later"
                        )
                    )
                    continue
                live.append(it)
            groups: dict[tuple[Any, ...], list[_Item]] = {}
            for it in live:
                groups.setdefault(it.key, []).append(it)
            for group in groups.values():
                await self._execute(group)

    def _drain(self, batch: list[_Item], rows: int) -> int:
        while rows < self.settings.max_batch_size:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            batch.append(nxt)
            rows += nxt.rows
        return rows

    async def _predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # a run shorter than a thread hand-off is cheaper on the loop than off it
        if self._run_ema_s < INLINE_RUN_S:
            return self.model.predict(feeds)
        return await to_thread.run_sync(self.model.predict, feeds)

    async def _execute(self, group: list[_Item]) -> None:
        started = time.perf_counter_ns()
        executions = 1
        total = sum(it.rows for it in group)
        try:
            if len(group) == 1:
                stacked = group[0].feeds
            else:
                names = list(group[0].feeds)
                stacked = {n: np.concatenate([it.feeds[n] for it in group]) for n in names}
            stacked_at = time.perf_counter_ns()
            out = await self._predict(stacked)
            alone = None
            if len(group) > 1 and any(a.ndim == 0 or a.shape[0] != total for a in out.values()):
                # the outputs do not follow the batch axis: run the requests one by one
                alone = [await self._predict(it.feeds) for it in group]
                executions += len(group)
            inferred_at = time.perf_counter_ns()
            if alone is not None:
                results = alone
            elif len(group) == 1:
                results = [out]
            else:
                bounds = np.cumsum([it.rows for it in group])[:-1]
                parts = {n: np.split(a, bounds) for n, a in out.items()}
                results = [{n: parts[n][i] for n in out} for i in range(len(group))]
        except Exception as exc:
            for it in group:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        ended = time.perf_counter_ns()
        self.batches += 1
        seconds = (ended - started) / 1e9
        self._run_ema_s = 0.8 * self._run_ema_s + 0.2 * seconds
        self._count(group, total, executions, (started, stacked_at, inferred_at, ended))
        total_rows = total or 1
        if self.on_batch is not None:
            self.on_batch(total_rows, seconds)
        for it, res in zip(group, results, strict=True):
            if not it.future.done():
                # each request is billed its share of the run, by rows
                res["_compute_ms"] = np.asarray(seconds * 1000 * it.rows / total_rows)
                it.future.set_result(res)

    def _count(
        self, group: list[_Item], rows: int, executions: int, marks: tuple[int, int, int, int]
    ) -> None:
        started, stacked_at, inferred_at, ended = marks
        spans = (stacked_at - started, inferred_at - stacked_at, ended - inferred_at)
        owners: dict[int, list[_Item]] = {}  # one, unless versions share this file
        for it in group:
            owners.setdefault(id(it.stats), []).append(it)
        now_ms = time.time_ns() // 1_000_000
        for items in owners.values():
            stats, n = items[0].stats, len(items)
            stats.inference_count += sum(it.rows for it in items)
            stats.queue.count += n
            stats.queue.ns += started * n - sum(it.queued_ns for it in items)
            stats.last_inference_ms = now_ms
            stats.execution_count += executions
            batch = stats.batches.get(rows) or stats.batches.setdefault(rows, BatchStats())
            # each request of a batch took the batch's time, as Triton counts it
            for per_request, per_batch, span in (
                (stats.compute_input, batch.compute_input, spans[0]),
                (stats.compute_infer, batch.compute_infer, spans[1]),
                (stats.compute_output, batch.compute_output, spans[2]),
            ):
                per_request.count += n
                per_request.ns += span * n
                per_batch.add(span)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
