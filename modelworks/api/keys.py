"""API key routes under `/api/v1/keys`: the secret is in the create response, once.

Owners manage the keys of their project; admins those of any project. Nobody mints a key
with more power than their own: only admins create admin keys.
"""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Depends
from fastapi import Path as FastPath
from sqlalchemy import select
from starlette.requests import Request

from modelworks.api.auth import audit_action, require, scope_to
from modelworks.api.schemas import EffectiveLimits, KeyCreate, KeyCreated, KeyDetail, KeyOut
from modelworks.api.services import services
from modelworks.auth.keys import Principal, effective_limits
from modelworks.db.tables import Project
from modelworks.errors import Forbidden

router = APIRouter(prefix="/api/v1", tags=["keys"])


def _project_names(request: Request) -> dict[int, str]:
    with services(request).sessions() as s:
        return {pid: name for pid, name in s.execute(select(Project.id, Project.name))}


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(
    body: KeyCreate, request: Request, p: Principal = Depends(require("keys"))
) -> KeyCreated:
    svc = services(request)
    if body.role == "admin" and p.role != "admin":
        raise Forbidden("only an admin key can create admin keys")
    models = body.models
    if p.models is not None:
        # a key never mints a wider key than itself
        if models is None:
            models = sorted(p.models)
        elif not set(models) <= p.models:
            raise Forbidden("a key limited to some models can only create keys within them")
    expires_at = body.expires_at
    if p.expires_at is not None and (expires_at is None or expires_at > p.expires_at):
        expires_at = p.expires_at  # nor one that outlives it
    target = p
    if body.project is not None:
        target = await to_thread.run_sync(scope_to, svc, p, body.project)

    def create() -> KeyCreated:
        key, secret = svc.keys.create(
            project_id=target.project_id,
            role=body.role,
            name=body.name,
            created_by=p.prefix,
            expires_at=expires_at,
            models=models,
            rate_limit=body.rate_limit,
            burst=body.burst,
            quota=body.quota.as_dict() if body.quota else None,
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
    names = _project_names(request)
    return [
        KeyOut.of(k, names.get(k.project_id, "")) for k in services(request).keys.list(p.project_id)
    ]


@router.get("/keys/{key_id}", response_model=KeyDetail)
def get_key(
    request: Request,
    key_id: int = FastPath(ge=1, le=2**63 - 1),
    p: Principal = Depends(require("keys")),
) -> KeyDetail:
    """A key with the limits it runs under: its own, else its project's defaults."""
    key, project = services(request).keys.get(key_id, None if p.role == "admin" else p.project_id)
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
        svc.keys.revoke, key_id, None if p.role == "admin" else p.project_id
    )
    await svc.limiter.backend.revoke(key.prefix)  # replicas sharing Redis drop it at once

    def finish() -> KeyOut:
        audit_action(request, p, "key.revoke", key.prefix, project_id=key.project_id)
        return KeyOut.of(key, _project_names(request).get(key.project_id, ""))

    return await to_thread.run_sync(finish)
