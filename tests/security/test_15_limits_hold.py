"""SECURITY.md classes 9 and 13: limits that hold.

Limits an admin sets on a project are ceilings: an owner may lower them, never raise or
remove them. A minted key runs under at most its parent's limits. Quotas are reserved before
work runs, atomically in memory and in Redis, so concurrent requests cannot overspend them,
and a single request larger than what is left is refused before it runs; what a request does
not use, or an error answer, is released.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from modelworks import context
from modelworks.api.app import create_app
from modelworks.api.auth import require
from modelworks.api.services import Services
from modelworks.auth.keys import Principal
from modelworks.auth.limits import Limiter, Limits, make_backend
from modelworks.db import upgrade
from modelworks.errors import InvalidInput, TooManyRequests
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx

REDIS_URL = os.environ.get("MODELWORKS_TEST_REDIS_URL", "")
V2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def mint(c: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    r = c.post("/api/v1/keys", json=body, headers=headers)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def message(r: httpx.Response) -> str:
    err = r.json()["error"]
    return str(err if isinstance(err, str) else err["message"])


# who can lift limits ----------------------------------------------------------------------------
def test_an_owner_cannot_raise_or_remove_limits_an_admin_set(
    http: httpx.Client, anon: httpx.Client
) -> None:
    ceiling = {"name": "plant-b", "rate_limit": 50, "burst": 100, "quota": {"requests": 30}}
    assert http.post("/api/v1/projects", json=ceiling).status_code == 201
    owner = bearer(mint(http, role="owner", project="plant-b")["key"])
    viewer = mint(http, role="viewer", project="plant-b")

    for change, named in (
        ({"rate_limit": 1000}, "rate_limit 1000 is above the 50"),
        ({"burst": 400}, "burst 400 is above the 100"),
        ({"quota": {"requests": 10_000}}, "quota.requests 10000 is above the 30"),
        ({"quota": {"requests": 31, "items": 5}}, "quota.requests 31 is above the 30"),
    ):
        r = anon.patch("/api/v1/projects/plant-b", json=change, headers=owner)
        assert r.status_code == 403, (change, r.text)
        assert named in message(r) and "admin" in message(r), message(r)
    # clearing is accepted, but clears only what an owner set: the admin's limits stay
    cleared = {"rate_limit": None, "burst": None, "quota": None}
    r = anon.patch("/api/v1/projects/plant-b", json=cleared, headers=owner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["rate_limit"], body["burst"], body["quota"]) == (50, 100, {"requests": 30})
    shown = http.get(f"/api/v1/keys/{viewer['id']}").json()["limits"]
    assert (shown["rate_limit"], shown["burst"], shown["quota"]) == (50, 100, {"requests": 30})

    # lowering is an owner's right, and binds the project's keys at once
    tighter = {"rate_limit": 20, "burst": 2, "quota": {"requests": 10, "items": 100}}
    r = anon.patch("/api/v1/projects/plant-b", json=tighter, headers=owner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["rate_limit"], body["burst"]) == (20, 2)
    assert body["quota"] == {"items": 100, "requests": 10}
    assert body["ceilings"] == {"rate_limit": 50, "burst": 100, "quota": {"requests": 30}}
    shown = http.get(f"/api/v1/keys/{viewer['id']}").json()["limits"]
    assert (shown["rate_limit"], shown["burst"]) == (20, 2)
    assert shown["quota"] == {"requests": 10, "items": 100}
    assert shown["sources"]["rate"] == "project"
    got = [anon.get("/api/v1/projects", headers=bearer(viewer["key"])) for _ in range(3)]
    assert [g.status_code for g in got] == [200, 200, 429], [g.text for g in got]
    assert "20 requests/s (burst 2)" in message(got[2])
    # an admin's new ceiling replaces what owners set for that limit, and only that one
    r = http.patch("/api/v1/projects/plant-b", json={"quota": {"requests": 500}})
    assert r.status_code == 200 and r.json()["quota"] == {"requests": 500}
    assert (r.json()["rate_limit"], r.json()["burst"]) == (20, 2)


def test_a_minted_key_is_bounded_by_its_parent(http: httpx.Client, anon: httpx.Client) -> None:
    parent = mint(http, role="owner", rate_limit=100, burst=50, quota={"items": 100})
    as_parent = bearer(parent["key"])
    for body, named in (
        ({"rate_limit": 1000}, "rate_limit 1000 is looser than the 100"),
        ({"burst": 500}, "burst 500 is looser than the 50"),
        ({"quota": {"items": 1000}}, "quota.items 1000 is looser than the 100"),
    ):
        r = anon.post("/api/v1/keys", json={"role": "invoker", **body}, headers=as_parent)
        assert r.status_code == 403, (body, r.text)
        assert named in message(r), message(r)

    # nothing asked: the parent's limits are inherited, and shown as the key's own
    plain = mint(anon, as_parent, role="invoker")
    assert (plain["rate_limit"], plain["burst"], plain["quota"]) == (100, 50, {"items": 100})
    detail = http.get(f"/api/v1/keys/{plain['id']}").json()["limits"]
    assert detail["sources"] == {"rate": "key", "burst": "key", "quota.items": "key"}
    # tighter is fine; what is not asked is still inherited
    tight = mint(anon, as_parent, role="invoker", rate_limit=1, quota={"requests": 5})
    detail = http.get(f"/api/v1/keys/{tight['id']}").json()["limits"]
    assert (detail["rate_limit"], detail["burst"]) == (1, 1)
    assert detail["quota"] == {"items": 100, "requests": 5}
    # a rate within the parent's whose own burst would be larger gets the parent's burst
    fast = mint(anon, as_parent, role="developer", rate_limit=100)
    assert (fast["rate_limit"], fast["burst"]) == (100, 50)


def test_a_project_limit_binds_a_key_that_asks_for_more(http: httpx.Client) -> None:
    body = {"name": "plant-c", "rate_limit": 20, "burst": 40, "quota": {"requests": 1000}}
    assert http.post("/api/v1/projects", json=body).status_code == 201
    fast = mint(http, role="invoker", project="plant-c", rate_limit=500, quota={"requests": 10**6})
    shown = http.get(f"/api/v1/keys/{fast['id']}").json()["limits"]
    assert (shown["rate_limit"], shown["burst"], shown["quota"]) == (20, 40, {"requests": 1000})
    assert shown["sources"] == {"rate": "project", "burst": "project", "quota.requests": "project"}


# quotas that hold under concurrency -------------------------------------------------------------
@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.socket)])
def limits_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The in-process backend, and Redis when MODELWORKS_TEST_REDIS_URL names one (a Redis
    that is named but down fails the test)."""
    if request.param == "memory":
        yield "memory://"
        return
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


