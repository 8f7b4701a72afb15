"""The protocol routes' dispatch (`api/routing.py`) answers exactly as FastAPI's routing of the
same routes does: the same app with `Dispatch` taken out is the reference, request for request,
on every protocol route; and every protocol route is in the table `Dispatch` serves from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelworks.api.app import create_app
from modelworks.api.protocols import V2, Described, ProtocolRouter
from modelworks.api.routing import Dispatch, ProtocolRoutes
from modelworks.api.services import Services
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx
from tests.test_access import bearer, deploy, key, v2

Case = tuple[str, str, dict[str, str], Any]


def _routed_only(settings: Settings, svc: Services) -> FastAPI:
    app = create_app(settings, svc)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not Dispatch]
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
        # the rest of every protocol: metadata, readiness, statistics, status, task calls
        ("GET", "/v2", admin, None),
        ("GET", "/v2", {}, None),
        ("GET", "/v2/health/live", {}, None),
        ("GET", "/v2/health/ready", {}, None),
        ("GET", "/v2/models/press", admin, None),
        ("GET", "/v2/models/press/versions/1", reader, None),
        ("GET", "/v2/models/press/ready", admin, None),
        ("GET", "/v2/models/press/versions/1/ready", admin, None),
        ("GET", "/v2/models/stats", admin, None),
        ("GET", "/v2/models/press/stats", admin, None),
        ("GET", "/v2/models/press/versions/1/stats?project=default", admin, None),
        ("GET", "/v2/models/nope/stats", admin, None),
        ("GET", "/v1/models", admin, None),
        ("GET", "/v1/models/press", admin, None),
        ("GET", "/v1/models/press", other, None),
        ("GET", "/v1/models/press/versions/1", admin, None),
        ("GET", "/v1/models/press/labels/production", admin, None),
        ("GET", "/v1/models/press/metadata", admin, None),
        ("GET", "/v1/models/press/versions/1/metadata", admin, None),
        ("GET", "/v1/models/press/labels/x/metadata", admin, None),
        ("POST", "/v1/models/press:predict", admin, {"instances": [[1, 2, 3, 4]]}),
        ("POST", "/v1/models/press/versions/1:predict", admin, {"instances": [[1, 2, 3, 4]]}),
        ("POST", "/v1/models/press/labels/prod:predict", admin, {"instances": [[1, 2, 3, 4]]}),
        ("POST", "/v1/models/press:explain", admin, {"instances": [[1, 2, 3, 4]]}),
        ("POST", "/models/press", admin, {"inputs": "spindle vibration"}),
        ("POST", "/models/press", reader, {"inputs": "spindle vibration"}),
        # a method the path does not take: FastAPI's 405 in the protocol's error shape
        ("GET", "/v2/models/press/infer", admin, None),
        ("DELETE", "/v1/embeddings", admin, None),
        # paths no route takes: 404s in the shape of the protocol that owns the path
        ("POST", "/v2/models/press/explain", admin, v2()),
        ("GET", "/v1/embeddings/x", admin, None),
        ("POST", "/v1/chat/completions", admin, {"model": "press", "messages": []}),
    ]


def _send(c: httpx.Client, case: Case) -> tuple[int, Any, dict[str, str]]:
    method, path, headers, body = case
    if isinstance(body, bytes):
        r = c.request(method, path, headers=headers, content=body)
    else:
        r = c.request(method, path, headers=headers, json=body)
    body = r.json()
    if isinstance(body, dict) and "model_stats" in body:  # counts differ: services of their own
        body = [(m["name"], m["version"]) for m in body["model_stats"]]
    kept = ("www-authenticate", "allow", "x-error-code", "content-type", "retry-after")
    return r.status_code, body, {h: r.headers[h] for h in kept if h in r.headers}


def test_dispatch_answers_as_fastapi_routing_does(
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
    # the cases cover successes and each kind of refusal, in both error shapes
    answers = [_send(anon, c) for c in _cases(bearer(admin_key), reader, other)]
    assert {200, 400, 401, 403, 404, 405, 422} <= {a[0] for a in answers}
    shapes = {type(a[1]["error"]).__name__ for a in answers if a[0] >= 400}
    assert shapes == {"str", "dict"}


def test_every_protocol_route_is_dispatched(app: FastAPI) -> None:
    """Each route the protocol routers declare is in the table Dispatch serves from, under its
    own protocol, and FastAPI documents it."""
    table: ProtocolRoutes = app.state.protocol_routes
    documented = set(app.openapi()["paths"])
    served = 0
    for entries in table.by_segment.values():
        for e in entries:
            served += 1
            for method in e.methods:
                path = e.path
                found = table.resolve(method, path.replace("{", "").replace("}", ""))
                assert found.call is e.call and found.protocol is e.protocol, path
            assert e.path in documented or "HEAD" in e.methods, e.path
    assert served >= 26


def test_a_route_dispatch_cannot_serve_is_refused_at_startup() -> None:
    """An endpoint with a parameter Dispatch would not fill fails when the table is built,
    not with a missing argument at request time."""
    router = ProtocolRouter(V2, prefix="/v2")

    @router.get("/things/{name}")
    async def things(name: str, limit: int) -> dict[str, Any]:
        return {"name": name, "limit": limit}

    with pytest.raises(TypeError, match="limit"):
        ProtocolRoutes(router.described)
    assert isinstance(router.described[0], Described)
