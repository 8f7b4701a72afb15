"""Dynamic batching per served model version.

Requests queue (bounded); one worker takes whatever is waiting, up to `max_batch_size` rows,
and runs it in a thread. When the model is idle a request runs at once (no waiting for
company); under load batches form while the previous one runs, and `max_delay_ms` (0 by
default, as in Triton) lets a small batch wait that long for more: worth it only for open-loop
traffic, where more requests are sure to come. A full queue answers 503 with Retry-After at
once.

Nothing that grows with a request runs on the event loop: stacking the inputs, running the
model, splitting its outputs and measuring each answer against `max_result_bytes` all happen
in the batcher's own worker thread. Every request waits at most until its deadline and then
answers 504, queued or running (a late result is dropped). A run that every one of its
requests gave up on is told to stop (ONNX Runtime's terminate flag); the next batch starts
only once the thread is free, and requests queued behind a stuck run time out at their own
deadlines. A stuck run holds its own batcher's thread, no thread another model needs.

Each batcher also counts what Triton's statistics extension reports (`ModelStats`): requests
that succeeded or failed and their time, time queued, and per executed batch the time to stack
inputs, run the model and split outputs. A few integer additions per request, on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelworks.errors import (
    DeadlineExceeded,
    ModelworksError,
    PayloadTooLarge,
    ServiceUnavailable,
)
from modelworks.runtimes import LoadedModel, as_result, run_options, terminate

log = logging.getLogger("modelworks.serving")
MAX_RESPONSE_SETTING = "MODELWORKS_MAX_RESPONSE_BYTES"
WORKER_IDLE_S = 30.0  # a batcher's thread ends after this long without work


@dataclass
class BatchSettings:
    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    max_queue: int = 512
    timeout_s: float = 30.0
    max_result_bytes: int = 0  # bytes one request's answer may hold (0: no limit)


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


@dataclass(slots=True)
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    deadline: float
    timeout_s: float
    future: asyncio.Future[Answer]
    key: tuple[Any, ...]
    queued_ns: int
    wanted: frozenset[str] | None = None  # outputs the answer holds (None: every one)
    running: bool = False


@dataclass(slots=True)
class Answer:
    """One request's share of a run: its outputs, its per-row statistics (`counts`, e.g.
    tokens) and the compute time it is billed (its rows' share of the run)."""

    outputs: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    compute_ms: float = 0.0


@dataclass
class _Run:
    """What a batch's worker thread hands back: per request its answer or its refusal."""

    # per request: its answer, our refusal, or the runtime's failure on that request alone
    results: list[Answer | BaseException]
    executions: int
    marks: tuple[int, int, int, int]  # started, stacked, inferred, ended (perf_counter_ns)


def answer_bytes(outputs: dict[str, np.ndarray], limit: int) -> int:
    """Bytes the arrays hold: numeric `nbytes`, and the UTF-8 length of each text element.
    Stops counting once past `limit` (0: counts all), so a huge answer costs no more than a
    refused one. Call it off the event loop: text is counted element by element."""
    total = 0
    for arr in outputs.values():
        if arr.dtype.kind != "O":
            total += arr.nbytes
            continue
        for x in arr.flat:
            total += _text_bytes(x)
            if limit and total > limit:
                return total
    return total


def _text_bytes(x: Any) -> int:
    if isinstance(x, bytes):
        return len(x)
    text = x if isinstance(x, str) else str(x)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def too_large(size: int, limit: int) -> PayloadTooLarge:
    """The refusal of an answer over the response budget, naming the setting."""
    return PayloadTooLarge(
        f"the answer would hold at least {size} bytes, more than {MAX_RESPONSE_SETTING} "
        f"({limit}) allows; "
        "send fewer rows or ask for fewer outputs",
        details={"limit": limit},
    )


class Worker:
    """One thread running one batcher's batches, one at a time. A batch goes over in one queue
    put and comes back in one `call_soon_threadsafe` that settles all its requests: no future,
    task or executor in between, as that hop costs the most of a small model's request. The
    thread ends after WORKER_IDLE_S without work and starts again with the next batch."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.idle_s = WORKER_IDLE_S  # 0 once retired

    def retire(self) -> None:
        """End the thread as soon as it has no batch left, instead of idling (callable from
        any thread); a later batch still runs, in a thread that ends with it."""
        with self._lock:
            self.idle_s = 0.0
            if self._thread is not None:
                self._jobs.put(())  # a thread waiting for work looks again at once

    def start(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run `fn(*args)` in the thread, then `done(result, error)` on the calling loop. Raises
        (and queues nothing) when no thread can start."""
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                thread.start()
                self._thread = thread
            self._jobs.put((asyncio.get_running_loop(), fn, args, done))

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(block=self.idle_s > 0, timeout=self.idle_s or None)
            except queue.Empty:
                with self._lock:  # a job put before this check is still taken
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if not job:  # retire()'s wake-up
                continue
            _do(*job)
            del job  # an idle thread keeps no batch (inputs, model) alive


def _do(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    done: Callable[[Any, BaseException | None], None],
) -> None:
    try:
        outcome: tuple[Any, BaseException | None] = (fn(*args), None)
    except BaseException as exc:  # handed to the loop, like a result
        outcome = (None, exc)
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(done, *outcome)


class Batcher:
    """Batches are formed and settled on the event loop, in callbacks (no task of its own),
    and run in `worker`. One batch at a time: `_busy` from the moment one is due until its
    last group has run; `_running` is the group in the worker thread."""

    def __init__(
        self,
        model: LoadedModel,
        settings: BatchSettings,
        name: str = "",
        *,
        stats: ModelStats | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.name = name
        self._waiting: deque[_Item] = deque()
        self._busy = False
        self._groups: list[list[_Item]] = []  # of the current batch, still to run
        self._running: list[_Item] | None = None
        self._options = run_options()  # reused until a run is told to stop
        self.batchable = all(
            (i.get("shape") or [0])[0] == -1 for i in model.signature.get("inputs", [])
        ) and bool(model.signature.get("inputs"))
        self.batches = 0
        self.on_batch: Any = None  # callback(size_rows, seconds) for metrics
        self.stats = stats or ModelStats()  # the version's own: it outlives a reload
        self.worker = Worker(f"batcher:{name}")

    @property
    def depth(self) -> int:
        return len(self._waiting)

    async def submit(
        self,
        feeds: dict[str, np.ndarray],
        timeout_s: float | None = None,
        wanted: list[str] | None = None,
    ) -> Answer:
        """Run `feeds` in the next batch; 504 at the deadline whatever the batch is doing.
        `wanted` names the outputs the answer holds: only they count against its budget."""
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        loop = asyncio.get_running_loop()
        timeout = timeout_s or self.settings.timeout_s
        # items whose non-batch dims differ cannot be stacked together
        key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))
        item = _Item(
            feeds,
            rows,
            loop.time() + timeout,
            timeout,
            loop.create_future(),
            key,
            time.perf_counter_ns(),
            frozenset(wanted) if wanted is not None else None,
        )
        self._enqueue(item)
        if not self._busy:
            self._busy = True
            # requests already read off the sockets are one loop turn from the queue
            loop.call_soon(self._form)
        expiry = loop.call_at(item.deadline, self._expire, item)
        try:
            result = await item.future
        except BaseException:
            self.stats.fail.add(time.perf_counter_ns() - item.queued_ns)
            if item.running:
                self._stop_if_abandoned()
            raise
        finally:
            expiry.cancel()
        self.stats.success.add(time.perf_counter_ns() - item.queued_ns)
        return result

    def _enqueue(self, item: _Item) -> None:
        if len(self._waiting) >= self.settings.max_queue:
            self._purge()
            if len(self._waiting) >= self.settings.max_queue:
                self.stats.fail.add(time.perf_counter_ns() - item.queued_ns)
                raise ServiceUnavailable(
                    f"model {self.name!r} is at capacity ({self.settings.max_queue} requests "
                    "queued); retry shortly",
                    details={"retry_after": 1},
                )
        self._waiting.append(item)

    def _purge(self) -> None:
        """Drop queued requests that already answered (deadline, disconnect): behind a stuck
        run they would otherwise hold the queue's places until it ends."""
        self._waiting = deque(it for it in self._waiting if not it.future.done())

    def _expire(self, item: _Item) -> None:
        if item.future.done():
            return
        if item.running:
            message = (
                f"model {self.name!r} was still running this request at its deadline "
                f"({item.timeout_s:g} s); send fewer rows or smaller inputs, or retry later"
            )
        else:
            message = (
                f"model {self.name!r} did not start this request before its deadline "
                f"({item.timeout_s:g} s); the server is overloaded, retry later"
            )
        item.future.set_exception(DeadlineExceeded(message))

    def _stop_if_abandoned(self) -> None:
        """Once every request of the running group has answered (deadline, disconnect),
        nobody waits for its run: stop it."""
        group = self._running
        if group is None or self._options.terminate:
            return
        if all(it.future.done() for it in group):
            terminate(self._options)
            log.warning(
                "model %s: every request of a run gave up on it; told it to stop", self.name
            )

    def _form(self) -> None:
        """Take the next batch off the queue: up to `max_batch_size` rows of live requests."""
        batch: list[_Item] = []
        rows = self._drain(batch, 0)
        if not batch:
            self._busy = False
        elif rows < self.settings.max_batch_size and len(batch) > 1 and self.settings.max_delay_ms:
            loop = asyncio.get_running_loop()
            loop.call_later(self.settings.max_delay_ms / 1000, self._top_up, batch, rows)
        else:
            self._begin(batch)

    def _top_up(self, batch: list[_Item], rows: int) -> None:
        self._drain(batch, rows)
        self._begin(batch)

    def _drain(self, batch: list[_Item], rows: int) -> int:
        limit = self.settings.max_batch_size
        while self._waiting and (not batch or (self.batchable and rows < limit)):
            it = self._waiting.popleft()
            if not it.future.done():  # not past its deadline, not gone
                batch.append(it)
                rows += it.rows
        return rows

    def _begin(self, batch: list[_Item]) -> None:
        groups: dict[tuple[Any, ...], list[_Item]] = {}
        for it in batch:
            groups.setdefault(it.key, []).append(it)
        self._groups = list(groups.values())
        self._next_group()

    def _next_group(self) -> None:
        """Run the batch's next group that still has a live request, or end the batch."""
        while self._groups:
            group = [it for it in self._groups.pop(0) if not it.future.done()]
            if group and self._launch(group):
                return
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._form)
        else:
            self._busy = False

    def _launch(self, group: list[_Item]) -> bool:
        """Hand `group` to the worker thread; False (the group answered) when none can start."""
        feeds = [it.feeds for it in group]
        wanted = [it.wanted for it in group]
        rows = [it.rows for it in group]
        try:
            self.worker.start(self._work, (feeds, rows, wanted, self._options), self._finish)
        except RuntimeError:  # out of threads: this batch fails, the batcher goes on
            for it in group:
                it.future.set_exception(
                    ServiceUnavailable(
                        f"model {self.name!r} could not start a thread to run this request; "
                        "retry shortly",
                        details={"retry_after": 1},
                    )
                )
            return False
        for it in group:
            it.running = True
        self._running = group
        return True

    def _finish(self, run: Any, error: BaseException | None) -> None:
        """Back from the worker thread: answer the group's requests, then go on."""
        group, self._running = self._running or [], None
        if self._options.terminate:  # a stopped switch stays stopped
            self._options = run_options()
        try:
            if error is not None:
                for it in group:
                    if not it.future.done():
                        it.future.set_exception(error)
            else:
                self._settle(group, run)
        finally:
            self._next_group()

    def _settle(self, group: list[_Item], run: _Run) -> None:
        started, _, _, ended = run.marks
        self.batches += 1
        seconds = (ended - started) / 1e9
        total = sum(it.rows for it in group)
        self._count(group, total, run.executions, run.marks)
        total = total or 1
        if self.on_batch is not None:
            self.on_batch(total, seconds)
        for it, res in zip(group, run.results, strict=True):
            if it.future.done():
                continue  # answered 504 at its deadline: the late result is dropped
            if isinstance(res, BaseException):
                it.future.set_exception(res)
                continue
            # each request is billed its share of the run, by rows
            res.compute_ms = seconds * 1000 * it.rows / total
            it.future.set_result(res)

    def _work(
        self,
        feeds: list[dict[str, np.ndarray]],
        rows: list[int],
        wanted: list[frozenset[str] | None],
        options: Any,
    ) -> _Run:
        """One batch in the worker thread: stack, run, split, measure."""
        started = time.perf_counter_ns()
        total = sum(rows)
        if len(feeds) == 1:
            stacked = feeds[0]
        else:
            stacked = {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
        stacked_at = time.perf_counter_ns()
        try:
            out = as_result(self.model.predict(stacked, run_options=options))
        except Exception:
            if len(feeds) == 1 or options.terminate:
                raise
            # one request's values (an index out of range...) may have failed the batch: each
            # runs alone, so only the request at fault gets the error
            return self._one_by_one(feeds, wanted, options, started, stacked_at)
        executions = 1
        arrays = [*out.outputs.values(), *out.counts.values()]
        alone = len(feeds) > 1 and any(a.ndim == 0 or a.shape[0] != total for a in arrays)
        if alone:  # the outputs do not follow the batch axis: run the requests one by one
            each = [as_result(self.model.predict(f, run_options=options)) for f in feeds]
            results = [Answer(r.outputs, r.counts) for r in each]
            executions += len(feeds)
        inferred_at = time.perf_counter_ns()
        if len(feeds) == 1:
            results = [Answer(out.outputs, out.counts)]
        elif not alone:
            bounds = np.cumsum(rows)[:-1]
            outs = {n: np.split(a, bounds) for n, a in out.outputs.items()}
            counts = {n: np.split(a, bounds) for n, a in out.counts.items()}
            results = [
                Answer({n: outs[n][i] for n in outs}, {n: counts[n][i] for n in counts})
                for i in range(len(feeds))
            ]
        checked: list[Answer | BaseException] = [
            self._within_budget(r, w) for r, w in zip(results, wanted, strict=True)
        ]
        return _Run(checked, executions, (started, stacked_at, inferred_at, time.perf_counter_ns()))

    def _one_by_one(
        self,
        feeds: list[dict[str, np.ndarray]],
        wanted: list[frozenset[str] | None],
        options: Any,
        started: int,
        stacked_at: int,
    ) -> _Run:
        results: list[Answer | BaseException] = []
        for f, w in zip(feeds, wanted, strict=True):
            try:
                r = as_result(self.model.predict(f, run_options=options))
                results.append(self._within_budget(Answer(r.outputs, r.counts), w))
            except Exception as exc:
                results.append(exc)
        inferred_at = time.perf_counter_ns()
        marks = (started, stacked_at, inferred_at, time.perf_counter_ns())
        return _Run(results, 1 + len(feeds), marks)

    def _within_budget(
        self, answer: Answer, wanted: frozenset[str] | None
    ) -> Answer | ModelworksError:
        limit = self.settings.max_result_bytes
        if limit <= 0:
            return answer
        result = answer.outputs
        answered = result if wanted is None else {n: a for n, a in result.items() if n in wanted}
        size = answer_bytes(answered, limit)
        return too_large(size, limit) if size > limit else answer

    def _count(
        self, group: list[_Item], rows: int, executions: int, marks: tuple[int, int, int, int]
    ) -> None:
        started, stacked_at, inferred_at, ended = marks
        spans = (stacked_at - started, inferred_at - stacked_at, ended - inferred_at)
        stats, n = self.stats, len(group)
        stats.inference_count += rows
        stats.queue.count += n
        stats.queue.ns += started * n - sum(it.queued_ns for it in group)
        stats.last_inference_ms = time.time_ns() // 1_000_000
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

    def retire(self) -> None:
        """Its version was unloaded (callable from any thread): the worker thread ends once
        the batches already queued have run, rather than idle WORKER_IDLE_S. Requests that
        hold this batcher still run on its model; the pool hands out no new one, so the
        model goes with the last of them."""
        self.worker.retire()

    async def close(self) -> None:
        """Retire the batcher; it has no task of its own to cancel."""
        self.retire()
