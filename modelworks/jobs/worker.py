"""A job worker: claims jobs from the queue, runs each in a child process, reports, records.

`modelworks worker` runs one on any machine that shares the registry database and the store;
`modelworks serve` starts `--job-workers` of them beside the server. A worker imports neither
torch nor a runtime: the heavy work is the child's (`modelworks.recipes`). While a child runs,
the worker forwards its progress events and log lines to the queue and renews its lease every
`heartbeat_s`; a cancel, a lost lease or the job's time limit kill the child's whole process
group. Stopping the worker (SIGTERM, or its parent `serve` going away) kills a running child
and hands the job back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from modelworks.jobs.kinds import JobKind, Plan, WorkerContext, job_queue, registered
from modelworks.jobs.queue import JobQueue, JobView
from modelworks.jobs.report import parse

log = logging.getLogger("modelworks.jobs")
POLL_S = 1.0
HEARTBEAT_S = 2.0
TAIL_LINES = 50


def worker_name() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _Pipes:
    """Reads a child's stdout and stderr on two threads into batches for the queue."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.logs: list[str] = []
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        assert proc.stdout is not None and proc.stderr is not None
        self.threads = [
            threading.Thread(target=self._read, args=(proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, False), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _read(self, stream: IO[str], events: bool) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            event = parse(line) if events else None
            with self.lock:
                if event is not None:
                    self.events.append(event)
                elif line.strip():
                    self.logs.append(line)
                    if not events:
                        self.tail.append(line)

    def take(self) -> tuple[list[dict[str, Any]], list[str]]:
        with self.lock:
            events, self.events = self.events, []
            logs, self.logs = self.logs, []
        return events, logs

    def join(self, proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
        for t in self.threads:
            t.join(timeout)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class Worker:
    def __init__(
        self,
        ctx: WorkerContext,
        *,
        name: str | None = None,
        kinds: dict[str, JobKind] | None = None,
        poll_s: float = POLL_S,
        heartbeat_s: float = HEARTBEAT_S,
        parent_pid: int | None = None,
    ) -> None:
        self.ctx = ctx
        self.queue: JobQueue = ctx.queue
        self.name = name or worker_name()
        self.kinds = kinds if kinds is not None else registered()
        self.poll_s = poll_s
        self.heartbeat_s = min(heartbeat_s, ctx.queue.lease_s / 3)
        self.parent_pid = parent_pid
        self.stop = threading.Event()

    # loops -------------------------------------------------------------------------------
    def run(self) -> None:
        """Work until `stop` is set (or the parent process is gone)."""
        log.info("worker %s started (kinds: %s)", self.name, ", ".join(self.kinds))
        while not self._stopping():
            try:
                job = self.queue.claim(self.name, tuple(self.kinds))
            except Exception:
                log.exception("worker %s could not claim a job; retrying", self.name)
                self.stop.wait(self.poll_s * 5)
                continue
            if job is None:
                self.stop.wait(self.poll_s)
                continue
            self.execute(job)
        log.info("worker %s stopped", self.name)

    def drain(self, timeout_s: float = 600.0) -> int:
        """Run due jobs until none is left (or `timeout_s`): what the demo and tests use to
        run jobs in this process. Returns how many ran."""
        deadline = time.monotonic() + timeout_s
        ran = 0
        while time.monotonic() < deadline and not self.stop.is_set():
            job = self.queue.claim(self.name, tuple(self.kinds))
            if job is None:
                return ran
            self.execute(job)
            ran += 1
        return ran

    def _stopping(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.stop.set()  # `serve` is gone: so is its worker
        return self.stop.is_set()

    # one job -----------------------------------------------------------------------------
    def execute(self, job: JobView) -> None:
        kind = self.kinds.get(job.kind)
        if kind is None:  # claimed by kind, so only a kind removed since
            self.queue.fail(job.id, self.name, f"no worker runs jobs of kind {job.kind!r}")
            return
        self.ctx.store.scratch.mkdir(parents=True, exist_ok=True)
        from modelworks.store import temp_prefix

        workdir = Path(tempfile.mkdtemp(dir=self.ctx.store.scratch, prefix=temp_prefix("job")))
        try:
            self._execute(job, kind, workdir)
        except Exception as exc:
            log.exception("job %s (%s) failed in its worker", job.id, job.kind)
            self.queue.fail(job.id, self.name, f"the worker failed: {type(exc).__name__}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self._changed(job)

    def _execute(self, job: JobView, kind: JobKind, workdir: Path) -> None:
        try:
            plan = kind.plan(job, self.ctx, workdir)
        except Exception as exc:
            from modelworks.errors import ModelworksError

            reason = exc.message if isinstance(exc, ModelworksError) else type(exc).__name__
            self.queue.fail(job.id, self.name, f"could not start: {reason}", retry=False)
            return
        outcome, returncode, tail = self._supervise(job, plan, workdir)
        if outcome != "exited":
            return
        if returncode == 0:
            result, apply = kind.finish(job, self.ctx, plan)
            if not self.queue.succeed(job.id, self.name, result, apply):
                log.warning("job %s finished after its lease was lost; discarded", job.id)
            return
        message, retry = kind.failure(job, self.ctx, plan, returncode, tail)
        self.queue.fail(job.id, self.name, message, retry=retry)

    def _supervise(self, job: JobView, plan: Plan, workdir: Path) -> tuple[str, int, list[str]]:
        """Run the child to its end, forwarding what it says and renewing the lease.
        Returns ("exited", status, stderr tail), or ("stopped", ...) when the worker ended it
        (cancel, lost lease, time limit, shutdown) and recorded what it had to."""
        proc = subprocess.Popen(
            plan.argv,
            env=plan.env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: killed whole
        )
        pipes = _Pipes(proc)
        self.queue.report(job.id, self.name, [{"phase": "started", "pid": proc.pid}])
        deadline = time.monotonic() + plan.timeout_s
        why = ""  # why the worker ended the child, if it did
        while not why:
            try:
                proc.wait(timeout=self.heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                pass
            self._forward(job, pipes)
            state = self.queue.heartbeat(job.id, self.name)
            if state != "running":
                why = state  # "cancel" or "lost"
            elif time.monotonic() > deadline:
                why = "timeout"
            elif self._stopping():
                why = "shutdown"
        if why:
            _kill(proc)
        pipes.join(proc)
        self._forward(job, pipes)
        if not why:
            return "exited", proc.returncode, list(pipes.tail)
        if why == "cancel":
            self.queue.cancelled(job.id, self.name)
        elif why == "timeout":
            message = f"ran past its time limit ({plan.timeout_s:.0f} s)"
            self.queue.fail(job.id, self.name, message, retry=False)
        elif why == "shutdown":
            self.queue.release(job.id, self.name)
        return "stopped", proc.returncode, list(pipes.tail)

    def _forward(self, job: JobView, pipes: _Pipes) -> None:
        events, logs = pipes.take()
        if events or logs:
            self.queue.report(job.id, self.name, events, logs)

    def _changed(self, job: JobView) -> None:
        model = job.params.get("model")
        if self.ctx.changed is not None and isinstance(model, str):
            self.ctx.changed(job.project_id, model)


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def build_context(settings: Any, changed: Callable[[int, str], None] | None = None) -> Any:
    """The worker's view of the installation: database, store and queue; no serving."""
    from modelworks.db import make_engine, make_sessionmaker
    from modelworks.store import ArtifactStore

    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    store = ArtifactStore.from_settings(settings)
    return WorkerContext(settings, sessions, store, job_queue(sessions, settings), changed)
