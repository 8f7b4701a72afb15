"""SECURITY.md class 6: SSRF.

Modelworks has no fetch-by-URL feature and no webhooks. These tests are the guard that keeps it
so until the SSRF rule (https only, admin allow-list, connected IP checked on every redirect)
is implemented with it: the OpenAPI document has no URL-like parameter or field, no callbacks
or links; the server code imports no HTTP client; and URLs sent in every free-text field are
stored or refused as data, never connected to.
"""

from __future__ import annotations

import ast
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import modelworks
from modelworks.api.services import Services
from modelworks.settings import Settings
from tests.models import linear_onnx

URL_LIKE = re.compile(
    r"url|uri|href|link|webhook|callback|redirect|endpoint|fetch|remote|download|proxy|host",
    re.IGNORECASE,
)
# the SDK and the CLI are clients by design; everything else runs inside the server
CLIENT_SIDE = {"client", "cli.py"}
HTTP_CLIENTS = {
    "requests",
    "httpx",
    "aiohttp",
    "urllib3",
    "urllib.request",
    "http.client",
    "pycurl",
    "websockets",
}
TARGETS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://127.0.0.1:6379/",
    "http://[::1]:8000/api/v1/keys",
    "https://metadata.google.internal/computeMetadata/v1/",
    "file:///etc/passwd",
    "gopher://localhost:11211/_stats",
]
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
TMP_CHILDREN = {"home", "m.onnx"}


def names_in(document: Any) -> Iterator[tuple[str, str]]:
    """(where, name) for every parameter, property and form field of the document."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    yield from ((f"{where}.properties", name) for name in value)
                if key == "parameters" and isinstance(value, list):
                    yield from ((f"{where}.parameters", p.get("name", "")) for p in value)
                stack.append((f"{where}/{key}", value))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(node))


@pytest.fixture(autouse=True)
def nothing_outside_the_store(settings: Settings, tmp_path: Path) -> Iterator[None]:
    """After each test: the home holds only the database and the store, and the test's folder
    only the files the test itself wrote."""
    yield
    assert {p.name for p in settings.home.iterdir()} <= HOME_CHILDREN
    assert {p.name for p in tmp_path.iterdir()} <= TMP_CHILDREN


def test_openapi_has_no_url_like_inputs(app: FastAPI) -> None:
    document = app.openapi()
    found = list(names_in(document))
    assert {"name", "model", "file", "description"} <= {name for _, name in found}

    assert [(where, name) for where, name in found if URL_LIKE.search(name)] == []
    text = str(document)
    assert "'format': 'uri'" not in text and "'format': 'url'" not in text
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert "callbacks" not in op, (method, path)
            for response in op.get("responses", {}).values():
                assert "links" not in response, (method, path)
    assert "servers" not in document


def server_modules() -> Iterator[Path]:
    package = Path(modelworks.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] not in CLIENT_SIDE:
            yield path


def test_server_code_imports_no_http_client() -> None:
    found = []
    modules = list(server_modules())
    assert len(modules) > 20
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found += [(path.name, n) for n in imported if n in HTTP_CLIENTS]
    assert found == []


# URLs in every free-text field are data --------------------------------------------------------
@pytest.fixture
def no_outbound(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and block) every name lookup and outbound connection made while a test runs."""
    attempts: list[Any] = []

    def lookup(*args: Any, **kwargs: Any) -> Any:
        attempts.append(("getaddrinfo", args))
        raise OSError("outbound network is blocked in this test")

    def connect(self: socket.socket, address: Any) -> None:
        attempts.append(("connect", address))
        raise OSError("outbound network is blocked in this test")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> None:
        attempts.append(("create_connection", address))
        raise OSError("outbound network is blocked in this test")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    return attempts


@pytest.mark.parametrize("target", TARGETS)
def test_urls_in_requests_are_never_fetched(
    http: httpx.Client,
    services: Services,
    tmp_path: Path,
    no_outbound: list[Any],
    target: str,
) -> None:
    onnx = linear_onnx(tmp_path / "m.onnx").read_bytes()
    assert http.post("/api/v1/models", json={"name": "m"}).status_code == 201
    infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/models", {"json": {"name": target}}),
        ("POST", "/api/v1/models", {"json": {"name": "n", "description": target}}),
        ("POST", "/api/v1/models", {"json": {"name": "o", "url": target}}),
        ("POST", "/api/v1/models", {"json": {"name": "p", "tags": {"source": target}}}),
        ("PATCH", "/api/v1/models/m", {"json": {"description": target}}),
        ("POST", "/api/v1/models/m/versions", {"files": {"file": (target, onnx)}}),
        ("POST", "/api/v1/models/m/versions", {"data": {"url": target}}),
        ("POST", "/api/v1/models/m/versions", {"files": {"file": ("m.onnx", target.encode())}}),
        ("POST", "/api/v1/keys", {"json": {"name": target, "role": "viewer"}}),
        ("POST", "/api/v1/projects", {"json": {"name": "q", "description": target}}),
        ("POST", "/v2/models/m/infer", {"json": {**infer, "id": target}}),
        ("POST", "/v1/embeddings", {"json": {"model": target, "input": target}}),
        ("POST", "/v1/models/m:predict", {"json": {"instances": [[1, 2, 3, 4]], "url": target}}),
        ("POST", "/models/m", {"json": {"inputs": target}}),
        ("GET", "/api/v1/models", {"params": {"project": target}}),
    ]

    statuses = []
    for method, path, kwargs in calls:
        r = http.request(method, path, **kwargs)
        assert r.status_code < 500, (method, path, r.text)
        statuses.append(r.status_code)

    assert no_outbound == []
    assert 201 in statuses  # some URLs were accepted, as plain text
    assert http.get("/livez").status_code == 200


def test_hugging_face_loads_never_reach_the_hub() -> None:
    """A folder's config.json could name a Hub repository (or remote code) to fetch: every
    `from_pretrained` in the server stays offline and runs no remote code."""
    calls = []
    for path in server_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                options = {
                    k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)
                }
                calls.append((path.name, node.lineno, options))
    assert calls, "no from_pretrained call found: update this guard"
    for where, line, options in calls:
        assert options.get("local_files_only") is True, (where, line)
        assert options.get("trust_remote_code", False) is False, (where, line)
