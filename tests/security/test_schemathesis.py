"""Schemathesis against the app's own /openapi.json (SECURITY.md, "How we test it").

For every operation, cases generated from the document are sent to the in-process app:
with a valid admin key no input gets a 5xx (valid inputs, then invalid ones); without
credentials, or with a wrong key, every operation but the health probes answers 401.
Failures are collected across all operations and reported together, with a curl command each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python.asgi import ASGIClient

from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.models import linear_onnx

BASE_URL = "http://testserver"
HEALTH = {"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"}
MODEL = "m"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The suite's settings, with a failure budget that hundreds of keyless calls stay under."""
    s = Settings(
        home=tmp_path / "home",
        max_upload_bytes=1024 * 1024,
        allowed_hosts="testserver,127.0.0.1,localhost",
        auth_failures_per_minute=1_000_000,
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def operations(http: httpx.Client) -> list[Any]:
    """The operations of the document the app serves (it needs a key, as every route does)."""
    document = http.get("/openapi.json")
    assert document.status_code == 200
    schema = schemathesis.openapi.from_dict(document.json())
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) > 30
    return ops


@pytest.fixture
def session(app: Any) -> ASGIClient:
    """Schemathesis' in-process client (not entered: the app's lifespan is not started, as in
    the rest of the suite)."""
    return ASGIClient(app)


@pytest.fixture
def world(http: httpx.Client, tmp_path: Path) -> dict[str, Any]:
    """A served model, and a throwaway key and project that generated deletes may target."""
    assert http.post("/api/v1/models", json={"name": MODEL}).status_code == 201
    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    assert http.post(f"/api/v1/models/{MODEL}/versions", files={"file": ("m", onnx)}).is_success
    key = http.post("/api/v1/keys", json={"role": "viewer", "name": "throwaway"}).json()
    assert http.post("/api/v1/projects", json={"name": "throwaway"}).status_code == 201
    return {"key_id": key["id"], "project": "throwaway"}


def run(
    op: Any,
    mode: GenerationMode,
    examples: int,
    send: Callable[[Any], Any],
    path_parameters: dict[str, Any] | None = None,
) -> None:
    """Send `examples` generated cases of `op` through `send` (which records, never raises)."""
    strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def sweep(case: Any) -> None:
        send(case)

    try:
        sweep()
    except Unsatisfiable:
        # an operation without parameters or body has no invalid input to generate
        assert mode is GenerationMode.NEGATIVE


def takes_input(op: Any) -> bool:
    return bool(list(op.iter_parameters())) or bool(op.body)


def fixed_parameters(op: Any, world: dict[str, Any]) -> dict[str, Any]:
    """Deletes go to throwaway objects, so the admin key and the default project survive."""
    if op.path == "/api/v1/keys/{key_id}":
        return {"key_id": world["key_id"]}
    if op.path.startswith("/api/v1/projects/{name}") and op.method.upper() != "GET":
        return {"name": world["project"]}
    return {}


def test_no_input_gets_a_5xx(
    operations: list[Any],
    session: ASGIClient,
    http: httpx.Client,
    admin_key: str,
    world: dict[str, Any],
) -> None:
    auth = {"Authorization": f"Bearer {admin_key}"}
    failures: list[str] = []
    seen: dict[int, int] = {}

    def send(case: Any) -> None:
        try:
            r = case.call(base_url=BASE_URL, session=session, headers=auth)
        except Exception as exc:  # the app answered 500 and re-raised to its server
            status, text = 500, f"{type(exc).__name__}: {str(exc)[:200]}"
        else:
            status, text = r.status_code, r.text[:200]
        seen[status] = seen.get(status, 0) + 1
        if status >= 500:
            curl = case.as_curl_command(headers=auth)
            failures.append(f"{case.operation.label}: {status} {text}\n  {curl}")

    for op in operations:
        fixed = fixed_parameters(op, world)
        run(op, GenerationMode.POSITIVE, 10, send, fixed)
        if takes_input(op):
            run(op, GenerationMode.NEGATIVE, 5, send, fixed)
        names = {p.name for p in op.path_parameters}
        if {"name", "model"} & names and op.method.upper() != "DELETE" and not fixed:
            # the same operation on a model that exists, to reach past the lookup
            known = {n: MODEL for n in ("name", "model") if n in names}
            run(op, GenerationMode.POSITIVE, 4, send, known)

    assert failures == [], "\n".join(failures)
    assert any(200 <= s < 300 for s in seen), seen  # the key worked: handlers really ran
    assert http.get("/api/v1/models").status_code == 200  # and still does
    assert http.get("/livez").status_code == 200


@pytest.mark.parametrize("credential", [None, "Bearer mw_" + "Z" * 43], ids=["none", "wrong-key"])
def test_without_valid_credentials_every_operation_is_401(
    operations: list[Any],
    session: ASGIClient,
    http: httpx.Client,
    world: dict[str, Any],
    credential: str | None,
) -> None:
    headers = {"Authorization": credential} if credential else None
    failures: list[str] = []

    def send(case: Any) -> None:
        r = case.call(base_url=BASE_URL, session=session, headers=headers)
        expected = 200 if case.operation.path in HEALTH else 401
        if r.status_code != expected:
            curl = case.as_curl_command(headers=headers)
            failures.append(f"{case.operation.label}: {r.status_code} {r.text[:200]}\n  {curl}")

    for op in operations:
        run(op, GenerationMode.POSITIVE, 4, send)

    assert failures == [], "\n".join(failures)
    models = http.get("/api/v1/models").json()
    assert [m["name"] for m in models] == [MODEL]
    assert models[0]["versions"] == 1
    assert http.get("/livez").status_code == 200


# inputs the generator found, pinned so they are checked on every run ---------------------------
FOUND = [
    ("PATCH", "/api/v1/projects/throwaway", {"description": None}),
    ("PATCH", "/api/v1/projects/throwaway", {"description": None, "quota": None}),
    ("PATCH", f"/api/v1/models/{MODEL}", {"description": None, "task": None, "tags": None}),
    ("POST", "/api/v1/keys", {"name": "k", "models": None, "quota": None, "expires_at": None}),
]


@pytest.mark.parametrize(("method", "path", "body"), FOUND)
def test_found_inputs_are_not_5xx(
    http: httpx.Client, world: dict[str, Any], method: str, path: str, body: Any
) -> None:
    r = http.request(method, path, json=body)
    assert r.status_code < 500, r.text
    assert http.get("/livez").status_code == 200
