"""The services one app instance runs on, built from settings and passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from modelworks.auth.audit import AuditLog
from modelworks.auth.keys import KeyService
from modelworks.auth.limits import FailureThrottle, Limiter, make_backend
from modelworks.auth.usage import UsageMeter
from modelworks.db import make_engine, make_sessionmaker
from modelworks.jobs.kinds import WorkerContext, job_queue
from modelworks.jobs.queue import JobQueue
from modelworks.registry import Registry
from modelworks.registry.datasets import Datasets
from modelworks.runtimes.onnx import cap_memory
from modelworks.serving.engine import Engine as ServingEngine
from modelworks.serving.pool import ModelPool
from modelworks.settings import Settings
from modelworks.store import ArtifactStore

MIB = 1024 * 1024


@dataclass
class Services:
    settings: Settings
    engine: DbEngine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    registry: Registry
    datasets: Datasets
    keys: KeyService
    audit: AuditLog
    pool: ModelPool
    serving: ServingEngine
    jobs: JobQueue
    limiter: Limiter
    auth_failures: FailureThrottle
    usage: UsageMeter
    default_project_id: int

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = make_engine(settings.resolved_database_url)
        sessions = make_sessionmaker(engine)
        store = ArtifactStore.from_settings(settings)
        jobs = job_queue(sessions, settings)
        registry = Registry(sessions, store)
        # one arena for every ONNX Runtime session of this process: runs past it are 413
        cap_memory(settings.inference_memory_mb * MIB, settings.memory_budget_mb * MIB)
        pool = ModelPool(
            store,
            threads=settings.inference_threads,
            memory_budget_bytes=settings.memory_budget_mb * 1024 * 1024,
            queue_size=settings.queue_size,
            timeout_s=settings.request_timeout_s,
            max_response_bytes=settings.max_response_bytes,
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            store=store,
            registry=registry,
            datasets=Datasets(sessions, store, registry.collect),
            keys=KeyService(sessions),
            audit=AuditLog(sessions),
            pool=pool,
            serving=ServingEngine(registry, pool),
            jobs=jobs,
            limiter=Limiter(make_backend(settings.limits_url)),
            auth_failures=FailureThrottle(settings.auth_failures_per_minute),
            usage=UsageMeter(sessions),
            default_project_id=registry.project_id("default"),
        )

    def worker_context(self) -> WorkerContext:
        """For a worker in this process (the demo, tests): told of model changes at once."""
        return WorkerContext(
            self.settings, self.sessions, self.store, self.jobs, self.registry.notify
        )

    def run_jobs(self, timeout_s: float = 600.0) -> int:
        """Run every due job here and now, in child processes as a worker does."""
        from modelworks.jobs.worker import Worker

        return Worker(self.worker_context(), poll_s=0.1).drain(timeout_s)

    def close(self) -> None:
        self.keys.close()  # the keys' last uses not written yet
        self.engine.dispose()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
