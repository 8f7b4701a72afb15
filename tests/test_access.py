"""Access control end to end: projects (tenants), isolation, roles on every protocol, model
allowlists, expiry and revocation, rate limits, quotas, usage metering, the audit log and the
throttling of failed authentications."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.cli import app as cli_app
from modelworks.cli import csv_cell
from modelworks.client import Client
from modelworks.db import upgrade
from modelworks.db.tables import Model
from modelworks.errors import (
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.conftest import LiveServer
from tests.models import linear_onnx

ROW = [1.0, 2.0, 3.0, 4.0]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CLEAN_ENV: dict[str, str | None] = {
    "MODELWORKS_URL": None,
    "MODELWORKS_API_KEY": None,
    "MODELWORKS_DEBUG": None,
    "MODELWORKS_HOME": None,
}


# helpers --------------------------------------------------------------------------------------
def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sdk(transport: SyncASGITransport, key: str) -> Client:
    return Client("http://testserver", key, transport=transport)


@pytest.fixture
def raw(transport: SyncASGITransport) -> Iterator[httpx.Client]:
    """Plain HTTP without default credentials: each call passes `headers=bearer(key)`."""
    with httpx.Client(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def onnx(tmp_path: Path) -> Path:
    return linear_onnx(tmp_path / "linear.onnx")


def v2(rows: int = 1, width: int = 4) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [rows, width], "datatype": "FP32", "data": ROW[:width] * rows}
        ]
    }


def upload(
    c: httpx.Client,
    name: str,
    path: Path,
    *,
    project: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    with path.open("rb") as fh:
        return c.post(
            f"/api/v1/models/{name}/versions",
            params={"project": project} if project else None,
            files={"file": (path.name, fh, "application/octet-stream")},
            headers=headers,
        )


def deploy(http: httpx.Client, name: str, path: Path, project: str | None = None) -> None:
    """Create `name` with one version (as admin; `project` picks the tenant)."""
    params = {"project": project} if project else None
    r = http.post("/api/v1/models", json={"name": name}, params=params)
    assert r.status_code == 201, r.text
    r = upload(http, name, path, project=project)
    assert r.status_code == 201, r.text


def key(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/api/v1/keys", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def message(r: httpx.Response) -> str:
    """The error message, whichever of the three error shapes the route uses."""
    err = r.json()["error"]
    return str(err if isinstance(err, str) else err["message"])


def call_routes(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every route that names a model, on every protocol: (method, path, request options)."""
    return [
        ("GET", f"/api/v1/models/{name}", {}),
        ("GET", f"/api/v1/models/{name}/versions", {}),
        ("GET", f"/api/v1/models/{name}/versions/1", {}),
        ("PATCH", f"/api/v1/models/{name}", {"json": {"description": "mine now"}}),
        ("PUT", f"/api/v1/models/{name}/aliases/production", {"json": {"version": 1}}),
        ("DELETE", f"/api/v1/models/{name}/aliases/production", {}),
        ("DELETE", f"/api/v1/models/{name}", {}),
        ("GET", f"/v2/models/{name}", {}),
        ("GET", f"/v2/models/{name}/ready", {}),
        ("POST", f"/v2/models/{name}/infer", {"json": v2()}),
        ("POST", f"/v2/models/{name}/versions/1/infer", {"json": v2()}),
        ("POST", f"/v1/models/{name}:predict", {"json": {"instances": [ROW]}}),
        ("GET", f"/v1/models/{name}/metadata", {}),
        ("GET", f"/v1/models/{name}", {}),
        ("POST", f"/models/{name}", {"json": {"inputs": "spindle overheats"}}),
        ("POST", "/v1/embeddings", {"json": {"model": name, "input": "spindle overheats"}}),
    ]


def shape_of(r: httpx.Response, name: str) -> str:
    """The error body with the model name and the per-request id taken out."""
    body = r.json()
    if isinstance(body.get("error"), dict):
        body["error"].pop("request_id", None)
    return json.dumps(body, sort_keys=True).replace(name, "NAME")


# 1. projects ----------------------------------------------------------------------------------
def test_projects_admin_creates_lists_and_owners_see_their_own(
    client: Client, transport: SyncASGITransport, database_url: str
) -> None:
    created = client.create_project("plant-b", description="second plant")
    assert created["name"] == "plant-b" and created["description"] == "second plant"
    assert [p["name"] for p in client.list_projects()] == ["default", "plant-b"]
    owner = sdk(transport, client.create_key(role="owner", project="plant-b")["key"])
    assert [p["name"] for p in owner.list_projects()] == ["plant-b"]
    assert owner.get_project("plant-b")["name"] == "plant-b"
    with pytest.raises(NotFound, match="project 'default' not found"):
        owner.get_project("default")
    # only admins create or delete tenants, whatever else the key may do
    developer = sdk(transport, client.create_key(role="developer")["key"])
    for who in (owner, developer):
        with pytest.raises(Forbidden):
            who.create_project("plant-c")
        with pytest.raises(Forbidden):
            who.delete_project("plant-b")
    assert [p["name"] for p in client.list_projects()] == ["default", "plant-b"]


@pytest.mark.parametrize("name", ["Plant-B", "plant b", "-plant", "a" * 65, "a..b", "", "plänt"])
def test_invalid_project_names_are_422(http: httpx.Client, name: str) -> None:
    r = http.post("/api/v1/projects", json={"name": name})
    assert r.status_code == 422, r.text
    assert http.get("/api/v1/projects").json()[0]["name"] == "default"
    assert len(http.get("/api/v1/projects").json()) == 1


def test_duplicate_project_is_409_and_default_cannot_be_deleted(client: Client) -> None:
    client.create_project("plant-b")
    with pytest.raises(Conflict, match="already exists"):
        client.create_project("plant-b")
    with pytest.raises(ValidationFailed, match="default project cannot be deleted"):
        client.delete_project("default")
    assert "default" in [p["name"] for p in client.list_projects()]


