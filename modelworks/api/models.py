"""Management routes for models, versions and aliases under `/api/v1`."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends
from fastapi import Path as FastPath
from starlette.requests import Request

from modelworks.api.auth import audit_action, require
from modelworks.api.schemas import (
    AliasOut,
    AliasSet,
    Deleted,
    ModelCreate,
    ModelDetail,
    ModelOut,
    ModelPatch,
    VersionOut,
)
from modelworks.api.services import Services, services
from modelworks.api.uploads import receive_file
from modelworks.auth.keys import Principal
from modelworks.errors import Conflict, Forbidden, ModelworksError, ServiceUnavailable
from modelworks.jobs.export import queue_export
from modelworks.names import AliasName, ModelName, parse_version
from modelworks.registry.formats import detect_and_inspect
from modelworks.store import Upload, disk_space

router = APIRouter(prefix="/api/v1", tags=["models"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "description": {"type": "string", "maxLength": 10000},
                    },
                }
            }
        },
    }
}


@router.post("/models", status_code=201, response_model=ModelOut)
def create_model(
    body: ModelCreate, request: Request, p: Principal = Depends(require("write"))
) -> ModelOut:
    if not p.allows_model(body.name):
        raise Forbidden("this key is limited to other models; ask an owner for a wider key")
    m = services(request).registry.create_model(
        p.project_id,
        body.name,
        task=body.task,
        description=body.description,
        tags=body.tags,
        created_by=p.prefix,
    )
    audit_action(request, p, "model.create", m.name)
    return ModelOut.of(m)


@router.get("/models", response_model=list[ModelOut])
def list_models(request: Request, p: Principal = Depends(require("read"))) -> list[ModelOut]:
    models = services(request).registry.list_models(p.project_id)
    return [ModelOut.of(m) for m in models if p.allows_model(m.name)]


@router.get("/models/{name}", response_model=ModelDetail)
def get_model(name: str, request: Request, p: Principal = Depends(require("read"))) -> ModelDetail:
    svc = services(request)
    p.check_model(name)
    return ModelDetail.detail(svc.registry.get_model(p.project_id, name), svc.pool.status)


@router.patch("/models/{name}", response_model=ModelOut)
def update_model(
    name: str, body: ModelPatch, request: Request, p: Principal = Depends(require("write"))
) -> ModelOut:
    p.check_model(name)
    m = services(request).registry.update_model(
        p.project_id, name, body.model_dump(exclude_none=True)
    )
    audit_action(request, p, "model.update", name)
    return ModelOut.of(m)


@router.delete("/models/{name}", response_model=Deleted)
def delete_model(name: str, request: Request, p: Principal = Depends(require("write"))) -> Deleted:
    svc = services(request)
    p.check_model(name)
    freed = svc.registry.delete_model(p.project_id, name)
    for digest in freed:
        svc.pool.drop(digest)
    audit_action(request, p, "model.delete", name)
    return Deleted(deleted=name)


@router.post(
    "/models/{name}/versions", status_code=201, response_model=VersionOut, openapi_extra=UPLOAD_BODY
)
async def upload_version(
    name: str, request: Request, p: Principal = Depends(require("write"))
) -> VersionOut:
    """Upload a model file (multipart field `file`) as the model's next version."""
    svc: Services = services(request)
    name = ModelName(name)
    p.check_model(name)
    model = await to_thread.run_sync(svc.registry.get_model, p.project_id, name)  # 404 first
    try:
        upload = svc.store.begin_upload(svc.settings.max_upload_bytes)
    except ModelworksError as exc:  # a full disk refuses even the temp file
        audit_action(request, p, "version.upload", name, outcome="rejected", reason=exc.code)
        raise
    try:
        form = await receive_file(request, upload)
        await to_thread.run_sync(upload.sync)
        fmt, signature = await to_thread.run_sync(
            inspect_upload, svc, upload, form.filename, model.task
        )
        blob = await to_thread.run_sync(upload.commit)
    except ModelworksError as exc:
        upload.abort()
        audit_action(request, p, "version.upload", name, outcome="rejected", reason=exc.code)
        raise
    except BaseException:
        upload.abort()
        raise
    description = form.fields.get("description", "")[:10_000]
    converting = fmt == "transformers"
    v = await to_thread.run_sync(
        lambda: svc.registry.add_version(
            p.project_id,
            name,
            blob,
            format=fmt,
            signature=signature,
            description=description,
            created_by=p.prefix,
            lineage={"source": "upload", "filename": form.filename[-255:]},
            status="converting" if converting else "ready",
            then=(
                (lambda s, v: queue_export(svc.jobs, s, p.project_id, name, v, p.prefix))
                if converting
                else None
            ),
        )
    )
    audit_action(request, p, "version.upload", f"{name}:{v.version}", digest=blob.digest)
    return VersionOut.of(name, v)


