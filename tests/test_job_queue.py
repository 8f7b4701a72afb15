"""The job queue in the registry database: claims, leases, retries, cancels, fairness; and the
worker that runs a job's child process. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelworks.api.services import Services
from modelworks.errors import Conflict, NotFound
from modelworks.jobs.kinds import Apply, Plan, WorkerContext
from modelworks.jobs.queue import JobQueue, JobView, backoff
from modelworks.jobs.worker import Worker


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(services: Services, database_url: str, clock: Clock) -> JobQueue:
    return JobQueue(services.sessions, lease_s=30.0, clock=clock)


@pytest.fixture
def pid(services: Services) -> int:
    return services.default_project_id


def other_project(services: Services) -> int:
    from modelworks.registry.projects import ProjectService

    return ProjectService(services.sessions).create("other").id


def statuses(queue: JobQueue, job_id: int) -> list[str]:
    return [e.data["status"] for e in queue.events(job_id, types=("status",))]


def test_claim_takes_the_oldest_due_job_once(queue: JobQueue, pid: int) -> None:
    first = queue.enqueue(pid, "sleep", {"n": 1})
    queue.per_project = 5
    second = queue.enqueue(pid, "sleep", {"n": 2})
    a = queue.claim("w1")
    b = queue.claim("w2")
    assert a is not None and b is not None
    assert (a.id, b.id) == (first.id, second.id)
    assert (a.status, a.worker, a.attempts) == ("running", "w1", 1)
    assert queue.claim("w3") is None
    assert queue.claim("w1", kinds=("export",)) is None


def test_two_workers_racing_win_each_job_exactly_once(queue: JobQueue, pid: int) -> None:
    queue.per_project = 100
    ids = {queue.enqueue(pid, "sleep", {"i": i}).id for i in range(40)}
    won: dict[str, list[int]] = {"w1": [], "w2": [], "w3": [], "w4": []}
    start = threading.Barrier(len(won))

    def claim_all(name: str) -> None:
        start.wait()
        while (job := queue.claim(name)) is not None:
            won[name].append(job.id)

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in won]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [i for lst in won.values() for i in lst]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    for job_id in ids:
        assert queue.get(job_id).attempts == 1


def test_an_expired_lease_is_claimed_again_and_the_old_worker_records_nothing(
    queue: JobQueue, pid: int, clock: Clock
) -> None:
    job = queue.enqueue(pid, "sleep", {})
    assert queue.claim("w1") is not None
    clock.now += 20
    assert queue.heartbeat(job.id, "w1") == "running"  # renewed: good for 30 s from now
    clock.now += 25
    assert queue.claim("w2") is None  # still held
    clock.now += 10  # 35 s without a heartbeat
    again = queue.claim("w2")
    assert again is not None and again.id == job.id
    assert (again.worker, again.attempts) == ("w2", 2)
    assert queue.heartbeat(job.id, "w1") == "lost"
    assert queue.succeed(job.id, "w1", {"by": "w1"}) is False
    assert queue.fail(job.id, "w1", "late") == "lost"
    assert queue.succeed(job.id, "w2", {"by": "w2"}) is True
    done = queue.get(job.id)
    assert (done.status, done.result) == ("succeeded", {"by": "w2"})
    assert statuses(queue, job.id) == ["queued", "running", "queued", "running", "succeeded"]


def test_a_lost_job_with_no_attempts_left_fails(queue: JobQueue, pid: int, clock: Clock) -> None:
    job = queue.enqueue(pid, "sleep", {}, max_attempts=1)
    assert queue.claim("w1") is not None
    clock.now += 31
    assert queue.reap() == 1
    lost = queue.get(job.id)
    assert lost.status == "failed"
    assert "w1" in lost.error and "no attempts left" in lost.error


def test_failed_attempts_retry_after_a_growing_back_off(
    queue: JobQueue, pid: int, clock: Clock
) -> None:
    job = queue.enqueue(pid, "sleep", {}, max_attempts=3)
    assert queue.claim("w") is not None
    assert queue.fail(job.id, "w", "flaky") == "queued"
    assert queue.claim("w") is None  # not due yet
    clock.now += backoff(1)
    assert queue.claim("w") is not None
    assert queue.fail(job.id, "w", "flaky again") == "queued"
    clock.now += backoff(1)
    assert queue.claim("w") is None  # the second wait is longer
    clock.now += backoff(2)
    assert queue.claim("w") is not None
    assert queue.fail(job.id, "w", "third time") == "failed"
    assert backoff(1) < backoff(2) < backoff(3)
    final = queue.get(job.id)
    assert (final.status, final.error, final.attempts) == ("failed", "third time", 3)


def test_a_failure_that_cannot_help_is_final(queue: JobQueue, pid: int) -> None:
    job = queue.enqueue(pid, "sleep", {}, max_attempts=5)
    assert queue.claim("w") is not None
    assert queue.fail(job.id, "w", "bad input", retry=False) == "failed"


def test_cancel(queue: JobQueue, pid: int, services: Services) -> None:
    queued = queue.enqueue(pid, "sleep", {})
    assert queue.cancel(queued.id, pid).status == "cancelled"  # at once
    assert queue.claim("w") is None

    running = queue.enqueue(pid, "sleep", {})
    assert queue.claim("w") is not None
    flagged = queue.cancel(running.id, pid)
    assert (flagged.status, flagged.cancel_requested) == ("running", True)
    assert queue.heartbeat(running.id, "w") == "cancel"
    assert queue.cancelled(running.id, "w") is True
    assert queue.get(running.id).status == "cancelled"

    with pytest.raises(Conflict, match="already cancelled"):
        queue.cancel(running.id, pid)
    with pytest.raises(NotFound):
        queue.cancel(running.id, other_project(services))  # another project's job is missing


def test_projects_take_turns(queue: JobQueue, pid: int, services: Services) -> None:
    """One running job per project (the default share): a project with a backlog does not
    hold back the next project's first job."""
    other = other_project(services)
    a1 = queue.enqueue(pid, "sleep", {})
    queue.enqueue(pid, "sleep", {})
    b1 = queue.enqueue(other, "sleep", {})
    first, second = queue.claim("w1"), queue.claim("w2")
    assert first is not None and second is not None
    assert (first.id, second.id) == (a1.id, b1.id)
    assert queue.claim("w3") is None  # both projects are at their share
    assert queue.succeed(a1.id, "w1", {})
    nxt = queue.claim("w3")
    assert nxt is not None and nxt.project_id == pid