def test_deleting_a_project_removes_its_models_and_keys(
    client: Client,
    http: httpx.Client,
    transport: SyncASGITransport,
    services: Services,
    onnx: Path,
    database_url: str,
) -> None:
    client.create_project("plant-b")
    owner_secret = client.create_key(role="owner", project="plant-b")["key"]
    owner = sdk(transport, owner_secret)
    owner.create_model("press")
    owner.push("press", onnx)
    assert owner.infer("press", {"x": [ROW]})["y"].shape == (1, 2)
    project_id = services.registry.project_id("plant-b")
    # the default project is untouched by the deletion
    deploy(http, "press", onnx)

    assert client.delete_project("plant-b") == {"deleted": "plant-b"}

    with pytest.raises(Unauthorized):  # the project's key stops working at once
        owner.list_models()
    r = http.get("/api/v1/models", params={"project": "plant-b"})
    assert r.status_code == 404 and "project 'plant-b' not found" in message(r)
    with services.sessions() as s:
        assert list(s.scalars(select(Model).where(Model.project_id == project_id))) == []
    assert [p["name"] for p in client.list_projects()] == ["default"]
    # a project of the same name starts empty
    client.create_project("plant-b")
    assert http.get("/api/v1/models", params={"project": "plant-b"}).json() == []
    assert [m["name"] for m in client.list_models()] == ["press"]
    assert client.infer("press", {"x": [ROW]})["y"].shape == (1, 2)


def test_a_new_project_inherits_nothing_from_a_deleted_one(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path, database_url: str
) -> None:
    """Usage rows and audit events of a deleted project must not show up in a later one."""
    client.create_project("plant-b")
    b_owner = key(http, role="owner", project="plant-b")["key"]
    deploy(http, "press", onnx, project="plant-b")
    assert raw.post("/v2/models/press/infer", json=v2(), headers=bearer(b_owner)).is_success
    assert raw.get("/api/v1/usage", headers=bearer(b_owner)).json() != []
    client.delete_project("plant-b")

    client.create_project("plant-c")
    c_owner = key(http, role="owner", project="plant-c")["key"]
    usage = raw.get("/api/v1/usage", headers=bearer(c_owner))
    assert usage.status_code == 200
    assert usage.json() == [], "plant-c sees plant-b's usage"
    events = raw.get("/api/v1/audit", headers=bearer(c_owner)).json()
    leaked = [e for e in events if "press" in e["target"] or e["target"] == "plant-b"]
    assert leaked == [], "plant-c sees plant-b's audit events"


def test_a_new_key_starts_with_a_fresh_quota_and_no_usage(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path, database_url: str
) -> None:
    """Keys of a deleted project are gone; a key created later must not inherit their spent
    quota, their rate bucket or their usage rows."""
    deploy(http, "press", onnx)
    client.create_project("plant-b")
    deploy(http, "press", onnx, project="plant-b")
    old = key(http, role="invoker", project="plant-b", quota={"requests": 1})
    assert raw.post("/v2/models/press/infer", json=v2(), headers=bearer(old["key"])).is_success
    client.delete_project("plant-b")

    new = key(http, role="invoker", quota={"requests": 1})
    r = raw.post("/v2/models/press/infer", json=v2(), headers=bearer(new["key"]))
    assert r.status_code == 200, f"a brand-new key is over quota: {r.text}"
    rows = http.get("/api/v1/usage", params={"group_by": "key", "key": new["id"]}).json()
    assert [row["requests"] for row in rows] == [1]


# 2. tenant isolation --------------------------------------------------------------------------
def test_another_projects_model_is_indistinguishable_from_a_missing_one(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path, database_url: str
) -> None:
    client.create_project("plant-b")
    deploy(http, "secret-press", onnx, project="plant-b")
    r = http.put(
        "/api/v1/models/secret-press/aliases/production",
        params={"project": "plant-b"},
        json={"version": 1},
    )
    assert r.status_code == 200, r.text
    a_key = bearer(key(http, role="developer")["key"])  # a key of the default project

    for method, path, options in call_routes("secret-press"):
        theirs = raw.request(method, path, headers=a_key, **options)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert "'secret-press' not found" in message(theirs), (method, path, theirs.text)
        missing_path = path.replace("secret-press", "no-such-mdl1")
        missing_options = json.loads(json.dumps(options).replace("secret-press", "no-such-mdl1"))
        missing = raw.request(method, missing_path, headers=a_key, **missing_options)
        assert missing.status_code == 404, (method, missing_path, missing.text)
        assert shape_of(theirs, "secret-press") == shape_of(missing, "no-such-mdl1"), path
    # an upload into it is refused the same way (and stores nothing)
    r = upload(raw, "secret-press", onnx, headers=a_key)
    assert r.status_code == 404
    assert shape_of(r, "secret-press") == shape_of(
        upload(raw, "no-such-mdl1", onnx, headers=a_key), "no-such-mdl1"
    )
    # nor is it listed anywhere
    assert raw.get("/api/v1/models", headers=a_key).json() == []
    assert raw.get("/v1/models", headers=a_key).json()["data"] == []

    # plant-b's model is untouched: same description, alias, one version, and it serves
    b = http.get("/api/v1/models/secret-press", params={"project": "plant-b"}).json()
    assert b["description"] == "" and b["aliases"] == {"production": 1} and b["versions"] == 1
    r = http.post("/v2/models/secret-press/infer", params={"project": "plant-b"}, json=v2())
    assert r.status_code == 200, r.text


