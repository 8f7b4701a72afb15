"""The job queue, kept in the registry database (the pattern of good_job, river, Oban and
solid_queue: no broker beside the database the team already runs).

A worker claims the oldest due job atomically: one guarded `UPDATE … WHERE id = (SELECT …)
RETURNING`, whose inner select takes `FOR UPDATE SKIP LOCKED` on PostgreSQL (racing workers
skip each other's row) and runs under SQLite's write lock (the engine begins every transaction
`IMMEDIATE`). Projects take turns: a project may run at most `per_project` jobs at once, and the
project with the fewest running jobs goes first. The claim comes with a lease the worker renews
by heartbeat; a job whose lease ran out (its worker was killed, its machine lost) is queued
again, or failed once its attempts are spent. A failed attempt that may be retried is queued
again after a back-off that doubles. Cancelling a queued job ends it at once; a running one is
flagged, and its worker sees the flag at its next heartbeat (every few seconds) and stops it.

Every state change is one transaction with the `status` event that records it, and a kind's
`settle` hook (e.g. marking the version an export was for) runs in that same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from modelworks.db.tables import Job, JobEvent, utcnow
from modelworks.errors import Conflict, NotFound

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
LEASE_S = 30.0
BACKOFF_S = 5.0  # the first retry's delay; it doubles per attempt
MAX_BACKOFF_S = 600.0
MAX_LOG_LINE = 4000  # characters of one stored log line
MAX_LOG_LINES = 20_000  # lines stored per job; later ones are counted, not kept
EVENT_PAGE = 500


class Settler(Protocol):
    """A job kind's hook for a final state: runs in the transaction that records it."""

    def settle(self, session: Session, job: Job, status: str, error: str) -> None: ...