def test_reports_are_kept_in_order_only_from_the_holder(queue: JobQueue, pid: int) -> None:
    job = queue.enqueue(pid, "sleep", {})
    assert queue.claim("w") is not None
    assert queue.report(job.id, "w", [{"phase": "train", "progress": 0.5}], ["line 1", "line 2"])
    assert not queue.report(job.id, "intruder", [{"progress": 0.9}], ["forged"])
    events = queue.events(job.id)
    kinds = [
        (e.type, e.data.get("line") or e.data.get("phase") or e.data.get("status")) for e in events
    ]
    assert kinds == [
        ("status", "queued"),
        ("status", "running"),
        ("progress", "train"),
        ("log", "line 1"),
        ("log", "line 2"),
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids)
    assert [e.data["line"] for e in queue.events(job.id, after=ids[2], types=("log",))] == [
        "line 1",
        "line 2",
    ]
    view = queue.get(job.id)
    assert (view.phase, view.progress) == ("train", 0.5)


# the worker, with a child process of its own kind ------------------------------------------
CHILD = """
import os, sys, time
from modelworks.jobs.report import emit
emit(phase="start", progress=0.0, message=str(os.getpid()))
print("hello from the child", flush=True)
print("a warning", file=sys.stderr, flush=True)
for i in range(int(sys.argv[1])):
    time.sleep(0.1)
    emit(phase="work", progress=(i + 1) / int(sys.argv[1]), step=i, metrics={"loss": 1.0 / (i + 1)})
sys.exit(int(sys.argv[2]))
"""


