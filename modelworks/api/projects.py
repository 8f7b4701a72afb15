"""Project routes under `/api/v1/projects`: admins create and delete tenants and set their
limits (ceilings); a project's owner reads its own and may only tighten those limits."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Depends
from starlette.requests import Request

from modelworks.api.auth import audit_action, require
from modelworks.api.schemas import Deleted, ProjectCreate, ProjectOut, ProjectPatch
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.errors import Forbidden
from modelworks.registry.projects import ProjectService

router = APIRouter(prefix="/api/v1", tags=["projects"])


def _service(request: Request) -> ProjectService:
    return ProjectService(services(request).sessions)


def _admin(p: Principal) -> None:
    _unrestricted(p)
    if p.role != "admin":
        raise Forbidden("only an admin key can create or delete projects")


def _unrestricted(p: Principal) -> None:
    """Project settings bind every model of the project, so a key that may reach only some
    models may not change them."""
    if p.models is not None:
        raise Forbidden(
            "this key is limited to some models and project settings cover all of them; "
            "use a key without a model allowlist"
        )


@router.post("/projects", status_code=201, response_model=ProjectOut)
def create_project(
    body: ProjectCreate, request: Request, p: Principal = Depends(require("keys"))
) -> ProjectOut:
    _admin(p)
    project = _service(request).create(
        body.name,
        description=body.description,
        rate_limit=body.rate_limit,
        burst=body.burst,
        quota=body.quota.as_dict() if body.quota else None,
    )
    audit_action(request, p, "project.create", project.name, project_id=project.id)
    return ProjectOut.of(project)


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(request: Request, p: Principal = Depends(require("read"))) -> list[ProjectOut]:
    only = None if p.role == "admin" else p.project_id
    return [ProjectOut.of(x) for x in _service(request).list(only)]


@router.get("/projects/{name}", response_model=ProjectOut)
def get_project(name: str, request: Request, p: Principal = Depends(require("read"))) -> ProjectOut:
    return ProjectOut.of(_service(request).get(name, None if p.role == "admin" else p.project_id))


@router.patch("/projects/{name}", response_model=ProjectOut)
def update_project(
    name: str, body: ProjectPatch, request: Request, p: Principal = Depends(require("keys"))
) -> ProjectOut:
    """Admins set the project's limits (ceilings); owners may set tighter defaults only."""
    _unrestricted(p)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("description", "") is None:
        del changes["description"]  # null keeps it; null on a limit clears that limit
    if body.quota is not None:
        changes["quota"] = body.quota.as_dict()
    admin = p.role == "admin"
    project = _service(request).update(
        name, changes, None if admin else p.project_id, by_admin=admin
    )
    services(request).keys.forget_cached()
    audit_action(request, p, "project.update", project.name, project_id=project.id)
    return ProjectOut.of(project)


@router.delete("/projects/{name}", response_model=Deleted)
async def delete_project(
    name: str, request: Request, p: Principal = Depends(require("keys"))
) -> Deleted:
    _admin(p)
    svc = services(request)
    projects = _service(request)

    def delete() -> tuple[int, list[str]]:
        project_id, model_names = projects.delete(name)
        for model in model_names:
            for digest in svc.registry.delete_model(project_id, model):
                svc.pool.drop(digest)
        return project_id, projects.finish_delete(project_id)

    project_id, prefixes = await to_thread.run_sync(delete)
    for prefix in prefixes:
        await svc.limiter.backend.revoke(prefix)
    svc.keys.forget_cached()
    audit_action(request, p, "project.delete", name, project_id=project_id)
    return Deleted(deleted=name)