@dataclass(frozen=True)
class JobView:
    id: int
    project_id: int
    kind: str
    status: str
    params: dict[str, Any]
    result: dict[str, Any]
    error: str
    attempts: int
    max_attempts: int
    worker: str
    cancel_requested: bool
    progress: float
    phase: str
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_after: float = 0.0
    lease_until: float = 0.0

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            project_id=job.project_id,
            kind=job.kind,
            status=job.status,
            params=dict(job.params or {}),
            result=dict(job.result or {}),
            error=job.error,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            worker=job.worker,
            cancel_requested=job.cancel_requested,
            progress=job.progress,
            phase=job.phase,
            created_by=job.created_by,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            run_after=job.run_after,
            lease_until=job.lease_until,
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class EventView:
    id: int
    job_id: int
    at: datetime
    type: str
    data: dict[str, Any] = field(default_factory=dict)


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 5, 10, 20 ... at most 10 min."""
    return float(min(MAX_BACKOFF_S, BACKOFF_S * 2 ** max(0, attempts - 1)))


class JobQueue:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        settlers: Mapping[str, Settler] | None = None,
        lease_s: float = LEASE_S,
        per_project: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.settlers = dict(settlers or {})
        self.lease_s = lease_s
        self.per_project = per_project
        self.clock = clock

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions.begin() as s:
            yield s

    # asking ------------------------------------------------------------------------------
    def enqueue(
        self,
        project_id: int,
        kind: str,
        params: dict[str, Any],
        *,
        created_by: str = "",
        max_attempts: int = 3,
    ) -> JobView:
        with self._tx() as s:
            return self.add(
                s, project_id, kind, params, created_by=created_by, max_attempts=max_attempts
            )

    def add(
        self,
        s: Session,
        project_id: int,
        kind: str,
        params: dict[str, Any],
        *,
        created_by: str = "",
        max_attempts: int = 3,
    ) -> JobView:
        """Queue a job inside the caller's transaction (e.g. with the version it is for)."""
        job = Job(
            project_id=project_id,
            kind=kind,
            params=params,
            created_by=created_by,
            max_attempts=max_attempts,
            run_after=self.clock(),
        )
        s.add(job)
        s.flush()
        self._event(s, job, "status", {"status": "queued"})
        return JobView.of(job)

    def get(self, job_id: int, project_id: int | None = None) -> JobView:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            if job is None or (project_id is not None and job.project_id != project_id):
                raise NotFound(
                    f"job {job_id} not found; list jobs with `modelworks jobs list`",
                    details={"job": job_id},
                )
            return JobView.of(job)

    def list_jobs(
        self,
        project_id: int,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[JobView]:
        """Newest first; `before` pages on (ids below it)."""
        query = select(Job).where(Job.project_id == project_id)
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if before is not None:
            query = query.where(Job.id < before)
        with self.sessions() as s:
            rows = s.scalars(query.order_by(Job.id.desc()).limit(limit))
            return [JobView.of(j) for j in rows]

    def find(self, kind: str, key: str, value: Any, statuses: tuple[str, ...]) -> list[JobView]:
        """Jobs of `kind` in `statuses` whose params[key] == value (e.g. exports of a version)."""
        with self.sessions() as s:
            rows = s.scalars(select(Job).where(Job.kind == kind, Job.status.in_(statuses)))
            return [JobView.of(j) for j in rows if (j.params or {}).get(key) == value]

    def cancel(self, job_id: int, project_id: int | None = None) -> JobView:
        """Cancel a job: a queued one ends now; a running one is flagged for its worker, which
        stops it at its next heartbeat. A finished job is a 409."""
        with self._tx() as s:
            job = self._locked(s, job_id, project_id)
            if job.status in TERMINAL:
                raise Conflict(
                    f"job {job_id} already {job.status}; only queued or running jobs can be "
                    "cancelled",
                    details={"job": job_id, "status": job.status},
                )
            if job.status == "queued":
                self._finish(s, job, "cancelled", "cancelled before it started")
            elif not job.cancel_requested:
                job.cancel_requested = True
                self._event(s, job, "status", {"status": "running", "cancel_requested": True})
            return JobView.of(job)

    # working -----------------------------------------------------------------------------
    def claim(self, worker: str, kinds: tuple[str, ...] | None = None) -> JobView | None:
        """Take the next due job for `worker`, or None. Expired leases are reaped first."""
        self.reap()
        now = self.clock()
        other = aliased(Job)
        running = (
            select(func.count())
            .select_from(other)
            .where(other.project_id == Job.project_id, other.status == "running")
            .scalar_subquery()
        )
        due = select(Job.id).where(
            Job.status == "queued", Job.run_after <= now, running < self.per_project
        )
        if kinds is not None:
            due = due.where(Job.kind.in_(kinds))
        pick = (
            due.order_by(running, Job.id).limit(1).with_for_update(skip_locked=True)
        ).scalar_subquery()
        with self._tx() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == pick, Job.status == "queued")
                .values(
                    status="running",
                    worker=worker,
                    lease_until=now + self.lease_s,
                    attempts=Job.attempts + 1,
                    started_at=utcnow(),
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            ).scalar_one_or_none()
            if claimed is None:
                return None
            job = s.get(Job, claimed, populate_existing=True)
            assert job is not None
            self._event(
                s, job, "status", {"status": "running", "worker": worker, "attempt": job.attempts}
            )
            return JobView.of(job)

    def heartbeat(self, job_id: int, worker: str) -> str:
        """Renew `worker`'s lease on the job: "running", "cancel" (stop it and call
        `cancelled`) or "lost" (the lease went to another worker or the job ended: stop
        without recording anything)."""
        with self._tx() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status != "running" or job.worker != worker:
                return "lost"
            job.lease_until = self.clock() + self.lease_s
            return "cancel" if job.cancel_requested else "running"

    def report(
        self,
        job_id: int,
        worker: str,
        progress: list[dict[str, Any]] | None = None,
        logs: list[str] | None = None,
    ) -> bool:
        """Append progress events and log lines of a job `worker` holds; False if it does
        not hold it (then nothing is written)."""
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None or job.status != "running" or job.worker != worker:
                return False
            for data in progress or []:
                if "progress" in data:
                    job.progress = float(data["progress"])
                if "phase" in data:
                    job.phase = str(data["phase"])[:64]
                self._event(s, job, "progress", data)
            if logs:
                kept = s.scalar(
                    select(func.count())
                    .select_from(JobEvent)
                    .where(JobEvent.job_id == job.id, JobEvent.type == "log")
                )
                room = max(0, MAX_LOG_LINES - int(kept or 0))
                for line in logs[:room]:
                    self._event(s, job, "log", {"line": line[:MAX_LOG_LINE]})
            return True

    def succeed(
        self,
        job_id: int,
        worker: str,
        result: dict[str, Any],
        apply: Callable[[Session, Job], None] | None = None,
    ) -> bool:
        """Record success, running `apply` (the kind's effect: e.g. the version gets its
        artifact) in the same transaction, only while `worker` still holds the job: a worker
        whose lease expired records nothing, so an effect is recorded exactly once."""
        with self._tx() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status != "running" or job.worker != worker:
                return False
            if apply is not None:
                apply(s, job)
            job.result = result
            job.progress = 1.0
            self._finish(s, job, "succeeded", "")
            return True

    def fail(self, job_id: int, worker: str, error: str, *, retry: bool = True) -> str:
        """Record a failed attempt: queued again after a back-off while attempts are left and
        `retry`, failed otherwise. Returns the job's new status ("lost": not `worker`'s)."""
        with self._tx() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status != "running" or job.worker != worker:
                return "lost"
            if retry and job.attempts < job.max_attempts and not job.cancel_requested:
                self._requeue(s, job, error)
            elif job.cancel_requested:
                self._finish(s, job, "cancelled", "cancelled while running")
            else:
                self._finish(s, job, "failed", error)
            return job.status

    def cancelled(self, job_id: int, worker: str) -> bool:
        """The worker stopped a job whose cancel was requested."""
        with self._tx() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status != "running" or job.worker != worker:
                return False
            self._finish(s, job, "cancelled", "cancelled while running")
            return True

    def release(self, job_id: int, worker: str) -> bool:
        """A worker shutting down hands a running job back: queued again at once, and the
        attempt it had does not count."""
        with self._tx() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status != "running" or job.worker != worker:
                return False
            job.attempts = max(0, job.attempts - 1)
            self._requeue(s, job, "its worker shut down", delay=0.0)
            return True

    def reap(self) -> int:
        """Jobs whose worker's lease ran out: queued again (attempts left), cancelled (a cancel
        was asked) or failed. Returns how many."""
        now = self.clock()
        expired = (
            select(Job.id)
            .where(Job.status == "running", Job.lease_until < now)
            .with_for_update(skip_locked=True)
        )
        count = 0
        with self._tx() as s:
            for job_id in list(s.scalars(expired)):
                job = s.get(Job, job_id)
                assert job is not None
                lost = f"worker {job.worker} stopped renewing its lease (it died or was cut off)"
                if job.cancel_requested:
                    self._finish(s, job, "cancelled", "cancelled; its worker was lost")
                elif job.attempts < job.max_attempts:
                    self._requeue(s, job, lost, delay=0.0)
                else:
                    self._finish(s, job, "failed", f"{lost}; no attempts left")
                count += 1
        return count

    # events ------------------------------------------------------------------------------
    def events(
        self, job_id: int, after: int = 0, limit: int = EVENT_PAGE, types: tuple[str, ...] = ()
    ) -> list[EventView]:
        query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
        if types:
            query = query.where(JobEvent.type.in_(types))
        with self.sessions() as s:
            rows = s.scalars(query.order_by(JobEvent.id).limit(limit))
            return [EventView(e.id, e.job_id, e.at, e.type, dict(e.data or {})) for e in rows]

    # helpers -----------------------------------------------------------------------------
    def _locked(self, s: Session, job_id: int, project_id: int | None) -> Job:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or (project_id is not None and job.project_id != project_id):
            raise NotFound(
                f"job {job_id} not found; list jobs with `modelworks jobs list`",
                details={"job": job_id},
            )
        return job

    def _requeue(self, s: Session, job: Job, error: str, delay: float | None = None) -> None:
        wait = backoff(job.attempts) if delay is None else delay
        job.status = "queued"
        job.worker = ""
        job.lease_until = 0.0
        job.run_after = self.clock() + wait
        job.error = error
        self._event(
            s,
            job,
            "status",
            {"status": "queued", "error": error, "retry_in_s": wait, "attempt": job.attempts},
        )

    def _finish(self, s: Session, job: Job, status: str, error: str) -> None:
        job.status = status
        job.error = error
        job.lease_until = 0.0
        job.finished_at = utcnow()
        settler = self.settlers.get(job.kind)
        if settler is not None:
            settler.settle(s, job, status, error)
        data: dict[str, Any] = {"status": status}
        if error:
            data["error"] = error
        self._event(s, job, "status", data)

    @staticmethod
    def _event(s: Session, job: Job, type_: str, data: dict[str, Any]) -> None:
        s.add(JobEvent(job_id=job.id, type=type_, data=data))
