"""SECURITY.md class 10: tenant isolation and leaks.

Project B's model, seen with project A's keys, is exactly as missing as a model that does not
exist, on every route and protocol (management, OIP v2, TF-Serving, OpenAI, Hugging Face):
same status, same body. Roles hold (an invoker neither uploads nor mints keys), revoked and
expired keys are refused, logs never hold a key's secret or a payload, and error bodies never
hold server paths or another project's name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelworks.api.services import Services
from modelworks.names import ProjectName
from modelworks.settings import Settings
from tests.models import linear_onnx

ALPHA = "tenant-alpha-3f9"
BRAVO = "tenant-bravo-7c1"
TARGET = "forecast"  # project B's model
OWN = "alpha-model"  # project A's model
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
PAYLOAD_MARKER = "payload-marker-5d1e"
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
TMP_CHILDREN = {"home", "m.onnx"}


@dataclass
class Tenants:
    keys: dict[str, str]  # label -> secret
    ids: dict[str, int]  # label -> key id
    onnx: bytes


@pytest.fixture(autouse=True)
def nothing_outside_the_store(settings: Settings, tmp_path: Path) -> Iterator[None]:
    """After each test: the home holds only the database and the store, and the test's folder
    only the files the test itself wrote."""
    yield
    assert {p.name for p in settings.home.iterdir()} <= HOME_CHILDREN
    assert {p.name for p in tmp_path.iterdir()} <= TMP_CHILDREN


def as_key(client: httpx.Client, secret: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return client.request(method, path, headers={"Authorization": f"Bearer {secret}"}, **kw)


@pytest.fixture
def tenants(http: httpx.Client, tmp_path: Path) -> Tenants:
    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    for project in (ALPHA, BRAVO):
        assert http.post("/api/v1/projects", json={"name": project}).status_code == 201
    for project, model in ((ALPHA, OWN), (BRAVO, TARGET)):
        q = {"project": project}
        assert http.post("/api/v1/models", params=q, json={"name": model}).status_code == 201
        r = http.post(f"/api/v1/models/{model}/versions", params=q, files={"file": ("m", onnx)})
        assert r.status_code == 201, r.text
        alias = {"version": 1, "warm": False}
        assert http.put(f"/api/v1/models/{model}/aliases/production", params=q, json=alias)
    keys, ids = {}, {}
    for label, project, role in (
        ("a-owner", ALPHA, "owner"),
        ("a-developer", ALPHA, "developer"),
        ("a-viewer", ALPHA, "viewer"),
        ("a-invoker", ALPHA, "invoker"),
        ("b-owner", BRAVO, "owner"),
    ):
        r = http.post("/api/v1/keys", json={"project": project, "role": role, "name": label})
        assert r.status_code == 201, r.text
        keys[label], ids[label] = r.json()["key"], r.json()["id"]
    return Tenants(keys, ids, onnx)


def probes(t: Tenants) -> list[tuple[str, str, dict[str, Any]]]:
    """Every way to read, call, alias, change or delete a model, on every protocol."""
    m = TARGET
    return [
        ("GET", f"/api/v1/models/{m}", {}),
        ("GET", f"/api/v1/models/{m}/versions", {}),
        ("GET", f"/api/v1/models/{m}/versions/1", {}),
        ("PATCH", f"/api/v1/models/{m}", {"json": {"description": "pwned"}}),
        ("PUT", f"/api/v1/models/{m}/aliases/stolen", {"json": {"version": 1, "warm": False}}),
        ("PUT", f"/api/v1/models/{m}/aliases/production", {"json": {"version": 1}}),
        ("DELETE", f"/api/v1/models/{m}/aliases/production", {}),
        ("POST", f"/api/v1/models/{m}/versions", {"files": {"file": ("m.onnx", t.onnx)}}),
        ("DELETE", f"/api/v1/models/{m}", {}),
        ("GET", f"/v2/models/{m}", {}),
        ("GET", f"/v2/models/{m}/ready", {}),
        ("GET", f"/v2/models/{m}/versions/1", {}),
        ("POST", f"/v2/models/{m}/infer", {"json": INFER}),
        ("POST", f"/v2/models/{m}:production/infer", {"json": INFER}),
        ("POST", f"/v2/models/{m}/versions/1/infer", {"json": INFER}),
        ("GET", f"/v1/models/{m}", {}),
        ("GET", f"/v1/models/{m}/metadata", {}),
        ("GET", f"/v1/models/{m}/versions/1", {}),
        ("GET", f"/v1/models/{m}/labels/production/metadata", {}),
        ("POST", f"/v1/models/{m}:predict", {"json": {"instances": [[1, 2, 3, 4]]}}),
        ("POST", f"/v1/models/{m}/versions/1:predict", {"json": {"instances": [[1, 2, 3, 4]]}}),
        ("POST", f"/v1/models/{m}/labels/production:predict", {"json": {"inputs": [[1, 2, 3, 4]]}}),
        ("POST", "/v1/embeddings", {"json": {"model": m, "input": "hello"}}),
        ("POST", f"/models/{m}", {"json": {"inputs": "hello"}}),
    ]


def seen(r: httpx.Response) -> tuple[int, Any, str]:
    """What a client can observe, less the per-request id."""
    try:
        body = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body["error"].pop("request_id", None)
    return r.status_code, body, r.headers.get("content-type", "")


@pytest.mark.parametrize("label", ["a-owner", "a-developer", "a-invoker"])
def test_another_projects_model_looks_exactly_missing(
    http: httpx.Client, anon: httpx.Client, tenants: Tenants, tmp_path: Path, label: str
) -> None:
    secret = tenants.keys[label]
    calls = probes(tenants)

    while_it_exists = [seen(as_key(anon, secret, m, p, **kw)) for m, p, kw in calls]
    # B's model really is there, untouched
    detail = http.get(f"/api/v1/models/{TARGET}", params={"project": BRAVO}).json()
    assert (detail["versions"], detail["aliases"], detail["description"]) == (
        1,
        {"production": 1},
        "",
    )
    assert http.delete(f"/api/v1/models/{TARGET}", params={"project": BRAVO}).is_success
    once_missing = [seen(as_key(anon, secret, m, p, **kw)) for m, p, kw in calls]

    statuses = {status for status, _, _ in while_it_exists}
    assert statuses <= {403, 404}, statuses  # forbidden for the role, or missing: never found
    for call, exists, missing in zip(calls, while_it_exists, once_missing, strict=True):
        assert exists == missing, call[:2]
        assert BRAVO not in str(exists) and str(tmp_path) not in str(exists)
    assert http.get("/livez").status_code == 200


def test_listings_and_project_scopes_stop_at_the_project(
    http: httpx.Client, anon: httpx.Client, tenants: Tenants
) -> None:
    owner = tenants.keys["a-owner"]

    def get(path: str, **kw: Any) -> httpx.Response:
        return as_key(anon, owner, "GET", path, **kw)

    assert [m["name"] for m in get("/api/v1/models").json()] == [OWN]
    assert [m["id"] for m in get("/v1/models").json()["data"]] == [OWN]
    assert [p["name"] for p in get("/api/v1/projects").json()] == [ALPHA]
    assert {k["project"] for k in get("/api/v1/keys").json()} == {ALPHA}
    assert TARGET not in get("/api/v1/audit").text and BRAVO not in get("/api/v1/audit").text
    assert BRAVO not in get("/api/v1/usage").text

    # naming project B, or a project that does not exist, reads the same
    for method, path, kw in (
        ("GET", "/api/v1/projects/{p}", {}),
        ("PATCH", "/api/v1/projects/{p}", {"json": {"description": "pwned"}}),
        ("DELETE", "/api/v1/projects/{p}", {}),
        ("GET", "/api/v1/models", {"params": {"project": "{p}"}}),
        ("GET", "/v2/models/forecast", {"params": {"project": "{p}"}}),
        ("POST", "/api/v1/keys", {"json": {"project": "{p}", "role": "owner"}}),
    ):
        results = []
        for project in (BRAVO, "tenant-none-000"):
            fill = {k: {a: b.replace("{p}", project) for a, b in v.items()} for k, v in kw.items()}
            r = as_key(anon, owner, method, path.replace("{p}", project), **fill)
            results.append(seen(r))
        (s1, b1, _), (s2, b2, _) = results
        assert s1 == s2 and s1 in (403, 404), (method, path, results)
        assert str(b1).replace(BRAVO, "tenant-none-000") == str(b2), (method, path)

    # a key of project B, revoked by id from project A: as missing as an id that never was
    unknown = max(tenants.ids.values()) + 1000
    mine = as_key(anon, owner, "DELETE", f"/api/v1/keys/{tenants.ids['b-owner']}")
    never = as_key(anon, owner, "DELETE", f"/api/v1/keys/{unknown}")
    assert mine.status_code == never.status_code == 404
    assert mine.json()["error"]["message"].replace(str(tenants.ids["b-owner"]), "N") == (
        never.json()["error"]["message"].replace(str(unknown), "N")
    )
    b = tenants.keys["b-owner"]
    assert as_key(anon, b, "GET", f"/api/v1/models/{TARGET}").status_code == 200
    assert http.get("/livez").status_code == 200


# roles ------------------------------------------------------------------------------------------
ROLE_CASES = {
    "invoker-uploads": ("a-invoker", "POST", f"/api/v1/models/{OWN}/versions", "upload"),
    "invoker-mints-key": ("a-invoker", "POST", "/api/v1/keys", {"role": "invoker"}),
    "invoker-creates-model": ("a-invoker", "POST", "/api/v1/models", {"name": "x"}),
    "invoker-deletes-model": ("a-invoker", "DELETE", f"/api/v1/models/{OWN}", None),
    "invoker-moves-alias": (
        "a-invoker",
        "PUT",
        f"/api/v1/models/{OWN}/aliases/production",
        {"version": 1, "warm": False},
    ),
    "invoker-revokes-key": ("a-invoker", "DELETE", "/api/v1/keys/{a-owner}", None),
    "viewer-infers": ("a-viewer", "POST", f"/v2/models/{OWN}/infer", INFER),
    "viewer-uploads": ("a-viewer", "POST", f"/api/v1/models/{OWN}/versions", "upload"),
    "developer-mints-key": ("a-developer", "POST", "/api/v1/keys", {"role": "viewer"}),
    "owner-mints-admin": ("a-owner", "POST", "/api/v1/keys", {"role": "admin"}),
    "owner-creates-project": ("a-owner", "POST", "/api/v1/projects", {"name": "x"}),
}


def state(anon: httpx.Client, owner: str) -> list[Any]:
    """The project's models and keys, but when each key was last used (a refused call is a use)."""
    models = as_key(anon, owner, "GET", "/api/v1/models").json()
    keys = as_key(anon, owner, "GET", "/api/v1/keys").json()
    return [models, [{k: v for k, v in key.items() if k != "last_used_at"} for key in keys]]


