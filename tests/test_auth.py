"""API keys: shown once, stored hashed, revocable; roles; failures audited."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from modelworks.api.services import Services
from modelworks.client import Client
from modelworks.db.tables import ApiKey
from modelworks.errors import Forbidden, ModelworksError, Unauthorized
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx


def _as(transport: SyncASGITransport, key: str) -> Client:
    return Client("http://testserver", key, transport=transport)


@pytest.mark.parametrize("header", [None, "Bearer mw_" + "A" * 43, "Basic abc", "Bearer ", "mw_x"])
def test_missing_or_bad_key_is_401(anon: httpx.Client, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/keys"),
        ("GET", "/v2"),
        ("POST", "/v2/models/m/infer"),
        ("GET", "/v2/models/m"),
    ]:
        r = anon.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"


def test_health_needs_no_key(anon: httpx.Client) -> None:
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert anon.get(path).status_code == 200


def test_key_lifecycle(client: Client, transport: SyncASGITransport, services: Services) -> None:
    created = client.create_key(role="developer", name="ci pipeline")
    secret = created["key"]
    assert secret.startswith("mw_") and len(secret) >= 35
    assert created["prefix"] == secret[:12]
    # stored as a hash only
    with services.sessions() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.id == created["id"]))
    assert row is not None and secret not in (row.secret_hash, row.prefix)
    # the secret is never listed again
    listed = client.list_keys()
    assert all("key" not in k for k in listed)
    assert created["id"] in [k["id"] for k in listed]
    dev = _as(transport, secret)
    assert dev.list_models() == []
    client.revoke_key(created["id"])
    with pytest.raises(Unauthorized, match="revoked"):
        dev.list_models()


def test_expired_key_is_401(
    client: Client, transport: SyncASGITransport, services: Services
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)  # the API refuses it: made directly
    _, secret = services.keys.create(
        project_id=services.default_project_id, role="developer", expires_at=past
    )
    with pytest.raises(Unauthorized, match="expired"):
        _as(transport, secret).list_models()


def test_a_key_dead_at_birth_is_refused(client: Client) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with pytest.raises(ModelworksError, match="in the past") as caught:
        client.create_key(role="developer", expires_at=past)
    assert caught.value.status == 422


def test_roles(client: Client, transport: SyncASGITransport, tmp_path: Path) -> None:
    client.create_model("m")
    client.push("m", linear_onnx(tmp_path / "m.onnx"))
    invoker = _as(transport, client.create_key(role="invoker")["key"])
    viewer = _as(transport, client.create_key(role="viewer")["key"])
    developer = _as(transport, client.create_key(role="developer")["key"])
    assert invoker.infer("m", {"x": [[1, 2, 3, 4]]})["y"].shape == (1, 2)
    with pytest.raises(Forbidden):
        invoker.push("m", tmp_path / "m.onnx")
    with pytest.raises(Forbidden):
        invoker.create_key(role="invoker")
    with pytest.raises(Forbidden):
        viewer.infer("m", {"x": [[1, 2, 3, 4]]}, signature={"inputs": []})
    assert viewer.get_model("m")["name"] == "m"
    with pytest.raises(Forbidden):
        viewer.create_model("n")
    developer.push("m", tmp_path / "m.onnx")
    with pytest.raises(Forbidden):
        developer.create_key()


def test_only_admin_mints_admin_keys(client: Client, transport: SyncASGITransport) -> None:
    owner = _as(transport, client.create_key(role="owner")["key"])
    assert owner.create_key(role="invoker")["role"] == "invoker"
    with pytest.raises(Forbidden):
        owner.create_key(role="admin")


def test_unknown_role_is_422(http: httpx.Client) -> None:
    r = http.post("/api/v1/keys", json={"role": "god"})
    assert r.status_code == 422
    assert "admin, owner, developer, viewer, invoker" in r.json()["error"]["message"]


def test_auth_failures_are_audited(anon: httpx.Client, services: Services) -> None:
    anon.get("/api/v1/models", headers={"Authorization": "Bearer mw_" + "B" * 43})
    events = [e for e in services.audit.list() if e.action == "auth.failure"]
    assert events and events[0].outcome == "denied"
    assert events[0].actor == ""  # nothing of a rejected credential, not even its prefix
    assert "BBB" not in str(events[0].details) + events[0].target


def test_bootstrap_admin_only_once(services: Services) -> None:
    first = services.keys.bootstrap_admin()
    assert first is not None
    assert services.keys.bootstrap_admin() is None


def test_auth_off_lets_anyone_in(tmp_path: Path) -> None:
    from modelworks.api.app import create_app
    from modelworks.db import upgrade
    from modelworks.settings import Settings

    s = Settings(home=tmp_path, auth=False, allowed_hosts="testserver")
    upgrade(s.resolved_database_url)
    t = SyncASGITransport(create_app(s))
    try:
        with httpx.Client(transport=t, base_url="http://testserver") as c:
            assert c.get("/api/v1/models").status_code == 200
    finally:
        t.close()


# last use of a key ------------------------------------------------------------------------------
def _last_used(services: Services, key_id: int) -> datetime | None:
    with services.sessions() as s:
        used = s.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
    return used.replace(tzinfo=used.tzinfo or UTC) if used is not None else None


def test_a_key_use_is_recorded_at_the_next_flush(
    database_url: str, client: Client, transport: SyncASGITransport, services: Services
) -> None:
    services.keys.flush_s = 3600.0  # only the flushes this test makes
    created = client.create_key(role="viewer", name="dashboard")
    assert created["last_used_at"] is None
    before = datetime.now(UTC)
    _as(transport, created["key"]).list_models()
    assert _last_used(services, created["id"]) is None, "nothing is written on the request path"

    services.keys.flush_uses()

    used = _last_used(services, created["id"])
    assert used is not None and before <= used <= datetime.now(UTC)
    listed = {k["id"]: k for k in client.list_keys()}
    assert datetime.fromisoformat(listed[created["id"]]["last_used_at"]) == used


def test_many_requests_write_the_last_uses_once(
    database_url: str, client: Client, transport: SyncASGITransport, services: Services
) -> None:
    services.keys.flush_s = 3600.0
    keys = [client.create_key(role="viewer", name=f"k{i}") for i in range(2)]
    services.keys.flush_uses()  # the admin key's own use, so far
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(services.engine, "before_cursor_execute", seen)
    try:
        for k in keys:
            caller = _as(transport, k["key"])
            for _ in range(20):
                caller.list_models()
        services.keys.flush_uses()
    finally:
        event.remove(services.engine, "before_cursor_execute", seen)

    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE API_KEYS")]
    assert len(updates) == 1, updates
    assert all(_last_used(services, k["id"]) is not None for k in keys)


def test_key_uses_are_written_by_themselves_and_at_shutdown(
    client: Client, transport: SyncASGITransport, services: Services
) -> None:
    services.keys.flush_s = 0.05
    created = client.create_key(role="viewer")
    _as(transport, created["key"]).list_models()
    deadline = time.monotonic() + 10
    while _last_used(services, created["id"]) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _last_used(services, created["id"]) is not None, "no flush came within 10 s"

    services.keys.flush_s = 3600.0
    later = client.create_key(role="viewer")
    _as(transport, later["key"]).list_models()
    services.close()  # as the server's shutdown does
    assert _last_used(services, later["id"]) is not None
