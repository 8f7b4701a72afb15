"""SECURITY.md class 13: privilege inside a tenant.

A key sees and acts only on keys no wider than itself: role (an owner never reaches an admin
key), model allowlist (an unrestricted key is wider than any restricted one), expiry (a key
that expires never reaches one that outlives it) and limits. A wider key reads, and is
revoked, exactly as a missing one (404). A model allowlist limits management reads (audit,
keys) as it limits inference, and a model-limited key may not change project settings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.models import linear_onnx

UNKNOWN_ID = 987_654


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def mint(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/api/v1/keys", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def as_missing(anon: httpx.Client, secret: str, key_id: int) -> None:
    """GET and DELETE of `key_id` answer exactly as for an id that never existed."""
    for method in ("GET", "DELETE"):
        theirs = anon.request(method, f"/api/v1/keys/{key_id}", headers=bearer(secret))
        never = anon.request(method, f"/api/v1/keys/{UNKNOWN_ID}", headers=bearer(secret))
        assert theirs.status_code == never.status_code == 404, (method, theirs.text)
        seen = theirs.json()["error"]["message"].replace(str(key_id), "N")
        assert seen == never.json()["error"]["message"].replace(str(UNKNOWN_ID), "N")


def listed(anon: httpx.Client, secret: str) -> set[int]:
    r = anon.get("/api/v1/keys", headers=bearer(secret))
    assert r.status_code == 200, r.text
    return {k["id"] for k in r.json()}


def still_works(anon: httpx.Client, secret: str) -> None:
    """The key is not revoked: it authenticates (its role may still refuse the read)."""
    assert anon.get("/api/v1/projects", headers=bearer(secret)).status_code in (200, 403)


def test_an_owner_never_sees_or_touches_admin_keys(
    http: httpx.Client, anon: httpx.Client, admin_key: str
) -> None:
    """The default project is where the admin keys live; its owner manages the rest only."""
    other_admin = mint(http, role="admin", name="second admin")
    owner = mint(http, role="owner")
    peer = mint(http, role="owner")
    dev = mint(http, role="developer")
    admin_ids = {k["id"] for k in http.get("/api/v1/keys").json() if k["role"] == "admin"}
    assert len(admin_ids) == 2 and other_admin["id"] in admin_ids

    assert listed(anon, owner["key"]) == {owner["id"], peer["id"], dev["id"]}
    for key_id in admin_ids:
        as_missing(anon, owner["key"], key_id)
    still_works(anon, admin_key)
    still_works(anon, other_admin["key"])
    # an owner's own rank is in reach: it may revoke a fellow owner
    assert anon.delete(f"/api/v1/keys/{peer['id']}", headers=bearer(owner["key"])).is_success
    # the admin still sees every key of its project
    assert {owner["id"], peer["id"], dev["id"]} | admin_ids <= listed(anon, admin_key)


def test_a_model_limited_key_reaches_only_keys_within_its_allowlist(
    http: httpx.Client, anon: httpx.Client
) -> None:
    owner_m1 = mint(http, role="owner", models=["m1"])
    inside = [mint(http, role="developer", models=["m1"]), mint(http, role="invoker", models=[])]
    wider = [
        mint(http, role="developer"),  # unrestricted: wider than any allowlist
        mint(http, role="owner"),
        mint(http, role="invoker", models=["m1", "m2"]),
        mint(http, role="viewer", models=["m2"]),
    ]
    mine = listed(anon, owner_m1["key"])
    assert mine == {owner_m1["id"], *(k["id"] for k in inside)}
    for k in wider:
        as_missing(anon, owner_m1["key"], k["id"])
        still_works(anon, k["key"])
    r = anon.delete(f"/api/v1/keys/{inside[0]['id']}", headers=bearer(owner_m1["key"]))
    assert r.status_code == 200 and r.json()["revoked_at"]


def test_a_key_that_expires_never_reaches_one_that_outlives_it(
    http: httpx.Client, anon: httpx.Client
) -> None:
    now = datetime.now(UTC)
    owner = mint(http, role="owner", expires_at=(now + timedelta(hours=2)).isoformat())
    sooner = mint(http, role="developer", expires_at=(now + timedelta(hours=1)).isoformat())
    later = mint(http, role="developer", expires_at=(now + timedelta(days=30)).isoformat())
    never = mint(http, role="developer")
    assert listed(anon, owner["key"]) == {owner["id"], sooner["id"]}
    for k in (later, never):
        as_missing(anon, owner["key"], k["id"])
        still_works(anon, k["key"])


def test_a_limited_key_never_reaches_a_less_limited_one(
    http: httpx.Client, anon: httpx.Client
) -> None:
    owner = mint(http, role="owner", rate_limit=50, quota={"items": 1000})
    within = mint(http, role="invoker", rate_limit=5, quota={"items": 10, "requests": 9})
    faster = mint(http, role="invoker", rate_limit=500, quota={"items": 10})
    more_items = mint(http, role="invoker", rate_limit=5, quota={"items": 100_000})
    unlimited = mint(http, role="developer")
    assert listed(anon, owner["key"]) == {owner["id"], within["id"]}
    for k in (faster, more_items, unlimited):
        as_missing(anon, owner["key"], k["id"])
    still_works(anon, unlimited["key"])


def test_a_model_limited_key_cannot_change_project_settings(
    http: httpx.Client, anon: httpx.Client
) -> None:
    assert http.post("/api/v1/projects", json={"name": "plant-b", "rate_limit": 5}).is_success
    limited = mint(http, role="owner", project="plant-b", models=["m1"])
    for change in ({"rate_limit": None}, {"rate_limit": 1}, {"description": "mine now"}):
        r = anon.patch("/api/v1/projects/plant-b", json=change, headers=bearer(limited["key"]))
        assert r.status_code == 403, r.text
        assert "limited to some models" in r.json()["error"]["message"]
    project = http.get("/api/v1/projects/plant-b").json()
    assert (project["rate_limit"], project["description"]) == (5, "")
    # a key of the same project without an allowlist may
    owner = mint(http, role="owner", project="plant-b")
    r = anon.patch(
        "/api/v1/projects/plant-b", json={"description": "stamping"}, headers=bearer(owner["key"])
    )
    assert r.status_code == 200 and r.json()["description"] == "stamping"


@pytest.fixture
def two_models(http: httpx.Client, tmp_path: Path) -> None:
    onnx = linear_onnx(tmp_path / "m.onnx")
    for name in ("m1", "m2", "m1x"):
        assert http.post("/api/v1/models", json={"name": name}).status_code == 201
        with onnx.open("rb") as fh:
            r = http.post(f"/api/v1/models/{name}/versions", files={"file": ("m.onnx", fh)})
        assert r.status_code == 201, r.text
        r = http.put(f"/api/v1/models/{name}/aliases/prod", json={"version": 1, "warm": False})
        assert r.status_code == 200, r.text


def test_a_model_limited_key_reads_audit_events_of_its_models_only(
    http: httpx.Client, anon: httpx.Client, two_models: None
) -> None:
    limited = mint(http, role="owner", models=["m1"])
    minted = anon.post("/api/v1/keys", json={"role": "invoker"}, headers=bearer(limited["key"]))
    assert minted.status_code == 201
    r = anon.get("/api/v1/audit", params={"limit": 1000}, headers=bearer(limited["key"]))
    assert r.status_code == 200, r.text
    seen = {(e["action"], e["target"]) for e in r.json()}
    assert {
        ("model.create", "m1"),
        ("version.upload", "m1:1"),
        ("alias.set", "m1:prod"),
        ("key.create", limited["prefix"]),  # its own creation
        ("key.create", minted.json()["prefix"]),  # its own action
    } <= seen
    leaked = {t for _, t in seen if t.split(":")[0] in ("m2", "m1x")}
    assert leaked == set(), leaked
    # other keys' creations (the admin's, the unrestricted ones) are not its business
    assert all(
        e["actor"] == limited["prefix"]
        or e["target"].split(":")[0] == "m1"
        or e["target"] == limited["prefix"]
        for e in r.json()
    )
    # filters narrow within what it may see, never beyond
    only = anon.get(
        "/api/v1/audit", params={"action": "model.create"}, headers=bearer(limited["key"])
    )
    assert [e["target"] for e in only.json()] == ["m1"]
    # the unrestricted view still has everything
    every = {e["target"] for e in http.get("/api/v1/audit", params={"limit": 1000}).json()}
    assert {"m1", "m2", "m1x"} <= every
