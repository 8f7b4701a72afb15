"""The services one app instance runs on, built from settings and passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from modelworks.auth.audit import AuditLog
from modelworks.auth.keys import KeyService
from modelworks.db import make_engine, make_sessionmaker
from modelworks.registry import Registry
from modelworks.serving.batcher import BatchSettings
from modelworks.serving.pool import ModelPool
from modelworks.settings import Settings
from modelworks.store import ArtifactStore


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    registry: Registry
    keys: KeyService
    audit: AuditLog
    pool: ModelPool
    default_project_id: int

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = make_engine(settings.resolved_database_url)
        sessions = make_sessionmaker(engine)
        store = ArtifactStore(settings.resolved_store_url, scratch=settings.home / "tmp")
        registry = Registry(sessions, store)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            store=store,
            registry=registry,
            keys=KeyService(sessions),
            audit=AuditLog(sessions),
            pool=ModelPool(
                store,
                threads=settings.inference_threads,
                batching=BatchSettings(
                    max_batch_size=settings.batch_max_size,
                    max_delay_ms=settings.batch_max_delay_ms,
                    max_queue=settings.queue_size,
                    timeout_s=settings.request_timeout_s,
                ),
            ),
            default_project_id=registry.project_id("default"),
        )

    def close(self) -> None:
        self.engine.dispose()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
