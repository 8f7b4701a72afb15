"""Jobs over REST: list, show, cancel, follow (Server-Sent Events) and logs.

Jobs belong to the key's project; a key limited to some models sees only the jobs of those
models (others are as missing as the models). Reading needs the `read` permission, cancelling
`write` (and is audited).

`GET /api/v1/jobs/{id}/events` is an event stream (`text/event-stream`): every event so far,
then new ones as the job makes them (polled from the database twice a second), one per
message as `id`, `event` (status, progress or log) and `data` (JSON); a comment every 15 s
keeps proxies from closing a quiet stream. It ends after the job's final status. A follower
that reconnects with `Last-Event-ID` (or `?after=`) gets only what it has not seen.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.requests import Request
from starlette.responses import StreamingResponse

from modelworks.api.auth import audit_action, require
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.errors import NotFound, ValidationFailed
from modelworks.jobs.queue import EVENT_PAGE, STATUSES, TERMINAL, EventView, JobQueue, JobView

router = APIRouter(prefix="/api/v1", tags=["jobs"])
POLL_S = 0.5
KEEPALIVE_S = 15.0
MAX_ID = 2**63 - 1


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    model: str | None
    params: dict[str, Any]
    result: dict[str, Any]
    error: str
    progress: float
    phase: str
    attempts: int
    max_attempts: int
    worker: str
    cancel_requested: bool
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: JobView) -> JobOut:
        model = job.params.get("model")
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            model=model if isinstance(model, str) else None,
            params=job.params,
            result=job.result,
            error=job.error,
            progress=job.progress,
            phase=job.phase,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            worker=job.worker,
            cancel_requested=job.cancel_requested,
            created_by=job.created_by,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class LogLine(BaseModel):
    id: int
    at: datetime
    line: str


class Logs(BaseModel):
    job: int
    lines: list[LogLine]
    next: int


def _sees(p: Principal, job: JobView) -> bool:
    """A model-limited key sees only the jobs of its models (a job of no model: none)."""
    model = job.params.get("model")
    return p.models is None or (isinstance(model, str) and p.allows_model(model))


def _visible(job: JobView, p: Principal) -> JobView:
    if not _sees(p, job):
        raise NotFound(
            f"job {job.id} not found; list jobs with `modelworks jobs list`",
            details={"job": job.id},
        )
    return job


async def _job(request: Request, p: Principal, job_id: int) -> JobView:
    svc = services(request)
    job = await to_thread.run_sync(svc.jobs.get, job_id, p.project_id)
    return _visible(job, p)


@router.get("/jobs", response_model=list[JobOut])
async def list_jobs(
    request: Request,
    p: Principal = Depends(require("read")),
    status: str | None = Query(None, max_length=16, description=f"One of {', '.join(STATUSES)}."),
    kind: str | None = Query(None, max_length=32, description="Only jobs of this kind."),
    limit: int = Query(50, ge=1, le=500, description="At most this many, newest first."),
    before: int | None = Query(None, ge=1, le=MAX_ID, description="Jobs older than this id."),
) -> list[JobOut]:
    """The project's jobs, newest first."""
    if status is not None and status not in STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    svc = services(request)

    def page() -> list[JobView]:
        """`limit` jobs the key may see: a model-limited key's page is filled from further
        pages, so hidden jobs never end its listing early."""
        shown: list[JobView] = []
        below = before
        size = limit if p.models is None else 500  # few queries however many are hidden
        while len(shown) < limit:
            jobs = svc.jobs.list_jobs(
                p.project_id, status=status, kind=kind, limit=size, before=below
            )
            shown += [j for j in jobs if _sees(p, j)][: limit - len(shown)]
            if len(jobs) < size:
                break
            below = jobs[-1].id
        return shown

    return [JobOut.of(j) for j in await to_thread.run_sync(page)]


