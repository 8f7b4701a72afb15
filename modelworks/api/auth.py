"""The auth dependency: `Authorization: Bearer <key>` -> Principal, then role, project scope,
rate limit and quota. Failures are audited (never with any part of the credential) and
throttled per client address.

An inference takes one request of the key's daily quota here, before it runs, and leaves a
`reserve` callback in the request's facts through which the serving engine takes the items
(and tokens) it is about to process; `api/metering.py` settles both once the response is out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from functools import partial

from anyio import to_thread
from fastapi import Depends, Query
from starlette.requests import Request

from modelworks.api.limits import BODY_PROBLEM
from modelworks.api.metrics import note
from modelworks.api.services import Services, services
from modelworks.auth.keys import Principal
from modelworks.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)

ANONYMOUS_ROLE = "admin"  # auth off (loopback only): every caller may do everything
# exactly "<scheme> <token>": one space, no other whitespace anywhere (the token is never
# trimmed, so "Bearer  KEY" or a trailing tab is malformed rather than silently accepted)
_CREDENTIALS = re.compile(r"([A-Za-z]+) (\S+)")


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def audit_action(
    request: Request,
    p: Principal,
    action: str,
    target: str,
    *,
    outcome: str = "ok",
    project_id: int | None = None,
    **details: object,
) -> None:
    """Record a management action by `p` (in its project unless `project_id` says else)."""
    services(request).audit.record(
        action=action,
        outcome=outcome,
        actor=p.prefix,
        target=target,
        project_id=p.project_id if project_id is None else project_id,
        client=client_address(request),
        request_id=getattr(request.state, "request_id", ""),
        details=dict(details),
    )


async def authenticate(request: Request) -> Principal:
    svc = services(request)
    if not svc.settings.auth:
        p = Principal(
            key_id=None, prefix="anonymous", project_id=svc.default_project_id, role=ANONYMOUS_ROLE
        )
        note(key_id=0, project_id=p.project_id)
        request.state.principal = p
        return p
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        raise BadRequest(
            f"this request has {len(headers)} Authorization headers; send one "
            "('Authorization: Bearer mw_…')"
        )
    try:
        found = await _principal(svc, headers[0] if headers else "")
    except Unauthorized as exc:
        client = client_address(request)
        record = partial(
            svc.audit.record,
            action="auth.failure",
            outcome="denied",
            actor="",  # nothing of a rejected credential is kept, not even its prefix
            target=request.url.path[:256],
            client=client,
            request_id=getattr(request.state, "request_id", ""),
            details={"reason": exc.message},
        )
        await to_thread.run_sync(record)
        if svc.auth_failures.failed(client):
            raise TooManyRequests(
                "too many failed authentications from this address; wait a minute "
                "and check the API key",
                details={"retry_after": 60},
            ) from None
        raise
    note(key_id=found.key_id or 0, project_id=found.project_id)
    if found.key_id is not None and found.limits.rate is not None:
        await svc.limiter.hit(found.key_id, found.limits)
    request.state.principal = found
    return found


async def _principal(svc: Services, header: str) -> Principal:
    """The key an `Authorization` header carries; 401 for a missing, malformed or bad one."""
    if not header:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer mw_…' "
            "(or set MODELWORKS_API_KEY for the CLI and SDK)"
        )
    match = _CREDENTIALS.fullmatch(header)
    if match is None or match[1].lower() != "bearer":
        raise Unauthorized(
            "malformed Authorization header: use 'Authorization: Bearer mw_…' "
            "(one space, nothing around the key)"
        )
    secret = match[2]
    found = svc.keys.cached(secret)
    # another replica may have revoked a cached key: a shared backend knows at once
    if (
        found is not None
        and svc.limiter.backend.shared
        and await svc.limiter.backend.is_revoked(found.prefix)
    ):
        svc.keys.forget_cached()
        found = None
    if found is None:
        found = await to_thread.run_sync(svc.keys.authenticate, secret)
    return found


def scope_to(svc: Services, p: Principal, project: str) -> Principal:
    """Admins act in any project; other keys only in their own (any other reads as missing)."""
    from modelworks.names import ProjectName

    try:
        project_id = svc.registry.project_id(ProjectName(project))
    except NotFound:
        project_id = None
    if project_id is None or (p.role != "admin" and project_id != p.project_id):
        raise NotFound(f"project {project!r} not found", details={"project": project})
    return dataclasses.replace(p, project_id=project_id)


async def authorize(
    request: Request, p: Principal, permission: str, project: str | None = None
) -> Principal:
    """Check the role allows `permission`, apply the `?project=` scope, and for inference
    reserve against the key's daily quotas. Refusals are audited."""
    svc = services(request)
    try:
        p.require(permission)
    except Forbidden as exc:
        await to_thread.run_sync(
            partial(
                audit_action,
                request,
                p,
                "auth.forbidden",
                request.url.path[:256],
                outcome="denied",
                reason=exc.message,
            )
        )
        raise
    if project is not None:
        p = await to_thread.run_sync(scope_to, svc, p, project)
        note(project_id=p.project_id)
        request.state.principal = p
    problem = getattr(request.state, BODY_PROBLEM, None)  # found by the body reader
    if problem is not None:
        raise BadRequest(problem)
    if permission == "infer" and p.key_id is not None and p.limits.quota:
        await _reserve_request(svc, p.key_id, p, inference=request.method == "POST")
    return p


async def _reserve_request(svc: Services, key_id: int, p: Principal, *, inference: bool) -> None:
    """Take one request of the key's quota now (a metadata read takes none, but is refused
    once a quota is used up, as an inference would be), and hand the serving engine a way to
    take its items before it runs (`modelworks.context.reserve`)."""
    held = await svc.limiter.reserve(key_id, p.limits, requests=1 if inference else 0)
    if held is not None and inference:
        note(quota=held, reserve=partial(svc.limiter.reserve_more, held))


def project_scope(request: Request, p: Principal) -> int | None:
    """The project a listing covers: the key's own, the `?project=` one, or every project (None)
    for an admin who names none: an admin sees everything."""
    if p.role == "admin" and "project" not in request.query_params:
        return None
    return p.project_id


PROJECT_MAX = 64


def project_param(request: Request) -> str | None:
    """`?project=`, checked as `require`'s dependency checks it (for the protocol routes,
    which `modelworks.api.routing` calls without FastAPI's dependency solving)."""
    project = request.query_params.get("project")
    if project is not None and len(project) > PROJECT_MAX:
        raise ValidationFailed(
            f"invalid request: query.project: String should have at most {PROJECT_MAX} characters"
        )
    return project


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: authenticate, then `authorize` for `permission` (its `permission`
    attribute names it, for `modelworks.api.routing`)."""

    async def dependency(
        request: Request,
        p: Principal = Depends(authenticate),
        project: str | None = Query(
            None,
            max_length=PROJECT_MAX,
            description="Act in this project (admin keys: any project).",
        ),
    ) -> Principal:
        return await authorize(request, p, permission, project)

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency
