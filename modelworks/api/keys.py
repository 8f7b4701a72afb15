"""API key routes under `/api/v1/keys`: the secret is in the create response, once."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select
from starlette.requests import Request

from modelworks.api.auth import client_address, require
from modelworks.api.schemas import KeyCreate, KeyCreated, KeyOut
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.db.tables import Project
from modelworks.errors import Forbidden

router = APIRouter(prefix="/api/v1", tags=["keys"])


def _project_names(request: Request) -> dict[int, str]:
    with services(request).sessions() as s:
        return {pid: name for pid, name in s.execute(select(Project.id, Project.name))}


@router.post("/keys", status_code=201, response_model=KeyCreated)
def create_key(
    body: KeyCreate, request: Request, p: Principal = Depends(require("keys"))
) -> KeyCreated:
    svc = services(request)
    if body.role == "admin" and p.role != "admin":
        raise Forbidden("only an admin key can create admin keys")
    key, secret = svc.keys.create(
        project_id=p.project_id,
        role=body.role,
        name=body.name,
        created_by=p.prefix,
        expires_at=body.expires_at,
    )
    svc.audit.record(
        action="key.create",
        outcome="ok",
        actor=p.prefix,
        target=key.prefix,
        project_id=p.project_id,
        client=client_address(request),
        request_id=getattr(request.state, "request_id", ""),
        details={"role": key.role},
    )
    out = KeyOut.of(key, _project_names(request).get(key.project_id, ""))
    return KeyCreated(**out.model_dump(), key=secret)


@router.get("/keys", response_model=list[KeyOut])
def list_keys(request: Request, p: Principal = Depends(require("keys"))) -> list[KeyOut]:
    names = _project_names(request)
    scope = None if p.role == "admin" else p.project_id
    return [KeyOut.of(k, names.get(k.project_id, "")) for k in services(request).keys.list(scope)]


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: int, request: Request, p: Principal = Depends(require("keys"))) -> KeyOut:
    svc = services(request)
    key = svc.keys.revoke(key_id, None if p.role == "admin" else p.project_id)
    svc.audit.record(
        action="key.revoke",
        outcome="ok",
        actor=p.prefix,
        target=key.prefix,
        project_id=key.project_id,
        client=client_address(request),
        request_id=getattr(request.state, "request_id", ""),
    )
    return KeyOut.of(key, _project_names(request).get(key.project_id, ""))
