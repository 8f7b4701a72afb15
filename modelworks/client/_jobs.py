"""`client.jobs`: list, show, cancel and follow background jobs (ONNX exports, training...).

    for event in client.jobs.follow(7):      # every event so far, then live ones
        print(event["type"], event["data"])  # status, progress or log
    client.jobs.get(7)["status"]             # succeeded, failed or cancelled by now

`follow` reads the server's event stream (Server-Sent Events) and returns once the job has
finished; a dropped connection is resumed where it stopped (`Last-Event-ID`), so no event is
lost or repeated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx

from modelworks.client._base import Call, raise_for
from modelworks.errors import ServerUnreachable

TERMINAL = ("succeeded", "failed", "cancelled")
# a quiet stream carries a comment every 15 s: a read waiting far longer means a dead link
FOLLOW_TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=60.0)
RESUMES = 2  # reconnections in a row without a new event before `follow` gives up


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class EventStream:
    """Parses `text/event-stream` lines into events (the HTML standard's rules): `:` comments
    are skipped, `data` lines join with newlines, a blank line ends an event."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.type = ""
        self.data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        """The event `line` completes, if any, as {"id", "type", "at", "data"}."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.type = value
        elif name == "id" and "\0" not in value:
            self.id = value
        return None  # `retry` and unknown fields: nothing to do

    def _dispatch(self) -> dict[str, Any] | None:
        data, self.data = self.data, []
        kind, self.type = self.type or "message", ""
        if not data:
            return None
        text = "\n".join(data)
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        if not isinstance(body, dict):
            body = {"value": body}
        event_id = int(self.id) if self.id is not None and self.id.isdigit() else None
        return {"id": event_id, "type": kind, "at": body.pop("at", None), "data": body}


def finished(event: dict[str, Any]) -> bool:
    return event["type"] == "status" and event["data"].get("status") in TERMINAL


class _Calls:
    """The plain calls, built once; the client runs them (sync, or awaited)."""

    def __init__(self, execute: Callable[[Call], Any]) -> None:
        self._execute = execute

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> Any:
        """The project's jobs, newest first (`before`: older than this id, to page on).
        `status`: queued, running, succeeded, failed or cancelled."""
        params = _params(status=status, kind=kind, limit=limit, before=before)
        return self._execute(Call("GET", "/api/v1/jobs", params=params))

    def get(self, job_id: int) -> Any:
        """One job: status, phase, progress, params, result, error, attempts, times."""
        return self._execute(Call("GET", f"/api/v1/jobs/{int(job_id)}"))

    def cancel(self, job_id: int) -> Any:
        """Cancel a job: a queued one ends at once; a running one is flagged
        (`cancel_requested`) and stops within seconds. A finished job is a `Conflict`."""
        return self._execute(Call("POST", f"/api/v1/jobs/{int(job_id)}/cancel"))

    def logs(self, job_id: int, *, after: int = 0, limit: int = 500) -> Any:
        """A page of the job's log lines: {"job", "lines": [{"id", "at", "line"}], "next"};
        pass `next` as `after` for the page that follows."""
        params = {"after": after, "limit": limit}
        return self._execute(Call("GET", f"/api/v1/jobs/{int(job_id)}/logs", params=params))


def _headers(seen: int) -> dict[str, str]:
    # identity: a compressing proxy could otherwise hold events back to fill its blocks
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
    if seen:
        headers["Last-Event-ID"] = str(seen)
    return headers


class _Follow:
    """Where a follower stands across reconnections: the last event id, and how many
    connections in a row ended without a new event."""

    def __init__(self, url: str, job_id: int, after: int) -> None:
        self.url = url
        self.job_id = job_id
        self.seen = after
        self.failures = 0
        self.done = False
        self.got = False  # the current connection brought an event

    def connected(self) -> None:
        self.got = False

    def took(self, event: dict[str, Any]) -> None:
        self.failures = 0
        self.got = True
        self.seen = event["id"] or self.seen
        self.done = finished(event)

    def ended(self) -> bool:
        """The stream closed cleanly: the server does so once the job has finished and
        everything was sent, so resume only if this connection brought events (a proxy may
        close a stream between two events); a fresh one that brought none means done."""
        return self.done or not self.got

    def dropped(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures > RESUMES:
            raise ServerUnreachable(
                f"lost the event stream of job {self.job_id} at {self.url} "
                f"{self.failures} times in a row ({type(exc).__name__}); check the server, "
                f"then resume with `modelworks jobs follow {self.job_id}`"
            ) from None


class Jobs(_Calls):
    """`client.jobs` of the synchronous `Client`."""

    def __init__(self, http: httpx.Client, url: str, execute: Callable[[Call], Any]) -> None:
        super().__init__(execute)
        self._http = http
        self._url = url

    def follow(self, job_id: int, *, after: int = 0) -> Iterator[dict[str, Any]]:
        """Yield the job's events, {"id", "type", "at", "data"}, from the first (or those
        after event id `after`) until its final status, then return. `type` is "status"
        (data: status, error...), "progress" (phase, progress 0-1, step, metrics, message,
        eta_s) or "log" (line). A dropped connection is resumed from the last event."""
        state = _Follow(self._url, job_id, after)
        path = f"/api/v1/jobs/{int(job_id)}/events"
        while True:
            try:
                with self._http.stream(
                    "GET", path, headers=_headers(state.seen), timeout=FOLLOW_TIMEOUT
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise_for(response)
                    state.connected()
                    stream = EventStream()
                    for line in response.iter_lines():
                        event = stream.feed(line)
                        if event is not None:
                            state.took(event)
                            yield event
                            if state.done:
                                return
                if state.ended():
                    return
            except httpx.TransportError as exc:
                state.dropped(exc)


class AsyncJobs(_Calls):
    """`client.jobs` of `AsyncClient`: the same methods, awaited; `follow` is an async
    iterator (`async for event in client.jobs.follow(7)`)."""

    def __init__(
        self, http: httpx.AsyncClient, url: str, execute: Callable[[Call], Awaitable[Any]]
    ) -> None:
        super().__init__(execute)
        self._http = http
        self._url = url

    async def follow(self, job_id: int, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """As `Jobs.follow`, asynchronously."""
        state = _Follow(self._url, job_id, after)
        path = f"/api/v1/jobs/{int(job_id)}/events"
        while True:
            try:
                async with self._http.stream(
                    "GET", path, headers=_headers(state.seen), timeout=FOLLOW_TIMEOUT
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise_for(response)
                    state.connected()
                    stream = EventStream()
                    async for line in response.aiter_lines():
                        event = stream.feed(line)
                        if event is not None:
                            state.took(event)
                            yield event
                            if state.done:
                                return
                if state.ended():
                    return
            except httpx.TransportError as exc:
                state.dropped(exc)
