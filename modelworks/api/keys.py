"""API key routes under `/api/v1/keys`: the secret is in the create response, once.

Owners manage the keys of their project; admins those of any project. A key sees, reads and
revokes only keys no wider than itself (role, model allowlist, expiry, limits: any other is
as missing as an unknown id), and never mints a wider one: only admins create admin keys, a
minted key stays within its parent's allowlist, expiry and limits.
"""

from __future__ import annotations

from functools import partial

from anyio import to_thread
from fastapi import APIRouter, Depends
from fastapi import Path as FastPath
from sqlalchemy import select
from starlette.requests import Request

from modelworks.api.auth import audit_action, require, scope_to
from modelworks.api.schemas import EffectiveLimits, KeyCreate, KeyCreated, KeyDetail, KeyOut
from modelworks.api.services import services
from modelworks.auth.keys import ROLES, Principal, bounded_limits, effective_limits, role_within
from modelworks.db.tables import Project
from modelworks.errors import Forbidden, NotFound

router = APIRouter(prefix="/api/v1", tags=["keys"])


def _project_names(request: Request) -> dict[int, str]:
    with services(request).sessions() as s:
        return {pid: name for pid, name in s.execute(select(Project.id, Project.name))}


def _project(request: Request, project_id: int) -> Project:
    with services(request).sessions() as s:
        project = s.get(Project, project_id)
    if project is None:
        raise NotFound("project not found; list projects with `modelworks projects list`")
    return project


def _check_role(role: str, p: Principal) -> None:
    """No key mints a role wider than its own (an unknown role is left to the 422)."""
    if role not in ROLES or role_within(role, p.role):
        return
    if role == "admin":
        raise Forbidden("only an admin key can create admin keys")
    raise Forbidden(
        f"a {p.role!r} key cannot create {role!r} keys, which may do more than it; "
        "ask a key with that role or higher"
    )


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(
    body: KeyCreate, request: Request, p: Principal = Depends(require("keys"))
) -> KeyCreated:
    svc = services(request)
    _check_role(body.role, p)
    models = body.models
    if p.models is not None:
        # a key never mints a wider key than itself
        if models is None:
            models = sorted(p.models)
        elif not set(models) <= p.models:
            raise Forbidden("a key limited to some models can only create keys within them")
    expires_at = body.expires_at  # aware, UTC and in the future (KeyCreate checks it)
    if p.expires_at is not None:
        if expires_at is None:
            expires_at = p.expires_at  # a minted key inherits its parent's expiry
        elif expires_at > p.expires_at:
            raise Forbidden(  # nor outlives it, as it may not exceed its limits
                f"the new key would outlive yours (it expires {p.expires_at.isoformat()}); "
                "give an expires_at no later than that"
            )
    target = p
    if body.project is not None:
        target = await to_thread.run_sync(scope_to, svc, p, body.project)
    project = await to_thread.run_sync(_project, request, target.project_id)
    rate_limit, burst, quota = bounded_limits(
        p.limits,
        project,
        body.rate_limit,
        body.burst,
        body.quota.as_dict() if body.quota else None,
    )

    def create() -> KeyCreated:
        key, secret = svc.keys.create(
            project_id=target.project_id,
            role=body.role,
            name=body.name,
            created_by=p.prefix,
            expires_at=expires_at,
            models=models,
            rate_limit=rate_limit,
            burst=burst,
            quota=quota,
        )
        audit_action(
            request,
            p,
            "key.create",
            key.prefix,
            project_id=key.project_id,
            role=key.role,
            models=key.models,
        )
        out = KeyOut.of(key, _project_names(request).get(key.project_id, ""))
        return KeyCreated(**out.model_dump(), key=secret)

    return await to_thread.run_sync(create)


@router.get("/keys", response_model=list[KeyOut])
def list_keys(request: Request, p: Principal = Depends(require("keys"))) -> list[KeyOut]:
    """The keys of the project that are no wider than the calling key."""
    names = _project_names(request)
    keys = services(request).keys.list(p.project_id, caller=p)
    return [KeyOut.of(k, names.get(k.project_id, "")) for k in keys]


@router.get("/keys/{key_id}", response_model=KeyDetail)
def get_key(
    request: Request,
    key_id: int = FastPath(ge=1, le=2**63 - 1),
    p: Principal = Depends(require("keys")),
) -> KeyDetail:
    """A key with the limits it runs under: the tightest of its own and its project's."""
    key, project = services(request).keys.get(
        key_id, None if p.role == "admin" else p.project_id, caller=p
    )
    limits, sources = effective_limits(key, project)
    return KeyDetail(
        **KeyOut.of(key, project.name).model_dump(),
        limits=EffectiveLimits(
            rate_limit=limits.rate, burst=limits.burst, quota=limits.quota, sources=sources
        ),
    )


@router.delete("/keys/{key_id}", response_model=KeyOut)
async def revoke_key(
    request: Request,
    key_id: int = FastPath(ge=1, le=2**63 - 1),
    p: Principal = Depends(require("keys")),
) -> KeyOut:
    svc = services(request)
    key = await to_thread.run_sync(
        partial(svc.keys.revoke, key_id, None if p.role == "admin" else p.project_id, caller=p)
    )
    await svc.limiter.backend.revoke(key.prefix)  # replicas sharing Redis drop it at once

    def finish() -> KeyOut:
        audit_action(request, p, "key.revoke", key.prefix, project_id=key.project_id)
        return KeyOut.of(key, _project_names(request).get(key.project_id, ""))

    return await to_thread.run_sync(finish)
