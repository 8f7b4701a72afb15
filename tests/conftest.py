"""Shared fixtures: a fresh home per test, the app, the real SDK over an in-process transport,
and a live uvicorn server for tests that need real sockets (tritonclient, the CLI)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.client import Client
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport

POSTGRES_URL = os.environ.get("MODELWORKS_TEST_DATABASE_URL", "")


def _postgres_schema_url(base: str) -> Iterator[str]:
    """A throwaway schema per test, so tests never see each other's rows."""
    import sqlalchemy as sa

    schema = f"mw_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Each test gets the environment it started with back: `modelworks serve` run in-process
    sets process-wide switches (HF_HUB_OFFLINE, cache folders) that must not reach the
    subprocesses of later tests (the README's clients run in one)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Registry tests run once on SQLite and once on PostgreSQL (when configured)."""
    if request.param == "sqlite":
        yield ""
        return
    if not POSTGRES_URL:
        pytest.skip("set MODELWORKS_TEST_DATABASE_URL to run the PostgreSQL tests")
    yield from _postgres_schema_url(POSTGRES_URL)


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    url = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else ""
    # 1 MiB keeps the size-cap tests cheap; a module that uploads real models sets its own
    cap = getattr(request.module, "MAX_UPLOAD_BYTES", 1024 * 1024)
    s = Settings(
        home=tmp_path / "home",
        database_url=url,
        max_upload_bytes=cap,
        allowed_hosts="testserver,127.0.0.1,localhost",
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = Services.build(settings)
    yield svc
    svc.close()


@pytest.fixture
def admin_key(services: Services) -> str:
    secret = services.keys.bootstrap_admin()
    assert secret is not None
    return secret


@pytest.fixture
def app(settings: Settings, services: Services) -> FastAPI:
    return create_app(settings, services)


@pytest.fixture
def transport(app: FastAPI) -> Iterator[SyncASGITransport]:
    t = SyncASGITransport(app)
    yield t
    t.close()


@pytest.fixture
def http(transport: SyncASGITransport, admin_key: str) -> Iterator[httpx.Client]:
    """Raw HTTP against the in-process app, authenticated as admin."""
    with httpx.Client(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as c:
        yield c


@pytest.fixture
def anon(transport: SyncASGITransport) -> Iterator[httpx.Client]:
    """Raw HTTP with no credentials."""
    with httpx.Client(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def client(transport: SyncASGITransport, admin_key: str) -> Iterator[Client]:
    """The real SDK, over the in-process transport."""
    with Client("http://testserver", admin_key, transport=transport) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
                proxy_headers=False,  # as `modelworks serve` without MODELWORKS_TRUSTED_PROXIES
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    """The app on a real loopback socket (uvicorn in a thread)."""
    with LiveServer(app) as server:
        yield server