@pytest.mark.parametrize("case", sorted(ROLE_CASES))
def test_roles_are_enforced(
    http: httpx.Client, anon: httpx.Client, tenants: Tenants, case: str
) -> None:
    label, method, path, body = ROLE_CASES[case]
    path = path.replace("{a-owner}", str(tenants.ids["a-owner"]))
    kw: dict[str, Any] = {"json": body} if isinstance(body, dict) else {}
    if body == "upload":
        kw = {"files": {"file": ("m.onnx", tenants.onnx)}}
    owner = tenants.keys["a-owner"]
    before = state(anon, owner)

    r = as_key(anon, tenants.keys[label], method, path, **kw)

    assert r.status_code == 403, r.text
    error = r.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "role" in message or "admin key" in message, message
    assert state(anon, owner) == before
    assert http.get("/livez").status_code == 200


# revoked and expired keys -----------------------------------------------------------------------
KEY_ROUTES = [
    ("GET", f"/api/v1/models/{OWN}", {}),
    ("POST", f"/v2/models/{OWN}/infer", {"json": INFER}),
    ("POST", f"/v1/models/{OWN}:predict", {"json": {"instances": [[1, 2, 3, 4]]}}),
    ("GET", "/v1/models", {}),
]


def test_revoked_key_is_401_at_once(
    http: httpx.Client, anon: httpx.Client, tenants: Tenants
) -> None:
    secret = tenants.keys["a-developer"]
    for method, path, kw in KEY_ROUTES:  # used, so the server has it cached
        assert as_key(anon, secret, method, path, **kw).status_code == 200

    revoked = http.delete(f"/api/v1/keys/{tenants.ids['a-developer']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]

    for method, path, kw in KEY_ROUTES:
        r = as_key(anon, secret, method, path, **kw)
        assert r.status_code == 401, (path, r.text)
        assert "revoked" in r.text
    assert as_key(anon, tenants.keys["a-owner"], "GET", "/api/v1/models").status_code == 200


@pytest.mark.parametrize("already", [True, False], ids=["expired", "expires-while-cached"])
def test_expired_key_is_401(
    http: httpx.Client, anon: httpx.Client, tenants: Tenants, already: bool, services: Services
) -> None:
    delta = timedelta(minutes=-1) if already else timedelta(seconds=1.5)
    expires = datetime.now(UTC) + delta
    if already:  # the API refuses a key dead at birth: made directly
        project_id = services.registry.project_id(ProjectName(ALPHA))
        _, secret = services.keys.create(
            project_id=project_id, role="developer", expires_at=expires
        )
    else:
        r = http.post(
            "/api/v1/keys",
            json={"project": ALPHA, "role": "developer", "expires_at": expires.isoformat()},
        )
        assert r.status_code == 201, r.text
        secret = r.json()["key"]
    if not already:
        assert as_key(anon, secret, "GET", "/api/v1/models").status_code == 200
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)

    for method, path, kw in KEY_ROUTES:
        r = as_key(anon, secret, method, path, **kw)
        assert r.status_code == 401, (path, r.text)
        assert "expired" in r.text
    assert http.get("/livez").status_code == 200


