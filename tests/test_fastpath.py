"""The inference fast path (`api/fastpath.py`) answers exactly as the routed handlers do:
the same app with the fast path taken out is the reference, request for request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelworks.api.app import create_app
from modelworks.api.fastpath import InferFastPath
from modelworks.api.services import Services
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx
from tests.test_access import bearer, deploy, key, v2

Case = tuple[str, str, dict[str, str], Any]


def _routed_only(settings: Settings, svc: Services) -> FastAPI:
    app = create_app(settings, svc)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not InferFastPath]
    return app


@pytest.fixture
def routed(settings: Settings) -> Iterator[httpx.Client]:
    # services of its own: batchers belong to the event loop of the app that made them
    svc = Services.build(settings)
    transport = SyncASGITransport(_routed_only(settings, svc))
    with httpx.Client(transport=transport, base_url="http://testserver") as c:
        yield c
    transport.close()
    svc.close()


def _cases(admin: dict[str, str], reader: dict[str, str], other: dict[str, str]) -> list[Case]:
    embed = "/v1/embeddings"
    return [
        ("POST", "/v2/models/press/infer", admin, v2()),
        ("POST", "/v2/models/press/versions/1/infer", admin, v2(rows=3)),
        ("POST", "/v2/models/press:1/infer", admin, v2()),
        ("POST", "/v2/models/press/versions/9/infer", admin, v2()),
        ("POST", "/v2/models/nope/infer", admin, v2()),
        ("POST", "/v2/models/press/infer", admin, {"inputs": []}),
        ("POST", "/v2/models/press/infer", admin, b"{not json"),
        ("POST", "/v2/models/press/infer", admin, v2(width=3)),
        ("POST", "/v2/models/press/infer", {}, v2()),
        ("POST", "/v2/models/press/infer", {"Authorization": "Bearer mw_wrong"}, v2()),
        ("POST", "/v2/models/press/infer", reader, v2()),
        ("POST", "/v2/models/press/infer", other, v2()),
        ("POST", "/v2/models/press/infer?project=" + "p" * 65, admin, v2()),
        ("POST", "/v2/models/press/infer?project=nowhere", admin, v2()),
        ("POST", embed, admin, {"model": "press", "input": "spindle vibration"}),
        ("POST", embed, admin, {"model": "nope", "input": "spindle vibration"}),
        ("POST", embed, admin, {"input": "spindle vibration"}),
        ("POST", embed, admin, {"model": "press", "input": []}),
        ("POST", embed, admin, {"model": "press", "input": "x", "encoding_format": "hex"}),
        ("POST", embed, admin, b"[1, 2"),
        ("POST", embed, {}, {"model": "press", "input": "x"}),
        ("POST", embed, other, {"model": "press", "input": "x"}),
    ]


def _send(c: httpx.Client, case: Case) -> tuple[int, Any, str | None]:
    method, path, headers, body = case
    if isinstance(body, bytes):
        r = c.request(method, path, headers=headers, content=body)
    else:
        r = c.request(method, path, headers=headers, json=body)
    return r.status_code, r.json(), r.headers.get("www-authenticate")


def test_the_fast_path_answers_as_the_routed_handlers_do(
    http: httpx.Client, anon: httpx.Client, routed: httpx.Client, admin_key: str, tmp_path: Path
) -> None:
    deploy(http, "press", linear_onnx(tmp_path / "press.onnx"))
    assert http.post("/api/v1/projects", json={"name": "plant-b"}).status_code == 201
    reader = bearer(key(http, role="viewer")["key"])
    other = bearer(key(http, role="invoker", project="plant-b")["key"])
    for case in _cases(bearer(admin_key), reader, other):
        fast = _send(anon, case)
        slow = _send(routed, case)
        assert fast == slow, case
    # the cases cover successes and each kind of refusal
    statuses = {_send(anon, c)[0] for c in _cases(bearer(admin_key), reader, other)}
    assert {200, 400, 401, 403, 404} <= statuses
