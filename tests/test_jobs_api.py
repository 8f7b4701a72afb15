"""Jobs through the SDK (`client.jobs`) and the event stream: listing, paging, cancelling,
logs, roles and projects, and following a job live over a real socket: resumed after a
dropped connection, kept alive while quiet, ended when the job ends or the client leaves.
The test plays the worker through the real queue (claim, report, succeed, fail)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import modelworks.api.jobs
from modelworks.api.services import Services
from modelworks.client import AsyncClient, Client
from modelworks.client._jobs import EventStream
from modelworks.errors import Conflict, Forbidden, NotFound, ServerUnreachable, ValidationFailed
from modelworks.jobs.queue import JobView
from tests.asgi import SyncASGITransport
from tests.conftest import LiveServer


def new_key(client: Client, **body: Any) -> str:
    secret: str = client.create_key(**body)["key"]
    return secret


def as_key(transport: SyncASGITransport, secret: str) -> Client:
    return Client("http://testserver", secret, transport=transport)


def finished_job(services: Services, model: str = "pump", logs: int = 1) -> JobView:
    """A job that ran and succeeded: queued, running, two progress events, logs, succeeded."""
    job = services.jobs.enqueue(services.default_project_id, "export", {"model": model})
    assert services.jobs.claim("w") is not None
    for step in (1, 2):
        progress = {"phase": "train", "progress": step / 2, "step": step}
        assert services.jobs.report(job.id, "w", [{**progress, "metrics": {"loss": 1 / step}}])
    assert services.jobs.report(job.id, "w", logs=[f"line {i}" for i in range(logs)])
    assert services.jobs.succeed(job.id, "w", {"accuracy": 0.9})
    return job


# the plain calls ----------------------------------------------------------------------------
def test_list_get_logs_and_cancel_through_the_sdk(
    database_url: str, client: Client, services: Services
) -> None:
    pid = services.default_project_id
    a = services.jobs.enqueue(pid, "export", {"model": "pump", "version": 1})
    b = services.jobs.enqueue(pid, "export", {"model": "press", "version": 2})
    assert [j["id"] for j in client.jobs.list()] == [b.id, a.id]
    assert [j["id"] for j in client.jobs.list(limit=1, before=b.id)] == [a.id]
    assert client.jobs.list(kind="train") == []
    with pytest.raises(ValidationFailed, match="queued, running, succeeded"):
        client.jobs.list(status="done")
    with pytest.raises(ValidationFailed):
        client.jobs.list(limit=501)

    assert services.jobs.claim("w") is not None  # a runs
    assert services.jobs.report(a.id, "w", logs=[f"line {i}" for i in range(7)])
    page = client.jobs.logs(a.id, limit=4)
    assert [x["line"] for x in page["lines"]] == [f"line {i}" for i in range(4)]
    rest = client.jobs.logs(a.id, after=page["next"], limit=4)
    assert [x["line"] for x in rest["lines"]] == [f"line {i}" for i in range(4, 7)]
    assert client.jobs.logs(a.id, after=rest["next"])["lines"] == []

    queued = client.jobs.cancel(b.id)
    assert queued["status"] == "cancelled" and queued["finished_at"] is not None
    running = client.jobs.cancel(a.id)
    assert (running["status"], running["cancel_requested"]) == ("running", True)
    assert services.jobs.heartbeat(a.id, "w") == "cancel"  # what makes its worker stop it
    assert services.jobs.cancelled(a.id, "w")
    assert client.jobs.get(a.id)["status"] == "cancelled"
    with pytest.raises(Conflict, match="already cancelled"):
        client.jobs.cancel(a.id)
    with pytest.raises(NotFound, match="modelworks jobs list"):
        client.jobs.get(10**9)
    cancels = client.audit(action="job.cancel")
    assert sorted(e["target"] for e in cancels) == sorted([f"job:{a.id}", f"job:{b.id}"])


def test_roles_projects_and_model_allowlists(
    client: Client, services: Services, transport: SyncASGITransport
) -> None:
    pid = services.default_project_id
    pump = services.jobs.enqueue(pid, "export", {"model": "pump"})
    newer = [services.jobs.enqueue(pid, "export", {"model": "press"}) for _ in range(3)]
    client.create_project("tenant-b")
    outsider = as_key(transport, new_key(client, role="owner", project="tenant-b"))
    for call in (outsider.jobs.get, outsider.jobs.logs, outsider.jobs.cancel):
        with pytest.raises(NotFound):
            call(pump.id)
    with pytest.raises(NotFound):
        list(outsider.jobs.follow(pump.id))
    assert outsider.jobs.list() == []

    viewer = as_key(transport, new_key(client, role="viewer"))
    assert viewer.jobs.get(pump.id)["id"] == pump.id
    with pytest.raises(Forbidden):
        viewer.jobs.cancel(pump.id)
    invoker = as_key(transport, new_key(client, role="invoker"))
    with pytest.raises(Forbidden):
        invoker.jobs.list()

    # a key limited to pump: press jobs are missing, and hiding them never cuts a page short
    limited = as_key(transport, new_key(client, role="developer", models=["pump"]))
    assert [j["id"] for j in limited.jobs.list(limit=1)] == [pump.id]
    assert [j["id"] for j in limited.jobs.list(limit=2, before=newer[-1].id)] == [pump.id]
    with pytest.raises(NotFound):
        limited.jobs.logs(newer[0].id)
    with pytest.raises(NotFound):
        list(limited.jobs.follow(newer[0].id))
    assert limited.jobs.cancel(pump.id)["status"] == "cancelled"


# the event stream ---------------------------------------------------------------------------
@pytest.mark.socket
def test_follow_live_sync_then_resume_async(
    database_url: str, live_server: LiveServer, services: Services, admin_key: str
) -> None:
    job = services.jobs.enqueue(services.default_project_id, "export", {"model": "pump"})

    def work() -> None:
        while services.jobs.claim("w") is None:
            time.sleep(0.05)
        for step in range(3):
            time.sleep(0.1)
            metrics = {"loss": 1.0 / (step + 1)}
            services.jobs.report(job.id, "w", [{"progress": (step + 1) / 4, "metrics": metrics}])
        services.jobs.report(job.id, "w", logs=["saved model.onnx"])
        services.jobs.fail(job.id, "w", "out of memory", retry=False)

    worker = threading.Thread(target=work)
    worker.start()
    with Client(live_server.url, admin_key) as c:
        events = list(c.jobs.follow(job.id))  # returns by itself after the final status
    worker.join()
    assert [e["type"] for e in events] == ["status", "status", *["progress"] * 3, "log", "status"]
    assert [e["data"]["metrics"]["loss"] for e in events if e["type"] == "progress"] == [
        1.0,
        0.5,
        pytest.approx(1 / 3),
    ]
    assert events[-1]["data"] == {"status": "failed", "error": "out of memory"}
    assert all(isinstance(e["id"], int) and e["at"] for e in events)

    async def rest_after(after: int) -> list[dict[str, Any]]:
        async with AsyncClient(live_server.url, admin_key) as c:
            return [e async for e in c.jobs.follow(job.id, after=after)]

    assert asyncio.run(rest_after(events[3]["id"])) == events[4:]
    assert asyncio.run(rest_after(events[-1]["id"])) == []


@pytest.mark.socket
def test_stream_format_headers_and_resume_point(
    live_server: LiveServer, services: Services, admin_key: str
) -> None:
    job = finished_job(services)
    url = f"{live_server.url}/api/v1/jobs/{job.id}/events"
    auth = {"Authorization": f"Bearer {admin_key}"}
    # a client that accepts gzip still gets the stream as it is made: nothing compresses it
    with httpx.stream("GET", url, headers={**auth, "Accept-Encoding": "gzip"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in r.headers
        # the route's own Cache-Control, once: the security headers add no-store only where
        # a route set none
        assert r.headers.get_list("cache-control") == ["no-cache"]
        assert r.headers["x-accel-buffering"] == "no"
        text = r.read().decode()
    ids = [e.id for e in services.jobs.events(job.id)]
    messages = text.split("\n\n")
    assert messages[-1] == "" and len(messages) == len(ids) + 1
    head = messages[0].split("\n")
    assert head[:2] == [f"id: {ids[0]}", "event: status"]
    assert json.loads(head[2].removeprefix("data: "))["status"] == "queued"

    def ids_after(params: dict[str, str], headers: dict[str, str]) -> list[int]:
        with httpx.stream("GET", url, params=params, headers={**auth, **headers}) as r:
            assert r.status_code == 200, r.read()
            return [int(x[4:]) for x in r.iter_lines() if x.startswith("id: ")]

    assert ids_after({"after": str(ids[2])}, {}) == ids[3:]
    # an EventSource reconnects to its first URL with the last id it saw: the later one wins
    assert ids_after({"after": str(ids[0])}, {"Last-Event-ID": str(ids[4])}) == ids[5:]
    bad = httpx.get(url, params={"after": "-1"}, headers=auth)
    assert bad.status_code == 422


class CutStream(httpx.SyncByteStream):
    """A response body cut off (as by a dropped connection) after `events` whole events and
    a few bytes of the next."""

    def __init__(self, inner: httpx.SyncByteStream, events: int) -> None:
        self.inner = inner
        self.events = events

    def __iter__(self) -> Iterator[bytes]:
        buffered = b""
        for chunk in self.inner:
            buffered += chunk
            if buffered.count(b"\n\n") > self.events:
                end = 0
                for _ in range(self.events):
                    end = buffered.index(b"\n\n", end) + 2
                yield buffered[: end + 5]  # half an event: never seen as one
                raise httpx.ReadError("connection reset by peer")
        yield buffered

    def close(self) -> None:
        self.inner.close()


class Flaky(httpx.BaseTransport):
    """The real network, except that the first `cuts` event streams break after `events`."""

    def __init__(self, cuts: int, events: int) -> None:
        self.real = httpx.HTTPTransport()
        self.cuts = cuts
        self.events = events
        self.resumed_from: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.real.handle_request(request)
        if request.url.path.endswith("/events"):
            self.resumed_from.append(request.headers.get("last-event-id"))
            if self.cuts:
                self.cuts -= 1
                assert isinstance(response.stream, httpx.SyncByteStream)
                response.stream = CutStream(response.stream, self.events)
        return response

    def close(self) -> None:
        self.real.close()


@pytest.mark.socket
def test_follow_resumes_a_dropped_stream_where_it_stopped(
    live_server: LiveServer, services: Services, admin_key: str
) -> None:
    job = finished_job(services, logs=3)
    ids = [e.id for e in services.jobs.events(job.id)]
    flaky = Flaky(cuts=2, events=2)
    with Client(live_server.url, admin_key, transport=flaky) as c:
        events = list(c.jobs.follow(job.id))
    assert [e["id"] for e in events] == ids  # each once, in order
    assert flaky.resumed_from == [None, str(ids[1]), str(ids[3])]
    assert events[-1]["data"]["status"] == "succeeded"

    # a stream that keeps breaking before any new event: give up, saying what to do
    always = Flaky(cuts=10, events=0)
    with (
        Client(live_server.url, admin_key, transport=always) as c,
        pytest.raises(ServerUnreachable, match=f"modelworks jobs follow {job.id}"),
    ):
        list(c.jobs.follow(job.id))
    assert len(always.resumed_from) == 3


@pytest.mark.socket
def test_quiet_stream_kept_alive_and_ended_by_a_cancel(
    live_server: LiveServer, services: Services, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelworks.api.jobs, "KEEPALIVE_S", 0.2)
    job = services.jobs.enqueue(services.default_project_id, "export", {"model": "pump"})
    url = f"{live_server.url}/api/v1/jobs/{job.id}/events"
    lines = []
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {admin_key}"}) as r:
        for line in r.iter_lines():
            lines.append(line)
            if line == ": keep-alive":
                services.jobs.cancel(job.id)  # queued: ends at once, and so does the stream
    events = parse(lines)
    assert [e["data"]["status"] for e in events] == ["queued", "cancelled"]
    assert ": keep-alive" in lines


def parse(lines: list[str]) -> list[dict[str, Any]]:
    stream = EventStream()
    return [e for e in map(stream.feed, lines) if e is not None]


def test_event_stream_parser_follows_the_standard() -> None:
    lines = [
        ": a comment",
        "retry: 3000",
        "id: 4",
        "event: log",
        'data: {"line":',
        'data:"two\\nlines"}',
        "",
        "",
        "data: not json",
        "",
    ]
    assert parse(lines) == [
        {"id": 4, "type": "log", "at": None, "data": {"line": "two\nlines"}},
        # the last id stands until another comes (the standard's "last event ID")
        {"id": 4, "type": "message", "at": None, "data": {"value": "not json"}},
    ]


def counting(services: Services) -> Callable[[], int]:
    """How many times the server has read the job's events so far."""
    calls = 0
    real = services.jobs.events

    def events(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    services.jobs.events = events  # type: ignore[method-assign]
    return lambda: calls


@pytest.mark.socket
def test_stream_stops_when_the_client_leaves(
    live_server: LiveServer, services: Services, admin_key: str
) -> None:
    job = services.jobs.enqueue(services.default_project_id, "export", {"model": "pump"})
    reads = counting(services)
    url = f"{live_server.url}/api/v1/jobs/{job.id}/events"
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {admin_key}"}) as r:
        assert next(r.iter_lines()).startswith("id: ")
    # the job is still queued: a stream that outlived its client would poll on forever
    deadline = time.monotonic() + 15
    quiet = False
    while not quiet and time.monotonic() < deadline:
        before = reads()
        time.sleep(4 * modelworks.api.jobs.POLL_S)
        quiet = reads() == before
    assert quiet, "the server kept polling for a client that had gone"


@pytest.mark.socket
def test_stream_ends_when_the_job_goes_with_its_project(
    live_server: LiveServer, services: Services, admin_key: str, client: Client
) -> None:
    client.create_project("tenant-b")
    pid = services.registry.project_id("tenant-b")
    job = services.jobs.enqueue(pid, "export", {"model": "pump"})
    url = f"{live_server.url}/api/v1/jobs/{job.id}/events"
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.stream("GET", url, params={"project": "tenant-b"}, headers=headers) as r:
        lines = []
        for line in r.iter_lines():  # a broken stream would raise here
            lines.append(line)
            if not line:
                client.delete_project("tenant-b")
    assert [e["data"]["status"] for e in parse(lines)] == ["queued"]