# leaks ------------------------------------------------------------------------------------------
def test_logs_never_hold_secrets_or_payloads(
    http: httpx.Client,
    anon: httpx.Client,
    tenants: Tenants,
    admin_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "mw_" + "Q" * 43
    created = http.post("/api/v1/keys", json={"project": ALPHA, "role": "invoker"})
    fresh = created.json()["key"]
    body = {**INFER, "id": PAYLOAD_MARKER}
    for secret in (*tenants.keys.values(), fresh, wrong, admin_key):
        for method, path, kw in KEY_ROUTES:
            as_key(anon, secret, method, path, **kw)
        as_key(anon, secret, "POST", f"/v2/models/{OWN}/infer", json=body)
        as_key(anon, secret, "POST", "/v1/embeddings", json={"model": OWN, "input": PAYLOAD_MARKER})
    http.delete(f"/api/v1/keys/{created.json()['id']}")
    as_key(anon, fresh, "GET", "/api/v1/models")
    as_key(anon, "not-a-key-" + "R" * 40, "GET", "/api/v1/models")

    assert caplog.records, "nothing was logged: the check would be empty"
    logged = caplog.text + " ".join(repr(r.args) for r in caplog.records)
    for secret in (*tenants.keys.values(), fresh, wrong, admin_key):
        assert secret[12:] not in logged, "a key's secret part was logged"
    assert "R" * 40 not in logged
    assert PAYLOAD_MARKER not in logged


def test_audit_keeps_prefixes_of_valid_keys_only(
    http: httpx.Client, anon: httpx.Client, tenants: Tenants, services: Services
) -> None:
    guess = "mw_" + "S" * 43
    anon.get("/api/v1/models", headers={"Authorization": f"Bearer {guess}"})
    events = http.get("/api/v1/audit", params={"limit": 1000}).text
    events += str([(e.actor, e.target, e.details) for e in services.audit.list(limit=10_000)])
    for secret in tenants.keys.values():
        assert secret[12:] not in events
    # a rejected credential leaves nothing: not even its prefix (test_16_credentials)
    assert guess[3:12] not in events
