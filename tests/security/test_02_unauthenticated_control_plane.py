"""SECURITY.md class 2: an unauthenticated control plane.

Every operation of the OpenAPI document answers 401 without valid credentials, except the
health probes, which answer without a key and reveal nothing. Each call carries a body that
would succeed with a key, and afterwards nothing has changed. The CLI refuses to serve a
public address with auth off, and binds loopback by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from modelworks import __version__
from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx

HEALTH = {"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"}
# the documentation routes (api/docs.py): left out of the document they serve, and behind a
# key like the rest (tests/security/test_17_http_edge.py)
DOCS = {"/openapi.json", "/docs", "/redoc", "/docs/static/{name}"}
MODEL = "payroll-scorer"
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
# a body each operation would accept from an admin: without a key, none may take effect
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/v1/models"): {"name": "intruder"},
    ("PATCH", "/api/v1/models/{name}"): {"description": "owned"},
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"): {"version": 1, "warm": False},
    ("POST", "/api/v1/keys"): {"role": "admin", "name": "intruder"},
    ("POST", "/api/v1/projects"): {"name": "intruder"},
    ("PATCH", "/api/v1/projects/{name}"): {"description": "owned"},
    ("POST", "/v2/models/{model}/infer"): INFER,
    ("POST", "/v2/models/{model}/versions/{version}/infer"): INFER,
    ("POST", "/v1/embeddings"): {"model": MODEL, "input": "hello"},
    ("POST", "/models/{model}"): {"inputs": "hello"},
    ("POST", "/v1/models/{model_verb}"): {"instances": [[1, 2, 3, 4]]},
    ("POST", "/v1/models/{model}/versions/{version_verb}"): {"instances": [[1, 2, 3, 4]]},
    ("POST", "/v1/models/{model}/labels/{label_verb}"): {"instances": [[1, 2, 3, 4]]},
}
CREDENTIALS = {
    "none": None,
    "unknown-key": "Bearer mw_" + "A" * 43,
    "basic-auth": "Basic YWRtaW46YWRtaW4=",
    "empty-bearer": "Bearer ",
    "not-a-key": "Bearer letmein",
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The suite's settings, with a failure budget that a sweep of every route stays under."""
    s = Settings(
        home=tmp_path / "home",
        max_upload_bytes=1024 * 1024,
        allowed_hosts="testserver,127.0.0.1,localhost",
        auth_failures_per_minute=100_000,
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def served(http: httpx.Client, tmp_path: Path) -> None:
    """A model with a version: a missing check would let a call succeed, not 404."""
    assert http.post("/api/v1/models", json={"name": MODEL}).status_code == 201
    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    r = http.post(f"/api/v1/models/{MODEL}/versions", files={"file": ("m.onnx", onnx)})
    assert r.status_code == 201, r.text


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every operation the OpenAPI document lists."""
    return [
        (method.upper(), path)
        for path, ops in app.openapi()["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    ]


def fill(template: str, key_id: int) -> str:
    project_route = template.startswith("/api/v1/projects/")
    return (
        template.replace("{name}", "default" if project_route else MODEL)
        .replace("{model}", MODEL)
        .replace("{model_verb}", f"{MODEL}:predict")
        .replace("{version_verb}", "1:predict")
        .replace("{label_verb}", "production:predict")
        .replace("{version}", "1")
        .replace("{alias}", "production")
        .replace("{label}", "production")
        .replace("{key_id}", str(key_id))
    )


def request(
    client: httpx.Client, method: str, template: str, key_id: int, tmp_path: Path
) -> httpx.Response:
    path = fill(template, key_id)
    if template.endswith("/versions") and method == "POST":
        onnx = linear_onnx(tmp_path / "intruder.onnx", seed=9).read_bytes()
        return client.post(path, files={"file": ("m.onnx", onnx)})
    return client.request(method, path, json=BODIES.get((method, template)))


def state(http: httpx.Client) -> dict[str, Any]:
    """What an unauthenticated call could have changed, as an admin sees it."""
    model = http.get(f"/api/v1/models/{MODEL}").json()
    return {
        "models": sorted(m["name"] for m in http.get("/api/v1/models").json()),
        "model": {k: model[k] for k in ("description", "aliases", "versions") if k in model},
        "keys": sorted(
            (k["id"], k["role"], k["revoked_at"]) for k in http.get("/api/v1/keys").json()
        ),
        "projects": http.get("/api/v1/projects").json(),
    }


# every route authenticates ----------------------------------------------------------------------
@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_every_operation_needs_a_valid_key(
    app: FastAPI,
    http: httpx.Client,
    anon: httpx.Client,
    services: Services,
    served: None,
    tmp_path: Path,
    credential: str,
) -> None:
    key_id = services.keys.list()[0].id  # the admin key: revoking it must need a key too
    before = state(http)
    header = CREDENTIALS[credential]
    if header is not None:
        anon.headers["Authorization"] = header
    ops = [op for op in operations(app) if op[1] not in HEALTH]
    assert len(ops) > 30, ops  # the document really lists the API

    wrong = []
    for method, template in ops:
        r = request(anon, method, template, key_id, tmp_path)
        if r.status_code != 401 or r.headers.get("www-authenticate") != "Bearer":
            wrong.append((method, template, r.status_code, r.text[:120]))
        if header is not None and len(header) > 12:
            assert header.split(" ", 1)[1] not in r.text  # a sent secret is never echoed

    assert wrong == []
    assert state(http) == before
    assert http.get("/livez").status_code == 200


def test_a_real_key_under_another_scheme_is_refused(
    anon: httpx.Client, admin_key: str, served: None
) -> None:
    for header in (f"Token {admin_key}", f"Basic {admin_key}", admin_key, f"Bearer{admin_key}"):
        r = anon.get("/api/v1/models", headers={"Authorization": header})
        assert r.status_code == 401, (header, r.text)
        assert admin_key not in r.text
    assert anon.get("/api/v1/models", headers={"Authorization": f"bearer {admin_key}"}).is_success


def test_no_route_hides_from_the_openapi_document(app: FastAPI) -> None:
    """The sweep above iterates the OpenAPI document: a route left out of it
    (include_in_schema=False) would escape the check, so none may exist."""
    documented = {path for _, path in operations(app)}
    routes = set(route_paths(app.routes))
    assert len(routes) > 30, routes
    assert routes - documented - DOCS == set()
    assert documented >= HEALTH


def route_paths(routes: list[Any]) -> Iterator[str]:
    """Paths of every route, through included routers (FastAPI >= 0.160 keeps an included
    router as one entry that holds the original router)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from route_paths(inner.routes)
        else:
            yield route.path


# failed attempts are throttled, the owner is not locked out -----------------------------------
def test_guessing_keys_is_throttled_without_locking_out_the_owner(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h", allowed_hosts="testserver", auth_failures_per_minute=3)
    s.home.mkdir()
    upgrade(s.resolved_database_url)
    svc = Services.build(s)
    key = svc.keys.bootstrap_admin()
    t = SyncASGITransport(create_app(s, svc))
    try:
        with httpx.Client(transport=t, base_url="http://testserver") as c:
            guesses = [f"Bearer mw_{i:043d}" for i in range(5)]
            codes = [c.get("/v2", headers={"Authorization": g}).status_code for g in guesses]
            assert codes == [401, 401, 401, 429, 429]
            r = c.get("/api/v1/models", headers={"Authorization": guesses[0]})
            assert r.status_code == 429 and r.headers["retry-after"] == "60"
            assert c.get("/v2", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        t.close()
        svc.close()


# health probes reveal nothing -------------------------------------------------------------------
HEALTH_BODIES = {
    "/livez": {"status": "ok"},
    "/readyz": {"status": "ok"},
    "/v2/health/live": {"live": True},
    "/v2/health/ready": {"ready": True},
}


@pytest.mark.parametrize("path", sorted(HEALTH_BODIES))
def test_health_answers_without_a_key_and_reveals_nothing(
    anon: httpx.Client, served: None, tmp_path: Path, path: str
) -> None:
    r = anon.get(path)

    assert r.status_code == 200, r.text
    assert r.json() == HEALTH_BODIES[path]
    shown = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
    for secret in (__version__, MODEL, "modelworks", "sqlite", str(tmp_path), "python"):
        assert secret not in shown.lower(), secret
    assert "server" not in r.headers


# the server refuses a public bind without auth --------------------------------------------------
CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in (
        "MODELWORKS_HOME",
        "MODELWORKS_HOST",
        "MODELWORKS_PORT",
        "MODELWORKS_AUTH",
        "MODELWORKS_DATABASE_URL",
        "MODELWORKS_STORE_URL",
    )
}


@pytest.fixture
def served_with(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn's Server.run is replaced: a test that reaches it records the server's host and
    port instead of serving."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def record(server: uvicorn.Server, *args: Any, **kw: Any) -> None:
        calls.append({"host": server.config.host, "port": server.config.port})

    monkeypatch.setattr(uvicorn.Server, "run", record)
    return calls


PUBLIC_NO_AUTH = {
    "any-ipv4": (["--host", "0.0.0.0", "--no-auth"], {}),
    "any-ipv6": (["--host", "::", "--no-auth"], {}),
    "lan-address": (["--host", "192.168.1.10", "--no-auth"], {}),
    "look-alike-name": (["--host", "localhost.attacker.example", "--no-auth"], {}),
    "env-vars": ([], {"MODELWORKS_HOST": "0.0.0.0", "MODELWORKS_AUTH": "false"}),
    "flag-and-env": (["--host", "10.0.0.5"], {"MODELWORKS_AUTH": "0"}),
}


@pytest.mark.parametrize("case", sorted(PUBLIC_NO_AUTH))
def test_public_bind_without_auth_is_refused(
    tmp_path: Path, served_with: list[dict[str, Any]], case: str
) -> None:
    from modelworks.cli import app as cli

    args, env = PUBLIC_NO_AUTH[case]
    home = tmp_path / "home"

    result = CliRunner().invoke(
        cli, ["serve", *args, "--home", str(home)], env={**CLEAN_ENV, **env}
    )

    assert result.exit_code == 2, result.output
    assert "refusing to serve" in result.output
    assert served_with == []
    assert not home.exists(), "nothing is created before the refusal"


LOOPBACK_OR_AUTH = {
    "default": [],
    "loopback-no-auth": ["--host", "127.0.0.1", "--no-auth"],
    "ipv6-loopback-no-auth": ["--host", "::1", "--no-auth"],
    "public-with-auth": ["--host", "0.0.0.0"],
}


@pytest.mark.parametrize("case", sorted(LOOPBACK_OR_AUTH))
def test_loopback_or_auth_is_served(
    tmp_path: Path, served_with: list[dict[str, Any]], case: str
) -> None:
    from modelworks.cli import app as cli

    args = LOOPBACK_OR_AUTH[case]
    result = CliRunner().invoke(
        cli, ["serve", *args, "--home", str(tmp_path / "home")], env=CLEAN_ENV
    )

    assert result.exit_code == 0, result.output
    (call,) = served_with
    expected = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    assert call["host"] == expected
    assert Settings.model_fields["host"].default == "127.0.0.1"  # loopback by default