class SleepKind:
    """A job kind whose child counts to `steps` and exits with `exit`."""

    name = "sleep"

    def __init__(self) -> None:
        self.settled: list[tuple[int, str]] = []

    def plan(self, job: JobView, ctx: WorkerContext, workdir: Path) -> Plan:
        steps, code = job.params.get("steps", 3), job.params.get("exit", 0)
        return Plan([sys.executable, "-c", CHILD, str(steps), str(code)], dict(os.environ), 60)

    def finish(
        self, job: JobView, ctx: WorkerContext, plan: Plan
    ) -> tuple[dict[str, Any], Apply | None]:
        return {"steps": job.params.get("steps", 3)}, None

    def failure(
        self, job: JobView, ctx: WorkerContext, plan: Plan, returncode: int, tail: list[str]
    ) -> tuple[str, bool]:
        return f"exit {returncode}: {tail[-1] if tail else ''}", False

    def settle(self, session: Any, job: Any, status: str, error: str) -> None:
        self.settled.append((job.id, status))


@pytest.fixture
def worker_ctx(services: Services, database_url: str) -> WorkerContext:
    services.jobs.lease_s = 6.0
    return services.worker_context()


def test_worker_runs_a_child_and_records_its_events_logs_and_result(
    worker_ctx: WorkerContext, services: Services, pid: int
) -> None:
    job = services.jobs.enqueue(pid, "sleep", {"steps": 3})
    w = Worker(worker_ctx, kinds={"sleep": SleepKind()}, heartbeat_s=0.2)
    assert w.drain(60) == 1
    done = services.jobs.get(job.id)
    assert (done.status, done.result, done.progress) == ("succeeded", {"steps": 3}, 1.0)
    events = services.jobs.events(job.id)
    progress = [e.data for e in events if e.type == "progress"]
    # the worker's own "started" (with the child's pid), then the child's
    assert [p["phase"] for p in progress] == ["started", "start", "work", "work", "work"]
    assert progress[0]["pid"] > 0
    assert progress[-1]["metrics"] == {"loss": pytest.approx(1 / 3)}
    logs = [e.data["line"] for e in events if e.type == "log"]
    assert sorted(logs) == ["a warning", "hello from the child"]


def test_worker_records_a_failing_child(
    worker_ctx: WorkerContext, services: Services, pid: int
) -> None:
    kind = SleepKind()
    job = services.jobs.enqueue(pid, "sleep", {"steps": 1, "exit": 3})
    Worker(worker_ctx, kinds={"sleep": kind}, heartbeat_s=0.2).drain(60)
    failed = services.jobs.get(job.id)
    assert (failed.status, failed.error) == ("failed", "exit 3: a warning")
    assert kind.settled == []  # the queue was built without this kind's settler


def test_a_running_job_is_cancelled_within_seconds(
    worker_ctx: WorkerContext, services: Services, pid: int
) -> None:
    job = services.jobs.enqueue(pid, "sleep", {"steps": 600})  # a minute of work
    w = Worker(worker_ctx, kinds={"sleep": SleepKind()}, heartbeat_s=0.2)
    thread = threading.Thread(target=w.drain, args=(120,))
    thread.start()
    child = _child_pid(services, job.id)
    services.jobs.cancel(job.id, pid)
    asked = time.monotonic()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - asked < 10
    assert services.jobs.get(job.id).status == "cancelled"
    assert not _alive(child), "the child process outlived its cancelled job"


def test_a_stopping_worker_hands_its_job_back(
    worker_ctx: WorkerContext, services: Services, pid: int
) -> None:
    job = services.jobs.enqueue(pid, "sleep", {"steps": 600})
    w = Worker(worker_ctx, kinds={"sleep": SleepKind()}, heartbeat_s=0.2)
    thread = threading.Thread(target=w.run)
    thread.start()
    child = _child_pid(services, job.id)
    w.stop.set()
    thread.join(30)
    back = services.jobs.get(job.id)
    assert (back.status, back.attempts, back.worker) == ("queued", 0, "")
    assert not _alive(child)


def _child_pid(services: Services, job_id: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for e in services.jobs.events(job_id, types=("progress",)):
            if e.data.get("phase") == "start":
                return int(e.data["message"])
        time.sleep(0.05)
    raise AssertionError("the child never reported")


def _alive(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True