def test_project_parameter_is_for_admins_only(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path, database_url: str
) -> None:
    client.create_project("plant-b")
    deploy(http, "secret-press", onnx, project="plant-b")
    a_key = bearer(key(http, role="developer")["key"])
    for method, path, options in [
        ("GET", "/api/v1/models", {}),
        ("GET", "/api/v1/models/secret-press", {}),
        ("POST", "/api/v1/models", {"json": {"name": "planted"}}),
        ("POST", "/v2/models/secret-press/infer", {"json": v2()}),
        ("POST", "/v1/models/secret-press:predict", {"json": {"instances": [ROW]}}),
        ("GET", "/v1/models", {}),
        ("GET", "/api/v1/usage", {}),
    ]:
        r = raw.request(method, path, params={"project": "plant-b"}, headers=a_key, **options)
        assert r.status_code == 404, (path, r.text)
        assert "project 'plant-b' not found" in message(r), path
        nope = raw.request(method, path, params={"project": "plant-x"}, headers=a_key, **options)
        assert message(nope).replace("plant-x", "plant-b") == message(r), path
    # nothing was planted in plant-b
    names = [m["name"] for m in http.get("/api/v1/models", params={"project": "plant-b"}).json()]
    assert names == ["secret-press"]
    # its own project by name is fine
    assert raw.get("/api/v1/models", params={"project": "default"}, headers=a_key).json() == []