def inspect_upload(
    svc: Services, upload: Upload, filename: str, task: str
) -> tuple[str, dict[str, Any]]:
    """The upload's format and signature, within the server's limits on declared tensor
    sizes and on the scratch space an archive may unpack to (blocking)."""
    with disk_space():
        return detect_and_inspect(
            upload.path,
            filename,
            task,
            svc.store.scratch,
            max_tensor_elements=svc.settings.max_tensor_elements,
            max_extract_bytes=svc.settings.max_extract_bytes,
        )


@router.get("/models/{name}/versions", response_model=list[VersionOut])
def list_versions(
    name: str, request: Request, p: Principal = Depends(require("read"))
) -> list[VersionOut]:
    svc = services(request)
    p.check_model(name)
    return ModelDetail.detail(
        svc.registry.get_model(p.project_id, name), svc.pool.status
    ).version_list


@router.get("/models/{name}/versions/{version}", response_model=VersionOut)
def get_version(
    name: str,
    request: Request,
    version: str = FastPath(max_length=64, description="A version number, e.g. 3."),
    p: Principal = Depends(require("read")),
) -> VersionOut:
    svc = services(request)
    p.check_model(name)
    # one spelling per version: `01`, `+1`, ` 1` or `1.0` name no version
    v = svc.registry.get_version(p.project_id, name, parse_version(name, version))
    m = svc.registry.get_model(p.project_id, name)
    aliases = sorted(a.name for a in m.aliases if a.version_id == v.id)
    return VersionOut.of(name, v, aliases, svc.pool.status)


@router.put("/models/{name}/aliases/{alias}", response_model=AliasOut)
async def set_alias(
    name: str,
    alias: str,
    body: AliasSet,
    request: Request,
    p: Principal = Depends(require("write")),
) -> AliasOut:
    """Point an alias at a version. The version is loaded and warmed first, so requests that
    follow the alias never meet a cold model; in-flight requests finish on the old one."""
    svc = services(request)
    p.check_model(name)
    AliasName(alias)
    if body.warm:
        target = await to_thread.run_sync(svc.serving.resolve, p, name, str(body.version))
        if target.status == "ready":
            try:
                await svc.serving.load(target)
            except ServiceUnavailable as exc:
                raise Conflict(
                    f"version {body.version} cannot be served ({exc.message}); "
                    f"alias {alias!r} was not moved"
                ) from None
    await to_thread.run_sync(svc.registry.set_alias, p.project_id, name, alias, body.version)
    audit_action(request, p, "alias.set", f"{name}:{alias}", version=body.version)
    return AliasOut(model=name, alias=alias, version=body.version)


@router.delete("/models/{name}/aliases/{alias}", response_model=Deleted)
def delete_alias(
    name: str, alias: str, request: Request, p: Principal = Depends(require("write"))
) -> Deleted:
    p.check_model(name)
    services(request).registry.delete_alias(p.project_id, name, alias)
    audit_action(request, p, "alias.delete", f"{name}:{alias}")
    return Deleted(deleted=f"{name}:{alias}")