class JobCreate(BaseModel):
    """A job to run. Kind `train`: `recipe`, `dataset` (NAME or NAME:VERSION), `target` (the
    column to predict; default the dataset's label), `model` (registered under this name,
    created if new), `params` (the recipe's; see the README), `workers` (data-parallel ranks),
    `promote_to` and `promote_if` (move that alias when the test metrics hold, e.g.
    `{"accuracy": ">=0.9"}`)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(max_length=32)
    recipe: str | None = Field(None, max_length=64)
    dataset: str | None = Field(None, max_length=140)
    target: str | None = Field(None, max_length=256)
    model: str | None = Field(None, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict, max_length=64)
    workers: StrictInt = 1
    promote_to: str | None = Field(None, max_length=200)
    promote_if: dict[str, str] = Field(default_factory=dict, max_length=16)


SUBMITTABLE = ("train",)


@router.post("/jobs", status_code=201, response_model=JobOut)
async def submit_job(
    body: JobCreate, request: Request, p: Principal = Depends(require("write"))
) -> JobOut:
    """Submit a job (kind `train`); everything that can be checked is checked now, so a bad
    request is a 422 here rather than a failed job later. Follow it with
    `GET /api/v1/jobs/{id}/events`."""
    from modelworks.jobs.train import KIND, submit_params

    if body.kind not in SUBMITTABLE:
        raise ValidationFailed(
            f"unknown job kind {body.kind!r}; submit one of {', '.join(SUBMITTABLE)} "
            "(exports are queued by uploads themselves)"
        )
    svc = services(request)
    fields = body.model_dump(exclude_unset=True)
    params = await to_thread.run_sync(
        submit_params, fields, p, svc.registry, svc.datasets, svc.settings
    )
    job = await to_thread.run_sync(
        partial(svc.jobs.enqueue, p.project_id, KIND, params, created_by=p.prefix)
    )
    await to_thread.run_sync(
        partial(audit_action, request, p, "job.submit", f"job:{job.id}", kind=KIND)
    )
    return JobOut.of(job)


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: int, request: Request, p: Principal = Depends(require("read"))) -> JobOut:
    return JobOut.of(await _job(request, p, _id(job_id)))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
async def cancel_job(
    job_id: int, request: Request, p: Principal = Depends(require("write"))
) -> JobOut:
    """Cancel a job: a queued one ends at once; a running one stops within seconds (its
    worker sees the request at its next heartbeat). A finished job answers 409."""
    await _job(request, p, _id(job_id))
    svc = services(request)
    job = await to_thread.run_sync(svc.jobs.cancel, job_id, p.project_id)
    await to_thread.run_sync(
        partial(audit_action, request, p, "job.cancel", f"job:{job_id}", status=job.status)
    )
    return JobOut.of(job)


@router.get("/jobs/{job_id}/logs", response_model=Logs)
async def job_logs(
    job_id: int,
    request: Request,
    p: Principal = Depends(require("read")),
    after: int = Query(0, ge=0, le=MAX_ID, description="Lines after this id."),
    limit: int = Query(500, ge=1, le=5000, description="At most this many lines."),
) -> Logs:
    await _job(request, p, _id(job_id))
    svc = services(request)
    events = await to_thread.run_sync(
        lambda: svc.jobs.events(job_id, after=after, limit=limit, types=("log",))
    )
    lines = [LogLine(id=e.id, at=e.at, line=str(e.data.get("line", ""))) for e in events]
    return Logs(job=job_id, lines=lines, next=lines[-1].id if lines else after)


@router.get("/jobs/{job_id}/events")
async def job_events(
    job_id: int,
    request: Request,
    p: Principal = Depends(require("read")),
    after: int | None = Query(None, ge=0, le=MAX_ID, description="Events after this id."),
    last_event_id: str | None = Header(None, max_length=20),
) -> StreamingResponse:
    """The job's events as Server-Sent Events, until it has finished."""
    await _job(request, p, _id(job_id))
    # a reconnecting EventSource sends its original URL (maybe with ?after=) and the id it
    # saw last: ids only grow, so the larger of the two is where it stands
    start = max(after or 0, _last_id(last_event_id))
    svc = services(request)

    async def stream() -> AsyncIterator[bytes]:
        seen = start
        quiet_since = time.monotonic()
        while True:
            events = await to_thread.run_sync(partial(svc.jobs.events, job_id, after=seen))
            for e in events:
                seen = e.id
                yield _message(e)
            if events:
                quiet_since = time.monotonic()
            if any(e.type == "status" and e.data.get("status") in TERMINAL for e in events):
                return
            if len(events) == EVENT_PAGE:
                continue  # catching up on a long history: no pause between pages
            if not events and await to_thread.run_sync(_ended, svc.jobs, job_id, seen):
                return
            if await request.is_disconnected():
                return
            if time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(POLL_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _ended(queue: JobQueue, job_id: int, seen: int) -> bool:
    """Whether a follower that saw up to `seen` has nothing more coming: the job finished
    and its final status was sent (or came before where the follower started), or the job
    is gone (its project was deleted)."""
    try:
        job = queue.get(job_id)
    except NotFound:
        return True
    return job.done and not queue.events(job_id, after=seen, limit=1)


def _message(e: EventView) -> bytes:
    data = json.dumps({**e.data, "at": e.at.isoformat()}, separators=(",", ":"))
    return f"id: {e.id}\nevent: {e.type}\ndata: {data}\n\n".encode()


def _last_id(header: str | None) -> int:
    if header is None or not header.strip():
        return 0
    if not header.strip().isdigit() or int(header) > MAX_ID:
        raise ValidationFailed("Last-Event-ID must be the id of an event this stream sent")
    return int(header)


def _id(job_id: int) -> int:
    if not 1 <= job_id <= MAX_ID:
        raise NotFound(f"job {job_id} not found; list jobs with `modelworks jobs list`")
    return job_id