class Server:
    """An app on the chosen limits backend, with an admin key and one deployed model."""

    def __init__(self, home: Path, limits_url: str) -> None:
        settings = Settings(home=home, allowed_hosts="testserver", limits_url=limits_url)
        settings.home.mkdir(parents=True)
        upgrade(settings.resolved_database_url)
        self.services = Services.build(settings)
        self.transport = SyncASGITransport(create_app(settings, self.services))
        admin = self.services.keys.bootstrap_admin()
        assert admin is not None
        self.http = httpx.Client(
            transport=self.transport, base_url="http://testserver", headers=bearer(admin)
        )

    def deploy(self, onnx: Path) -> None:
        assert self.http.post("/api/v1/models", json={"name": "press"}).status_code == 201
        with onnx.open("rb") as fh:
            r = self.http.post("/api/v1/models/press/versions", files={"file": ("m.onnx", fh)})
        assert r.status_code == 201, r.text
        assert self.http.post("/v2/models/press/infer", json=V2).status_code == 200  # load it

    def at_once(self, n: int, path: str, secret: str, body: Any) -> list[int]:
        """`n` requests started together on the server's event loop."""

        async def send_all() -> list[int]:
            requests = [
                httpx.Request("POST", f"http://testserver{path}", json=body, headers=bearer(secret))
                for _ in range(n)
            ]
            inner = self.transport._inner
            answers = await asyncio.gather(*(inner.handle_async_request(r) for r in requests))
            for a in answers:
                await a.aread()
            return [a.status_code for a in answers]

        return self.transport._portal.call(send_all)

    def close(self) -> None:
        self.transport._portal.call(self.services.limiter.close)
        self.http.close()
        self.services.close()


@pytest.fixture
def server(tmp_path: Path, limits_url: str) -> Iterator[Server]:
    s = Server(tmp_path / "home", limits_url)
    yield s
    s.close()


def test_concurrent_requests_cannot_overspend_a_quota(server: Server, tmp_path: Path) -> None:
    server.deploy(linear_onnx(tmp_path / "m.onnx"))
    k = mint(server.http, role="invoker", quota={"requests": 3})
    statuses = server.at_once(12, "/v2/models/press/infer", k["key"], V2)
    assert sorted(statuses) == [200] * 3 + [429] * 9, statuses
    tf = {"instances": [[1, 2, 3, 4]]}
    assert server.at_once(4, "/v1/models/press:predict", k["key"], tf) == [429] * 4
    rows = server.http.get("/api/v1/usage", params={"group_by": "key", "key": k["id"]}).json()
    assert [(r["requests"], r["errors"]) for r in rows] == [(3, 0)]  # refusals ran nothing

    # failures give back what they held: bad inputs never use up the quota (while in flight
    # they hold it, so concurrent ones may also see 429s: only their sum is bounded)
    k2 = mint(server.http, role="invoker", quota={"requests": 2})
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    for _ in range(3):
        assert server.at_once(2, "/v2/models/press/infer", k2["key"], bad) == [400] * 2
    assert (
        sorted(server.at_once(5, "/v2/models/press/infer", k2["key"], V2)) == [200] * 2 + [429] * 3
    )