def test_metrics_do_not_reveal_other_projects_models(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    client.create_project("plant-b")
    deploy(http, "secret-press", onnx, project="plant-b")
    r = http.post("/v2/models/secret-press/infer", params={"project": "plant-b"}, json=v2())
    assert r.status_code == 200
    viewer = bearer(key(http, role="viewer")["key"])  # a key of the default project
    scraped = raw.get("/metrics", headers=viewer)
    if scraped.status_code == 403:
        return  # server-wide metrics kept for admins: fine too
    assert scraped.status_code == 200
    assert "modelworks_requests" in scraped.text
    assert "secret-press" not in scraped.text, "/metrics names another project's model"


def test_usage_respects_the_model_allowlist(
    http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    deploy(http, "m1", onnx)
    deploy(http, "hidden", onnx)
    assert http.post("/v2/models/hidden/infer", json=v2()).status_code == 200
    assert http.post("/v2/models/m1/infer", json=v2()).status_code == 200
    k = bearer(key(http, role="developer", models=["m1"])["key"])
    rows = raw.get("/api/v1/usage", params={"group_by": "model"}, headers=k).json()
    assert "hidden" not in {r["model"] for r in rows}, "usage names a model outside the allowlist"
    r = raw.get("/api/v1/usage", params={"group_by": "model", "model": "hidden"}, headers=k)
    assert r.status_code == 404 or r.json() == []


# 3. roles on every protocol -------------------------------------------------------------------
def test_invoker_infers_on_every_protocol_and_nothing_else(
    http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    deploy(http, "press", onnx)
    inv = bearer(key(http, role="invoker")["key"])
    r = raw.post("/v2/models/press/infer", json=v2(), headers=inv)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 2]
    assert raw.get("/v2/models/press", headers=inv).status_code == 200
    r = raw.post("/v1/models/press:predict", json={"instances": [ROW]}, headers=inv)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    r = raw.get("/v1/models", headers=inv)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["press"]
    # text routes: the key gets through; the tensor model is the wrong task for them
    r = raw.post("/v1/embeddings", json={"model": "press", "input": "hi"}, headers=inv)
    assert r.status_code == 400 and "not 'embeddings'" in message(r)
    r = raw.post("/models/press", json={"inputs": "hi"}, headers=inv)
    assert r.status_code == 400, r.text

    for method, path, options in [
        ("GET", "/api/v1/models", {}),
        ("GET", "/api/v1/models/press", {}),
        ("POST", "/api/v1/models", {"json": {"name": "other"}}),
        ("DELETE", "/api/v1/models/press", {}),
        ("PUT", "/api/v1/models/press/aliases/production", {"json": {"version": 1}}),
        ("POST", "/api/v1/keys", {"json": {"role": "invoker"}}),
        ("GET", "/api/v1/keys", {}),
        ("GET", "/api/v1/usage", {}),
        ("GET", "/api/v1/audit", {}),
    ]:
        r = raw.request(method, path, headers=inv, **options)
        assert r.status_code == 403, (method, path, r.text)
        assert "'invoker'" in message(r)
    assert upload(raw, "press", onnx, headers=inv).status_code == 403
    assert http.get("/api/v1/models/press").json()["versions"] == 1


def test_viewer_reads_metadata_but_cannot_infer(
    http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    deploy(http, "press", onnx)
    viewer = bearer(key(http, role="viewer")["key"])
    assert [m["name"] for m in raw.get("/api/v1/models", headers=viewer).json()] == ["press"]
    assert raw.get("/api/v1/models/press", headers=viewer).json()["latest_version"] == 1
    assert raw.get("/api/v1/models/press/versions", headers=viewer).status_code == 200
    for method, path, body in [
        ("POST", "/v2/models/press/infer", v2()),
        ("POST", "/v1/models/press:predict", {"instances": [ROW]}),
        ("POST", "/v1/embeddings", {"model": "press", "input": "hi"}),
        ("POST", "/models/press", {"inputs": "hi"}),
    ]:
        r = raw.request(method, path, json=body, headers=viewer)
        assert r.status_code == 403, (path, r.text)
        assert "'viewer'" in message(r) and "'infer'" in message(r)
    # each protocol keeps its own error shape
    r = raw.post("/v1/embeddings", json={"model": "press", "input": "hi"}, headers=viewer)
    assert r.json()["error"]["type"] == "permission_error"
    assert isinstance(
        raw.post("/v2/models/press/infer", json=v2(), headers=viewer).json()["error"], str
    )
    for method, path, options in [
        ("POST", "/api/v1/models", {"json": {"name": "other"}}),
        ("PATCH", "/api/v1/models/press", {"json": {"description": "x"}}),
        ("DELETE", "/api/v1/models/press", {}),
        ("POST", "/api/v1/keys", {"json": {"role": "viewer"}}),
    ]:
        assert raw.request(method, path, headers=viewer, **options).status_code == 403, path
    assert upload(raw, "press", onnx, headers=viewer).status_code == 403


def test_developer_uploads_but_does_not_manage_keys(
    http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    dev = bearer(key(http, role="developer")["key"])
    assert raw.post("/api/v1/models", json={"name": "press"}, headers=dev).status_code == 201
    r = upload(raw, "press", onnx, headers=dev)
    assert r.status_code == 201 and r.json()["version"] == 1
    assert raw.post("/v2/models/press/infer", json=v2(), headers=dev).status_code == 200
    r = raw.put("/api/v1/models/press/aliases/production", json={"version": 1}, headers=dev)
    assert r.status_code == 200
    for method, path, options in [
        ("POST", "/api/v1/keys", {"json": {"role": "invoker"}}),
        ("GET", "/api/v1/keys", {}),
        ("DELETE", "/api/v1/keys/1", {}),
        ("GET", "/api/v1/audit", {}),
        ("POST", "/api/v1/projects", {"json": {"name": "mine"}}),
    ]:
        r = raw.request(method, path, headers=dev, **options)
        assert r.status_code == 403, (method, path, r.text)
    assert len(http.get("/api/v1/keys").json()) == 2  # the admin's and the developer's


def test_owner_mints_keys_in_its_project_only(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    client.create_project("plant-b")
    default_dev = key(http, role="developer")
    owner = bearer(key(http, role="owner", project="plant-b")["key"])
    r = raw.post("/api/v1/keys", json={"role": "invoker"}, headers=owner)
    assert r.status_code == 201 and r.json()["project"] == "plant-b"
    minted = bearer(r.json()["key"])
    r = raw.post("/api/v1/keys", json={"role": "developer", "project": "plant-b"}, headers=owner)
    assert r.status_code == 201 and r.json()["project"] == "plant-b"
    r = raw.post("/api/v1/keys", json={"role": "admin"}, headers=owner)
    assert r.status_code == 403 and "admin" in message(r)
    r = raw.post("/api/v1/keys", json={"role": "invoker", "project": "default"}, headers=owner)
    assert r.status_code == 404 and "project 'default' not found" in message(r)
    # it lists and revokes only its own project's keys
    listed = raw.get("/api/v1/keys", headers=owner).json()
    assert {k["project"] for k in listed} == {"plant-b"} and len(listed) == 3
    r = raw.delete(f"/api/v1/keys/{default_dev['id']}", headers=owner)
    assert r.status_code == 404
    assert raw.get("/api/v1/models", headers=bearer(default_dev["key"])).status_code == 200
    # the minted key works in plant-b
    deploy(http, "press", onnx, project="plant-b")
    assert raw.post("/v2/models/press/infer", json=v2(), headers=minted).status_code == 200
    assert (
        raw.post(
            "/v2/models/press/infer", json=v2(), headers=bearer(default_dev["key"])
        ).status_code
        == 404
    )


# 4. model allowlist ---------------------------------------------------------------------------
def test_model_allowlist(http: httpx.Client, raw: httpx.Client, onnx: Path) -> None:
    deploy(http, "m1", onnx)
    deploy(http, "m2", onnx)
    created = key(http, role="developer", models=["m1"])
    assert created["models"] == ["m1"]
    k = bearer(created["key"])
    assert [m["name"] for m in raw.get("/api/v1/models", headers=k).json()] == ["m1"]
    assert [m["id"] for m in raw.get("/v1/models", headers=k).json()["data"]] == ["m1"]
    assert raw.post("/v2/models/m1/infer", json=v2(), headers=k).status_code == 200
    assert raw.post("/v1/models/m1:predict", json={"instances": [ROW]}, headers=k).is_success

    for method, path, options in call_routes("m2"):
        outside = raw.request(method, path, headers=k, **options)
        assert outside.status_code == 404, (method, path, outside.text)
        assert "'m2' not found" in message(outside), (method, path, outside.text)
        missing = raw.request(
            method,
            path.replace("m2", "m9"),
            headers=k,
            **json.loads(json.dumps(options).replace("m2", "m9")),
        )
        assert shape_of(outside, "m2") == shape_of(missing, "m9"), path
    for ref in ("m2:1", "m2:production"):
        r = raw.post(f"/v2/models/{ref}/infer", json=v2(), headers=k)
        assert r.status_code == 404, (ref, r.text)
    assert upload(raw, "m2", onnx, headers=k).status_code == 404
    r = raw.post("/api/v1/models", json={"name": "m3"}, headers=k)
    assert r.status_code == 403, r.text
    # m2 is untouched, and m3 was not created
    assert [m["name"] for m in http.get("/api/v1/models").json()] == ["m1", "m2"]
    assert http.get("/api/v1/models/m2").json()["versions"] == 1


def test_a_key_cannot_mint_a_key_wider_than_its_own_allowlist(
    http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    """An owner limited to m1 must not be able to reach m2 through a key it creates."""
    deploy(http, "m1", onnx)
    deploy(http, "m2", onnx)
    owner = bearer(key(http, role="owner", models=["m1"])["key"])
    assert raw.get("/api/v1/models/m2", headers=owner).status_code == 404
    r = raw.post("/api/v1/keys", json={"role": "developer"}, headers=owner)
    if r.status_code == 201:
        minted = bearer(r.json()["key"])
        reached = raw.get("/api/v1/models/m2", headers=minted)
        assert reached.status_code == 404, "the minted key escapes its owner's allowlist"
        r = raw.post("/api/v1/keys", json={"role": "developer", "models": ["m2"]}, headers=owner)
        assert r.status_code in (403, 404), r.text
    else:
        assert r.status_code == 403, r.text


# 5. expiry and revocation ---------------------------------------------------------------------
def test_expired_key_is_401_on_every_protocol(
    http: httpx.Client, raw: httpx.Client, onnx: Path, services: Services
) -> None:
    deploy(http, "press", onnx)
    past = datetime.now(UTC) - timedelta(seconds=5)  # the API refuses it: made directly
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _, secret = services.keys.create(
        project_id=services.default_project_id, role="developer", expires_at=past
    )
    expired = bearer(secret)
    valid = bearer(key(http, role="developer", expires_at=future)["key"])
    for method, path, options in [
        ("GET", "/api/v1/models", {}),
        ("POST", "/v2/models/press/infer", {"json": v2()}),
        ("POST", "/v1/models/press:predict", {"json": {"instances": [ROW]}}),
        ("GET", "/v1/models", {}),
        ("POST", "/models/press", {"json": {"inputs": "hi"}}),
    ]:
        r = raw.request(method, path, headers=expired, **options)
        assert r.status_code == 401, (path, r.text)
        assert "expired" in message(r)
        assert r.headers["www-authenticate"] == "Bearer"
    assert raw.post("/v2/models/press/infer", json=v2(), headers=valid).status_code == 200


def test_revocation_is_immediate_even_with_the_key_cached(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    deploy(http, "press", onnx)
    created = key(http, role="invoker")
    k = bearer(created["key"])
    assert raw.post("/v2/models/press/infer", json=v2(), headers=k).status_code == 200
    assert raw.post("/v1/models/press:predict", json={"instances": [ROW]}, headers=k).is_success
    client.revoke_key(created["id"])
    for method, path, body in [
        ("POST", "/v2/models/press/infer", v2()),
        ("POST", "/v1/models/press:predict", {"instances": [ROW]}),
        ("GET", "/v1/models", None),
    ]:
        r = raw.request(method, path, json=body, headers=k)
        assert r.status_code == 401, (path, r.text)
        assert "revoked" in message(r)


# 6. rate limits -------------------------------------------------------------------------------
def test_rate_limit_per_key(http: httpx.Client, raw: httpx.Client, onnx: Path) -> None:
    deploy(http, "press", onnx)
    assert http.post("/v2/models/press/infer", json=v2()).status_code == 200  # load it first
    k = bearer(key(http, role="invoker", rate_limit=1, burst=2)["key"])
    other = bearer(key(http, role="invoker")["key"])
    statuses = [raw.post("/v2/models/press/infer", json=v2(), headers=k) for _ in range(3)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    limited = statuses[2]
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    text = message(limited)
    assert "rate limit of 1 requests/s" in text and "burst 2" in text
    # the limit is the key's: another key of the same project is not slowed down
    assert raw.post("/v2/models/press/infer", json=v2(), headers=other).status_code == 200
    # and it covers management routes too (the envelope carries the same message)
    r = raw.get("/v1/models", headers=k)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


def test_project_rate_is_a_ceiling_a_key_only_tightens(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    client.create_project("plant-r", rate_limit=0.5, burst=1)
    deploy(http, "press", onnx, project="plant-r")
    plain = bearer(key(http, role="invoker", project="plant-r")["key"])
    fast = bearer(key(http, role="invoker", project="plant-r", rate_limit=1000, burst=50)["key"])
    slow = bearer(key(http, role="invoker", project="plant-r", rate_limit=0.1)["key"])
    for k, shown in (
        (plain, "0.5 requests/s (burst 1)"),
        (fast, "0.5 requests/s (burst 1)"),
        (slow, "0.1 requests/s (burst 1)"),
    ):
        r1 = raw.post("/v2/models/press/infer", json=v2(), headers=k)
        r2 = raw.post("/v2/models/press/infer", json=v2(), headers=k)
        assert (r1.status_code, r2.status_code) == (200, 429), r2.text
        assert f"rate limit of {shown}" in message(r2)
        assert int(r2.headers["retry-after"]) >= 1


def test_changing_a_projects_default_rate_applies_at_once(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    client.create_project("plant-r")
    k = bearer(key(http, role="developer", project="plant-r")["key"])
    for _ in range(3):
        assert raw.get("/api/v1/models", headers=k).status_code == 200  # key now cached
    client.update_project("plant-r", rate_limit=0.5, burst=1)
    assert raw.get("/api/v1/models", headers=k).status_code == 200
    r = raw.get("/api/v1/models", headers=k)
    assert r.status_code == 429 and "0.5 requests/s" in message(r)


# 7. quotas ------------------------------------------------------------------------------------
def test_requests_quota(http: httpx.Client, raw: httpx.Client, onnx: Path) -> None:
    deploy(http, "press", onnx)
    k = bearer(key(http, role="developer", quota={"requests": 2})["key"])
    # management reads do not count
    for _ in range(4):
        assert raw.get("/api/v1/models", headers=k).status_code == 200
        assert raw.get("/api/v1/models/press", headers=k).status_code == 200
    # a failed inference does not use up the quota
    assert raw.post("/v2/models/press/infer", json=v2(width=3), headers=k).status_code == 400
    assert raw.post("/v2/models/press/infer", json=v2(), headers=k).status_code == 200
    assert raw.post("/v1/models/press:predict", json={"instances": [ROW]}, headers=k).is_success
    for method, path, body in [
        ("POST", "/v2/models/press/infer", v2()),
        ("POST", "/v1/models/press:predict", {"instances": [ROW]}),
    ]:
        r = raw.request(method, path, json=body, headers=k)
        assert r.status_code == 429, (path, r.text)
        assert "daily requests quota of 2" in message(r)
        assert int(r.headers["retry-after"]) >= 1
    assert raw.get("/api/v1/models", headers=k).status_code == 200  # reads still work


def test_items_quota_counts_rows(http: httpx.Client, raw: httpx.Client, onnx: Path) -> None:
    deploy(http, "press", onnx)
    k = bearer(key(http, role="invoker", quota={"items": 4})["key"])
    assert raw.post("/v2/models/press/infer", json=v2(rows=3), headers=k).status_code == 200
    # 3 of 4 used: one more request may start, and then the quota is spent
    assert raw.post("/v1/models/press:predict", json={"instances": [ROW]}, headers=k).is_success
    r = raw.post("/v2/models/press/infer", json=v2(rows=1), headers=k)
    assert r.status_code == 429 and "daily items quota of 4" in message(r)


def test_requests_quota_counts_inferences_not_metadata_reads(
    http: httpx.Client, transport: SyncASGITransport, onnx: Path
) -> None:
    """The SDK (like tritonclient) reads the model's metadata before its first call: a quota of
    two requests still allows two inferences."""
    deploy(http, "press", onnx)
    k = key(http, role="invoker", quota={"requests": 2})
    with sdk(transport, k["key"]) as c:
        assert c.infer("press", {"x": [ROW]})["y"].shape == (1, 2)
        assert c.infer("press", {"x": [ROW]})["y"].shape == (1, 2)
        with pytest.raises(TooManyRequests, match="requests quota of 2"):
            c.infer("press", {"x": [ROW]})


def test_project_default_quota(
    client: Client, http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    """A project's quota binds every key of it; a key's own quota may only be tighter."""
    client.create_project("plant-q", quota={"requests": 2})
    deploy(http, "press", onnx, project="plant-q")
    k = bearer(key(http, role="invoker", project="plant-q")["key"])
    roomy = bearer(key(http, role="invoker", project="plant-q", quota={"requests": 5})["key"])
    tight = bearer(key(http, role="invoker", project="plant-q", quota={"requests": 1})["key"])
    for secret, allowed in ((k, 2), (roomy, 2), (tight, 1)):
        for _ in range(allowed):
            assert raw.post("/v2/models/press/infer", json=v2(), headers=secret).status_code == 200
        r = raw.post("/v2/models/press/infer", json=v2(), headers=secret)
        assert r.status_code == 429 and f"requests quota of {allowed}" in message(r)


# 8. usage -------------------------------------------------------------------------------------
@pytest.fixture
def metered(http: httpx.Client, raw: httpx.Client, onnx: Path) -> dict[str, int]:
    """Two keys on two models: k1 m1 x2 (3 rows), k1 m2 x1, k2 m1 x1, k2 m2 one bad request."""
    deploy(http, "m1", onnx)
    deploy(http, "m2", onnx)
    k1, k2 = key(http, role="invoker"), key(http, role="invoker")
    h1, h2 = bearer(k1["key"]), bearer(k2["key"])
    assert raw.post("/v2/models/m1/infer", json=v2(rows=1), headers=h1).status_code == 200
    assert raw.post("/v1/models/m1:predict", json={"instances": [ROW, ROW]}, headers=h1).is_success
    assert raw.post("/v2/models/m2/infer", json=v2(), headers=h1).status_code == 200
    assert raw.post("/v2/models/m1/infer", json=v2(), headers=h2).status_code == 200
    assert raw.post("/v2/models/m2/infer", json=v2(width=3), headers=h2).status_code == 400
    return {"k1": k1["id"], "k2": k2["id"]}


def _counts(rows: list[dict[str, Any]], *group: str) -> dict[tuple[Any, ...], tuple[int, ...]]:
    return {
        tuple(r[g] for g in group): (r["requests"], r["items"], r["errors"], r["tokens"])
        for r in rows
    }


def test_usage_per_key_and_model(
    http: httpx.Client, metered: dict[str, int], database_url: str
) -> None:
    k1, k2 = metered["k1"], metered["k2"]
    r = http.get("/api/v1/usage", params={"group_by": "key,model"})
    assert r.status_code == 200, r.text
    rows = r.json()
    assert _counts(rows, "key", "model") == {
        (k1, "m1"): (2, 3, 0, 0),
        (k1, "m2"): (1, 1, 0, 0),
        (k2, "m1"): (1, 1, 0, 0),
        (k2, "m2"): (1, 0, 1, 0),
    }
    assert all(r["compute_ms"] >= 0 for r in rows)
    by_key = http.get("/api/v1/usage", params={"group_by": "key,model", "key": k1}).json()
    assert _counts(by_key, "key", "model") == {(k1, "m1"): (2, 3, 0, 0), (k1, "m2"): (1, 1, 0, 0)}
    by_model = http.get("/api/v1/usage", params={"group_by": "key", "model": "m2"}).json()
    assert _counts(by_model, "key") == {(k1,): (1, 1, 0, 0), (k2,): (1, 0, 1, 0)}
    days = http.get("/api/v1/usage", params={"group_by": "day"}).json()
    today = datetime.now(UTC).date().isoformat()
    assert _counts(days, "day") == {(today,): (5, 5, 1, 0)}
    hours = http.get("/api/v1/usage").json()  # default: hour, key, model
    assert sum(r["requests"] for r in hours) == 5 and all("hour" in r for r in hours)
    # another project's view is empty
    http.post("/api/v1/projects", json={"name": "plant-b"})
    assert http.get("/api/v1/usage", params={"project": "plant-b"}).json() == []


def test_admin_usage_without_project_covers_every_project(
    http: httpx.Client, raw: httpx.Client, onnx: Path
) -> None:
    b = {"project": "plant-b"}
    assert http.post("/api/v1/projects", json={"name": "plant-b"}).status_code == 201
    for project in (None, "plant-b"):
        params = {"project": project} if project else {}
        assert http.post("/api/v1/models", params=params, json={"name": "m"}).status_code == 201
        assert upload(http, "m", onnx, project=project).status_code == 201
    key_b = http.post("/api/v1/keys", json={"role": "owner", "project": "plant-b"}).json()["key"]
    assert http.post("/v2/models/m/infer", json=v2()).status_code == 200
    assert raw.post("/v2/models/m/infer", json=v2(), headers=bearer(key_b)).status_code == 200
    rows = http.get("/api/v1/usage", params={"group_by": "project"}).json()
    assert len(rows) == 2 and sum(r["requests"] for r in rows) == 2
    # ?project= narrows it; an owner never sees beyond its own project
    (only_b,) = http.get("/api/v1/usage", params={"group_by": "project", **b}).json()
    assert only_b["requests"] == 1
    own = raw.get("/api/v1/usage", params={"group_by": "project"}, headers=bearer(key_b)).json()
    assert [r["project"] for r in own] == [only_b["project"]]


@pytest.mark.parametrize("group_by", ["key,colour", "", " , ", "hour;key", "secret_hash"])
def test_usage_bad_group_by_is_422(http: httpx.Client, group_by: str) -> None:
    r = http.get("/api/v1/usage", params={"group_by": group_by})
    assert r.status_code == 422, r.text
    assert "group_by" in message(r)


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@x", "'@x"),
        ("\t=1", "'\t=1"),
        ("m1", "m1"),
        (3, "3"),
        (None, ""),
    ],
)
def test_csv_cells_never_run_as_formulas(value: Any, cell: str) -> None:
    assert csv_cell(value) == cell


def _cli(server: LiveServer, secret: str, *args: str) -> str:
    result = CliRunner().invoke(
        cli_app, [*args, "--url", server.url, "--api-key", secret], env=CLEAN_ENV
    )
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return ANSI.sub("", result.stdout)


@pytest.mark.socket
def test_cli_usage_and_audit(
    live_server: LiveServer, admin_key: str, metered: dict[str, int], http: httpx.Client
) -> None:
    import csv
    import io

    k1, k2 = metered["k1"], metered["k2"]
    out = _cli(live_server, admin_key, "usage", "--csv", "--group-by", "key,model")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["key", "model", "requests", "items", "tokens", "compute_ms", "errors"]
    got = {(int(r[0]), r[1]): (int(r[2]), int(r[3]), int(r[4]), int(r[6])) for r in rows[1:]}
    assert got == {
        (k1, "m1"): (2, 3, 0, 0),
        (k1, "m2"): (1, 1, 0, 0),
        (k2, "m1"): (1, 1, 0, 0),
        (k2, "m2"): (1, 0, 0, 1),
    }
    as_json = json.loads(_cli(live_server, admin_key, "usage", "--json", "--group-by", "model"))
    assert {r["model"]: r["requests"] for r in as_json} == {"m1": 3, "m2": 2}
    table = _cli(live_server, admin_key, "usage", "--group-by", "model")
    assert "m1" in table and "m2" in table and "requests" in table

    events = json.loads(_cli(live_server, admin_key, "audit", "--json"))
    actions = [e["action"] for e in events]
    assert {"model.create", "version.upload", "key.create"} <= set(actions)
    assert all(e["actor"] == admin_key[:12] for e in events)
    created = json.loads(
        _cli(live_server, admin_key, "audit", "--json", "--action", "model.create")
    )
    assert sorted(e["target"] for e in created) == ["m1", "m2"]


# 9. audit -------------------------------------------------------------------------------------
def test_audit_records_who_what_target_outcome_client_and_request_id(
    http: httpx.Client, raw: httpx.Client, admin_key: str, onnx: Path
) -> None:
    rids: dict[str, str] = {}

    def done(action: str, r: httpx.Response, status: int) -> None:
        assert r.status_code == status, (action, r.text)
        rids[action] = r.headers["x-request-id"]

    b = {"project": "plant-b"}
    done("project.create", http.post("/api/v1/projects", json={"name": "plant-b"}), 201)
    done("model.create", http.post("/api/v1/models", params=b, json={"name": "press"}), 201)
    done("version.upload", upload(http, "press", onnx, project="plant-b"), 201)
    done(
        "alias.set",
        http.put("/api/v1/models/press/aliases/production", params=b, json={"version": 1}),
        200,
    )
    r = http.post("/api/v1/keys", json={"role": "owner", "project": "plant-b"})
    done("key.create", r, 201)
    owner = r.json()
    victim = http.post("/api/v1/keys", json={"role": "invoker", "project": "plant-b"}).json()
    done("key.revoke", http.delete(f"/api/v1/keys/{victim['id']}"), 200)
    done("model.delete", http.delete("/api/v1/models/press", params=b), 200)
    bad = "mw_" + "Z" * 43
    done("auth.failure", raw.get("/api/v1/models", headers=bearer(bad)), 401)
    # a caller's own request id is kept
    r = http.post("/api/v1/models", json={"name": "mine"}, headers={"X-Request-ID": "ticket-42"})
    assert r.status_code == 201 and r.headers["x-request-id"] == "ticket-42"

    events = http.get("/api/v1/audit", params={"project": "plant-b", "limit": 1000}).json()
    by_rid = {e["request_id"]: e for e in events}
    targets = {
        "project.create": "plant-b",
        "model.create": "press",
        "version.upload": "press:1",
        "alias.set": "press:production",
        "key.create": owner["prefix"],
        "key.revoke": victim["prefix"],
        "model.delete": "press",
        "auth.failure": "/api/v1/models",
    }
    for action, rid in rids.items():
        assert rid in by_rid, (action, events)
        e = by_rid[rid]
        assert e["action"] == action
        assert e["target"] == targets[action], e
        assert e["client"] == "127.0.0.1", e
        if action == "auth.failure":
            assert e["outcome"] == "denied" and e["actor"] == ""
            assert bad[3:9] not in json.dumps(e)
        else:
            assert e["outcome"] == "ok" and e["actor"] == admin_key[:12], e
    # newest first
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
    # the default project's event is not in plant-b's log, but it is in the default one
    assert "ticket-42" not in by_rid
    default = {"action": "model.create", "project": "default"}
    mine = http.get("/api/v1/audit", params=default).json()
    assert [(e["target"], e["request_id"]) for e in mine] == [("mine", "ticket-42")]
    # an admin who names no project sees every project's events: an admin sees everything
    everything = http.get("/api/v1/audit", params={"action": "model.create"}).json()
    assert sorted(e["target"] for e in everything) == ["mine", "press"]

    # an owner sees only its project's events (no auth failures, nothing of default)
    ob = bearer(owner["key"])
    seen = raw.get("/api/v1/audit", params={"limit": 1000}, headers=ob)
    assert seen.status_code == 200
    seen_actions = {e["action"] for e in seen.json()}
    assert seen_actions == {
        "project.create",
        "model.create",
        "version.upload",
        "alias.set",
        "key.create",
        "key.revoke",
        "model.delete",
    }
    assert "ticket-42" not in {e["request_id"] for e in seen.json()}
    r = raw.get("/api/v1/audit", params={"project": "default"}, headers=ob)
    assert r.status_code == 404


def test_failed_management_action_is_audited(
    http: httpx.Client, onnx: Path, tmp_path: Path
) -> None:
    http.post("/api/v1/models", json={"name": "press"})
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    r = upload(http, "press", junk)
    assert r.status_code >= 400
    events = http.get("/api/v1/audit", params={"action": "version.upload"}).json()
    assert len(events) == 1
    assert events[0]["outcome"] == "rejected"
    assert events[0]["request_id"] == r.headers["x-request-id"]


# 10. throttling of failed authentications -----------------------------------------------------
def test_auth_failures_are_throttled_per_address_without_locking_out_the_owner(
    tmp_path: Path,
) -> None:
    assert Settings(home=tmp_path / "defaults").auth_failures_per_minute == 30
    settings = Settings(
        home=tmp_path / "home", auth_failures_per_minute=3, allowed_hosts="testserver"
    )
    settings.home.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    svc = Services.build(settings)
    admin = svc.keys.bootstrap_admin()
    assert admin is not None
    t = SyncASGITransport(create_app(settings, svc))
    try:
        with httpx.Client(transport=t, base_url="http://testserver") as c:
            bad = [c.get("/api/v1/models", headers=bearer("mw_" + ch * 43)) for ch in "ABCD"]
            assert [r.status_code for r in bad] == [401, 401, 401, 429]
            assert int(bad[3].headers["retry-after"]) >= 1
            assert "too many failed authentications" in message(bad[3])
            # the real key's owner, from the same address, is let in every time
            for _ in range(3):
                assert c.get("/api/v1/models", headers=bearer(admin)).status_code == 200
            # a missing or malformed header counts as a failure too
            assert c.get("/api/v1/models").status_code == 429
            assert (
                c.post("/v2/models/x/infer", headers={"Authorization": "Basic a"}).status_code
                == 429
            )
            assert c.get("/api/v1/models", headers=bearer(admin)).status_code == 200
        # the budget is per client address: another address still gets plain 401s
        other = SyncASGITransport(create_app(settings, svc))
        other._inner = httpx.ASGITransport(
            app=other._inner.app, client=("10.1.2.3", 4567), raise_app_exceptions=False
        )
        try:
            with httpx.Client(transport=other, base_url="http://testserver") as c2:
                r = c2.get("/api/v1/models", headers=bearer("mw_" + "E" * 43))
                assert r.status_code == 401, r.text
        finally:
            other.close()
        failures = [e for e in svc.audit.list(limit=100) if e.action == "auth.failure"]
        assert len(failures) == 7  # every failure is audited, throttled or not
    finally:
        t.close()
        svc.close()


# 11. several replicas: shared limiter state (Redis) and revocation --------------------------
REDIS_URL = os.environ.get("MODELWORKS_TEST_REDIS_URL", "")


class Replica:
    """One app instance with its own Services (caches, limiter) on a shared database."""

    def __init__(self, settings: Settings) -> None:
        self.services = Services.build(settings)
        self.transport = SyncASGITransport(create_app(settings, self.services))
        self.http = httpx.Client(transport=self.transport, base_url="http://testserver")

    def close(self) -> None:
        self.transport._portal.call(self.services.limiter.close)
        self.http.close()  # closes the transport (and its portal) too
        self.services.close()


@pytest.fixture
def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Replica]]:
    """Two replicas on one database (and on one Redis when the test asks for `redis_db`)."""
    limits_url = request.getfixturevalue("redis_db") if "redis_db" in request.fixturenames else ""
    settings = Settings(
        home=tmp_path / "home",
        allowed_hosts="testserver",
        limits_url=limits_url or "memory://",
    )
    settings.home.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    pair = [Replica(settings), Replica(settings)]
    yield pair
    for r in pair:
        r.close()


@pytest.fixture
def redis_db() -> Iterator[str]:
    if not REDIS_URL:
        pytest.skip("set MODELWORKS_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15)")
    import redis

    conn = redis.Redis.from_url(REDIS_URL)
    conn.flushdb()
    try:
        yield REDIS_URL
    finally:
        conn.flushdb()
        conn.close()


def _replica_setup(replicas: list[Replica], onnx: Path) -> str:
    one = replicas[0]
    admin = one.services.keys.bootstrap_admin()
    assert admin is not None
    one.http.headers["Authorization"] = f"Bearer {admin}"
    deploy(one.http, "press", onnx)
    for r in replicas:  # load the model in both, so no request below waits
        rr = r.http.post("/v2/models/press/infer", json=v2(), headers=bearer(admin))
        assert rr.status_code == 200, rr.text
    return admin


@pytest.mark.socket
def test_replicas_share_rate_limits_and_quotas_through_redis(
    redis_db: str, replicas: list[Replica], onnx: Path
) -> None:
    one, two = replicas
    _replica_setup(replicas, onnx)
    rated = bearer(key(one.http, role="invoker", rate_limit=1, burst=2)["key"])
    got = [
        r.http.post("/v2/models/press/infer", json=v2(), headers=rated)
        for r in (one, two, one, two)
    ]
    assert [g.status_code for g in got] == [200, 200, 429, 429], [g.text for g in got]
    assert all("rate limit of 1 requests/s" in message(g) for g in got[2:])

    quota = bearer(key(one.http, role="invoker", quota={"requests": 2})["key"])
    got = [
        r.http.post("/v2/models/press/infer", json=v2(), headers=quota)
        for r in (two, one, two, one)
    ]
    assert [g.status_code for g in got] == [200, 200, 429, 429], [g.text for g in got]
    assert all("requests quota of 2" in message(g) for g in got[2:])


def test_revocation_reaches_every_replica_at_once(
    redis_db: str, replicas: list[Replica], onnx: Path
) -> None:
    """Replicas share their limiter state in Redis (as a multi-replica deployment must), and
    the revocation travels with it; a lone server drops the key from its cache at once."""
    one, two = replicas
    _replica_setup(replicas, onnx)
    created = key(one.http, role="invoker")
    k = bearer(created["key"])
    assert two.http.post("/v2/models/press/infer", json=v2(), headers=k).status_code == 200
    assert one.http.delete(f"/api/v1/keys/{created['id']}").status_code == 200
    assert one.http.post("/v2/models/press/infer", json=v2(), headers=k).status_code == 401
    r = two.http.post("/v2/models/press/infer", json=v2(), headers=k)
    assert r.status_code == 401, "a revoked key still works on the other replica"
