"""SECURITY.md class 7: browser-reachable APIs (CORS, DNS rebinding, CSRF simple requests).

No CORS headers at all by default; with origins configured only the exact origin is echoed,
never `*`, and never with credentials. A Host header outside the configured names is refused.
The API takes credentials from the `Authorization` header only, so cookies, query parameters
and look-alike headers authenticate nothing, and "simple" cross-site POSTs (text/plain, forms)
cannot act. The server still answers afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx

CONSOLE = "https://console.example.com"
ORIGINS = ["https://evil.example", "null", "http://localhost:3000", "https://console.example.co"]
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
TMP_CHILDREN = {"home", "m.onnx", "cors-home"}


def assert_alive(client: httpx.Client) -> None:
    r = client.get("/livez")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


@pytest.fixture(autouse=True)
def nothing_outside_the_store(settings: Settings, tmp_path: Path) -> Iterator[None]:
    """After each test: the home holds only the database and the store, and the test's folder
    only the files the test itself wrote."""
    yield
    assert {p.name for p in settings.home.iterdir()} <= HOME_CHILDREN
    assert {p.name for p in tmp_path.iterdir()} <= TMP_CHILDREN


@pytest.fixture
def served(http: httpx.Client, tmp_path: Path) -> None:
    assert http.post("/api/v1/models", json={"name": "m"}).status_code == 201
    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    assert http.post("/api/v1/models/m/versions", files={"file": ("m.onnx", onnx)}).is_success


# CORS -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", [CONSOLE, *ORIGINS])
def test_no_cors_headers_by_default(
    http: httpx.Client, anon: httpx.Client, served: None, origin: str
) -> None:
    responses = [
        http.get("/api/v1/models", headers={"Origin": origin}),
        http.post("/v2/models/m/infer", json=INFER, headers={"Origin": origin}),
        anon.get("/livez", headers={"Origin": origin}),
        anon.options(
            "/api/v1/models",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        ),
    ]
    for r in responses:
        assert not [h for h in r.headers if h.startswith("access-control-")], dict(r.headers)
    assert responses[0].status_code == 200 and responses[1].status_code == 200
    assert responses[3].status_code >= 400  # no preflight is ever granted
    assert_alive(anon)


@pytest.fixture
def cors(tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    """An app whose operator configured one console origin (and, wrongly, a '*')."""
    s = Settings(
        home=tmp_path / "cors-home",
        allowed_hosts="testserver",
        cors_origins=f"{CONSOLE}, *",
    )
    s.home.mkdir()
    upgrade(s.resolved_database_url)
    svc = Services.build(s)
    key = svc.keys.bootstrap_admin()
    assert key is not None
    t = SyncASGITransport(create_app(s, svc))
    try:
        with httpx.Client(transport=t, base_url="http://testserver") as c:
            yield c, key
    finally:
        t.close()
        svc.close()


def test_configured_origin_is_echoed_exactly_without_credentials(
    cors: tuple[httpx.Client, str],
) -> None:
    client, key = cors
    auth = {"Authorization": f"Bearer {key}"}

    r = client.get("/api/v1/models", headers={**auth, "Origin": CONSOLE})
    pre = client.options(
        "/api/v1/models",
        headers={
            "Origin": CONSOLE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )

    for resp in (r, pre):
        assert resp.status_code == 200, resp.text
        assert resp.headers["access-control-allow-origin"] == CONSOLE
        assert "access-control-allow-credentials" not in resp.headers
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert_alive(client)


@pytest.mark.parametrize("origin", ORIGINS)
def test_other_origins_get_nothing_even_with_a_wildcard_configured(
    cors: tuple[httpx.Client, str], origin: str
) -> None:
    client, key = cors
    r = client.get("/api/v1/models", headers={"Authorization": f"Bearer {key}", "Origin": origin})
    pre = client.options(
        "/api/v1/models",
        headers={"Origin": origin, "Access-Control-Request-Method": "DELETE"},
    )

    assert r.status_code == 200  # the request itself is fine; the browser just may not read it
    assert "access-control-allow-origin" not in r.headers
    assert pre.status_code == 400
    assert pre.headers.get("access-control-allow-origin") in (None, CONSOLE)
    assert "*" not in pre.headers.get("access-control-allow-origin", "")
    assert_alive(client)


# DNS rebinding ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "attacker.example:8000",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "testserver.evil.example",
        "169.254.169.254",
        "",
    ],
)
def test_foreign_host_header_is_refused(
    http: httpx.Client, anon: httpx.Client, served: None, host: str
) -> None:
    for client, method, path, body in (
        (http, "GET", "/api/v1/models", None),
        (http, "POST", "/v2/models/m/infer", INFER),
        (http, "DELETE", "/api/v1/models/m", None),
        (anon, "GET", "/livez", None),
        (anon, "GET", "/v2/health/ready", None),
    ):
        r = client.request(method, path, json=body, headers={"Host": host})
        assert r.status_code == 400, (host, method, path, r.status_code)
        assert '"m"' not in r.text and "model" not in r.text
    assert http.get("/api/v1/models/m").status_code == 200  # the DELETE never ran
    assert http.get("/livez", headers={"Host": "localhost:8000"}).status_code == 200
    assert_alive(anon)


# credentials come from the Authorization header only -------------------------------------------
ELSEWHERE = {
    "cookie-session": {"cookies": {"session": "{key}"}},
    "cookie-api-key": {"cookies": {"api_key": "{key}"}},
    "cookie-authorization": {"cookies": {"Authorization": "Bearer {key}"}},
    "query-api-key": {"params": {"api_key": "{key}"}},
    "query-access-token": {"params": {"access_token": "{key}"}},
    "query-key": {"params": {"key": "{key}"}},
    "header-x-api-key": {"headers": {"X-API-Key": "{key}"}},
    "header-api-key": {"headers": {"api-key": "{key}"}},
    "header-proxy-authorization": {"headers": {"Proxy-Authorization": "Bearer {key}"}},
}


@pytest.mark.parametrize("where", sorted(ELSEWHERE))
def test_a_valid_key_outside_the_authorization_header_is_ignored(
    transport: SyncASGITransport, admin_key: str, served: None, where: str
) -> None:
    options = {
        kind: {name: value.format(key=admin_key) for name, value in values.items()}
        for kind, values in ELSEWHERE[where].items()
    }
    with httpx.Client(
        transport=transport, base_url="http://testserver", cookies=options.pop("cookies", None)
    ) as c:
        for method, path, body in (
            ("GET", "/api/v1/models", None),
            ("GET", "/api/v1/keys", None),
            ("POST", "/v2/models/m/infer", INFER),
            ("POST", "/api/v1/models", {"name": "csrf"}),
        ):
            r = c.request(method, path, json=body, **options)  # type: ignore[arg-type]
            assert r.status_code == 401, (where, method, path, r.text)
            assert admin_key not in r.text
        assert_alive(c)


# simple requests a cross-site page can send without a preflight ---------------------------------
SIMPLE_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
JSON_ROUTES = [
    ("POST", "/api/v1/models", {"name": "csrf"}),
    ("POST", "/api/v1/keys", {"role": "admin", "name": "csrf"}),
    ("POST", "/api/v1/projects", {"name": "csrf"}),
    ("PATCH", "/api/v1/models/m", {"description": "csrf"}),
    ("PUT", "/api/v1/models/m/aliases/production", {"version": 1, "warm": False}),
    ("POST", "/v2/models/m/infer", INFER),
    ("POST", "/v1/models/m:predict", {"instances": [[1, 2, 3, 4]]}),
    ("POST", "/v1/embeddings", {"model": "m", "input": "x"}),
    ("POST", "/models/m", {"inputs": "x"}),
]


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
def test_simple_cross_site_posts_do_not_bypass_auth(
    http: httpx.Client, anon: httpx.Client, served: None, content_type: str
) -> None:
    before = http.get("/api/v1/models/m").json()
    for method, path, body in JSON_ROUTES:
        r = anon.request(
            method,
            path,
            content=json.dumps(body).encode(),
            headers={"Content-Type": content_type, "Origin": "https://evil.example"},
        )
        assert r.status_code == 401, (content_type, method, path, r.text)
    after = http.get("/api/v1/models/m").json()
    assert after == before
    assert [m["name"] for m in http.get("/api/v1/models").json()] == ["m"]
    assert len(http.get("/api/v1/keys").json()) == 1
    assert_alive(anon)


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
def test_management_routes_read_simple_bodies_as_json_only_with_a_key(
    http: httpx.Client, served: None, content_type: str
) -> None:
    """With a key, a JSON body sent as text/plain or a form (what `curl -d` sends) is read as
    JSON: a browser's simple cross-site request cannot carry the Authorization header, so this
    opens nothing (the test above). Multipart is no JSON: 415 naming the header."""
    for method, path, body in JSON_ROUTES[:5]:
        r = http.request(
            method,
            path,
            content=json.dumps(body).encode(),
            headers={"Content-Type": content_type},
        )
        if content_type == "multipart/form-data":
            assert r.status_code == 415, (method, path, r.text)
            assert "Content-Type: application/json" in r.text, r.text
        else:
            assert r.status_code in (200, 201), (content_type, method, path, r.text)
    if content_type == "multipart/form-data":
        assert [m["name"] for m in http.get("/api/v1/models").json()] == ["m"]
        assert http.get("/api/v1/models/m").json()["aliases"] == {}
    else:
        assert [m["name"] for m in http.get("/api/v1/models").json()] == ["csrf", "m"]
    assert_alive(http)


def test_responses_carry_browser_hardening_headers(http: httpx.Client, anon: httpx.Client) -> None:
    for r in (http.get("/api/v1/models"), anon.get("/api/v1/models"), anon.get("/livez")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