def test_each_backend_reserves_atomically(limits_url: str) -> None:
    async def scenario() -> None:
        limiter = Limiter(make_backend(limits_url))
        limits = Limits(quota={"requests": 5, "items": 10, "tokens": 10})
        try:
            taken = await asyncio.gather(
                *(limiter.reserve(7, limits, requests=1) for _ in range(40)),
                return_exceptions=True,
            )
            held = [t for t in taken if not isinstance(t, BaseException)]
            refused = [t for t in taken if isinstance(t, TooManyRequests)]
            assert (len(held), len(refused)) == (5, 35), taken
            assert "daily requests quota of 5 for this key is used up" in refused[0].message

            # five requests of 3 items each against 10 items: three fit, two are refused
            got = await asyncio.gather(
                *(limiter.reserve_more(h, {"items": 3}) for h in held), return_exceptions=True
            )
            too_big = [g for g in got if isinstance(g, TooManyRequests)]
            assert len(too_big) == 2, got
            assert "this request has 3 items but only 1 remain" in too_big[0].message
            assert too_big[0].details["retry_after"] >= 1

            ok = [h for h, g in zip(held, got, strict=True) if g is None]
            # a failed request releases its request and items; a success keeps what it used
            # and releases the rest (2 of its 3 items); tokens known only after the run are
            # charged even past the quota (one overshoot), and the next request is refused
            await limiter.settle(ok[0], None)
            await limiter.settle(ok[1], {"requests": 1, "items": 1, "tokens": 25})
            again = await limiter.reserve(7, Limits(quota={"requests": 5, "items": 10}), requests=1)
            assert again is not None
            await limiter.reserve_more(again, {"items": 6})  # 3 + 1 used: exactly 6 left
            tokens = Limits(quota={"tokens": 10})
            with pytest.raises(TooManyRequests, match="tokens quota of 10 for this key is used up"):
                await limiter.reserve(7, tokens, requests=1)
        finally:
            await limiter.close()

    asyncio.run(scenario())


# a request larger than what is left -------------------------------------------------------------
@pytest.fixture
def engine_probe(app: FastAPI) -> None:
    """A route standing in for the serving engine: it takes its rows through
    `modelworks.context.reserve` before "running", as the engine does, then reports them."""

    async def probe(
        name: str, rows: int, fail: bool = False, p: Principal = Depends(require("infer"))
    ) -> dict[str, int]:
        await context.reserve(items=rows)
        context.note(model=f"{name}:1", items=rows)
        if fail:
            raise InvalidInput("the model could not run on this input")
        return {"rows": rows}

    app.add_api_route("/v2/models/{name}/probe", probe, methods=["POST"])


def test_a_request_larger_than_what_is_left_is_refused_before_it_runs(
    http: httpx.Client, anon: httpx.Client, engine_probe: None
) -> None:
    k = bearer(mint(http, role="invoker", quota={"items": 10, "requests": 100})["key"])

    def run(rows: int, fail: bool = False) -> httpx.Response:
        params = {"rows": rows, "fail": fail}
        return anon.post("/v2/models/press/probe", params=params, headers=k)

    r = run(5000)
    assert r.status_code == 429, r.text
    assert "this request has 5000 items but only 10 remain of the daily items quota of 10" in (
        message(r)
    )
    assert int(r.headers["retry-after"]) >= 1
    assert run(8, fail=True).status_code == 400  # an error gives its items back
    assert run(4).status_code == 200
    r = run(7)
    assert r.status_code == 429 and "only 6 remain" in message(r)
    assert run(6).status_code == 200
    r = run(1)
    assert r.status_code == 429 and "daily items quota of 10 for this key is used up" in message(r)


def test_a_real_inference_larger_than_the_items_left_never_runs(
    http: httpx.Client, anon: httpx.Client, tmp_path: Path
) -> None:
    """The same through the serving engine, on the protocols that carry rows."""
    assert http.post("/api/v1/models", json={"name": "press"}).status_code == 201
    with linear_onnx(tmp_path / "m.onnx").open("rb") as fh:
        r = http.post("/api/v1/models/press/versions", files={"file": ("m.onnx", fh)})
    assert r.status_code == 201, r.text
    k = mint(http, role="invoker", quota={"items": 10})
    rows = [[1.0, 2.0, 3.0, 4.0]] * 5000
    big = {"inputs": [{"name": "x", "shape": [5000, 4], "datatype": "FP32", "data": rows}]}
    for path, body in (
        ("/v2/models/press/infer", big),
        ("/v1/models/press:predict", {"instances": rows}),
    ):
        r = anon.post(path, json=body, headers=bearer(k["key"]))
        assert r.status_code == 429, (path, r.text[:300])
        assert "this request has 5000 items but only 10 remain" in message(r)
    assert anon.post("/v2/models/press/infer", json=V2, headers=bearer(k["key"])).is_success
    used = http.get("/api/v1/usage", params={"group_by": "key", "key": k["id"]}).json()
    # metered as two refused requests and one that ran a single row
    assert [(u["requests"], u["errors"], u["items"]) for u in used] == [(3, 2, 1)]
