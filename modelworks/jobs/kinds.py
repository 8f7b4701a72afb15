"""What a job kind is to a worker, and what a worker gives a kind to work with.

A kind plans a child process for a job (the heavy work, where torch may be imported), then
turns a clean exit into a result plus an effect recorded in the same transaction as the job's
success (`apply`), and a failed exit into a message and whether another attempt may help. Its
`settle` hook runs in the transaction of a final failure or cancel (e.g. an export marks its
version failed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from modelworks.db.tables import Job
    from modelworks.jobs.queue import JobQueue, JobView
    from modelworks.settings import Settings
    from modelworks.store import ArtifactStore

Apply = Callable[["Session", "Job"], None]


@dataclass
class Plan:
    """The child process a job runs: its command, environment, and how long it may take;
    `state` is the kind's own (e.g. where the child writes its output)."""

    argv: list[str]
    env: dict[str, str]
    timeout_s: float
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    queue: JobQueue
    # told (project id, model name) after a job changed a model, so an in-process server
    # sees it at once; other processes see it within the serving engine's resolve TTL
    changed: Callable[[int, str], None] | None = None


class JobKind(Protocol):
    name: str

    def plan(self, job: JobView, ctx: WorkerContext, workdir: Path) -> Plan: ...

    def finish(
        self, job: JobView, ctx: WorkerContext, plan: Plan
    ) -> tuple[dict[str, Any], Apply | None]: ...

    def failure(
        self, job: JobView, ctx: WorkerContext, plan: Plan, returncode: int, tail: list[str]
    ) -> tuple[str, bool]: ...

    def settle(self, session: Session, job: Job, status: str, error: str) -> None: ...


def job_queue(sessions: sessionmaker[Session], settings: Settings) -> JobQueue:
    """The queue as `settings` configure it, with every kind's settle hook."""
    from modelworks.jobs.queue import JobQueue

    return JobQueue(sessions, settlers=registered(), lease_s=settings.job_lease_s)


def registered() -> dict[str, JobKind]:
    """Every job kind this installation runs, by name."""
    from modelworks.jobs.export import ExportKind
    from modelworks.jobs.train import TrainKind

    kinds: list[JobKind] = [ExportKind(), TrainKind()]
    return {k.name: k for k in kinds}
