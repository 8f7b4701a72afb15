"""API keys: shown once, stored hashed, revocable; roles; failures audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

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
