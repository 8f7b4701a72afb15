"""Datasets under `/api/v1/datasets`: upload (multipart `file` + `name`), list, show, preview,
delete.

An upload streams into the store's temp file, size-capped and hashed like a model upload; it
is then profiled (`modelworks.datasets.profile`: column types, label, classes, entities) off
the event loop, and only a file that reads cleanly becomes a version. A file that does not
(a ragged row, a formula cell, a label with one class...) is a 422 naming the column and the
problem, and nothing is stored.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.requests import Request

from modelworks.api.auth import audit_action, require
from modelworks.api.schemas import Deleted, Timestamp
from modelworks.api.services import Services, services
from modelworks.api.uploads import receive_file
from modelworks.auth.keys import Principal
from modelworks.db.tables import Dataset, DatasetVersion
from modelworks.errors import ModelworksError, ValidationFailed
from modelworks.names import DatasetName
from modelworks.registry.datasets import dataset_version
from modelworks.store import Upload, disk_space

router = APIRouter(prefix="/api/v1", tags=["datasets"])
MAX_PREVIEW_ROWS = 100
FIELDS = ("name", "description", "label", "entity", "time")
COLUMN_FIELDS = ("label", "entity", "time")

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string", "maxLength": 64},
                        "description": {"type": "string", "maxLength": 10000},
                        "label": {"type": "string", "maxLength": 256},
                        "entity": {"type": "string", "maxLength": 256},
                        "time": {"type": "string", "maxLength": 256},
                    },
                }
            }
        },
    }
}


class DatasetVersionOut(BaseModel):
    dataset: str
    version: int
    format: str
    digest: str
    size: int
    filename: str
    profile: dict[str, Any]
    description: str
    created_by: str
    created_at: Timestamp

    @classmethod
    def of(cls, name: str, v: DatasetVersion) -> DatasetVersionOut:
        return cls(
            dataset=name,
            version=v.version,
            format=v.format,
            digest=v.digest,
            size=v.size,
            filename=v.filename,
            profile=v.profile,
            description=v.description,
            created_by=v.created_by,
            created_at=v.created_at,
        )


class DatasetOut(BaseModel):
    name: str
    description: str
    created_by: str
    created_at: Timestamp
    latest: int | None
    versions: list[DatasetVersionOut]

    @classmethod
    def of(cls, d: Dataset) -> DatasetOut:
        versions = [DatasetVersionOut.of(d.name, v) for v in d.versions]
        return cls(
            name=d.name,
            description=d.description,
            created_by=d.created_by,
            created_at=d.created_at,
            latest=versions[-1].version if versions else None,
            versions=versions,
        )


class Preview(BaseModel):
    dataset: str
    version: int
    columns: list[str]
    rows: list[list[Any]]


@router.post(
    "/datasets", status_code=201, response_model=DatasetVersionOut, openapi_extra=UPLOAD_BODY
)
async def upload_dataset(
    request: Request, p: Principal = Depends(require("write"))
) -> DatasetVersionOut:
    """Upload a CSV, Parquet, JSON Lines file or a zip of image folders (multipart `file`) as
    the next version of dataset `name` (created on its first upload). Optional fields: `label`
    (the label column; else one named label, target, class or y), `entity` and `time` (the
    machine and time columns of a time series), `description`."""
    svc: Services = services(request)
    try:
        upload = svc.store.begin_upload(svc.settings.max_upload_bytes)
    except ModelworksError as exc:
        audit_action(request, p, "dataset.upload", "", outcome="rejected", reason=exc.code)
        raise
    name = ""
    try:
        form = await receive_file(request, upload, example="data.csv")
        fields = _fields(form.fields)
        name = DatasetName(fields.get("name", ""))
        await to_thread.run_sync(upload.sync)
        fmt, profile = await to_thread.run_sync(_profile, svc, upload, form.filename, fields)
        blob = await to_thread.run_sync(upload.commit)
    except ModelworksError as exc:
        upload.abort()
        audit_action(request, p, "dataset.upload", name, outcome="rejected", reason=exc.code)
        raise
    except BaseException:
        upload.abort()
        raise
    v = await to_thread.run_sync(
        lambda: svc.datasets.add_version(
            p.project_id,
            name,
            blob,
            format=fmt,
            profile=profile,
            filename=form.filename,
            description=fields.get("description", "")[:10_000],
            created_by=p.prefix,
        )
    )
    audit_action(request, p, "dataset.upload", f"{name}:{v.version}", digest=blob.digest)
    return DatasetVersionOut.of(name, v)


def _fields(fields: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValidationFailed(
            f"unknown field {unknown[0][:64]!r}; a dataset upload takes file, " + ", ".join(FIELDS)
        )
    if not fields.get("name"):
        raise ValidationFailed(
            "the multipart field 'name' is required: the dataset's name "
            "(curl -F file=@data.csv -F name=sensors …)"
        )
    for key in COLUMN_FIELDS:
        if key in fields and not 0 < len(fields[key]) <= 256:
            raise ValidationFailed(f"'{key}' must name a column (1-256 characters)")
    return fields


def _profile(
    svc: Services, upload: Upload, filename: str, fields: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """The upload's format and profile (blocking; pyarrow is imported on the first upload)."""
    from modelworks import datasets as ds

    with upload.path.open("rb") as fh:
        head = fh.read(8)
    fmt = ds.detect_format(filename, head)
    limits = ds.Limits(max_extract_bytes=svc.settings.max_extract_bytes)
    with disk_space():
        profile = ds.profile(
            upload.path,
            fmt,
            label=fields.get("label"),
            entity=fields.get("entity"),
            time=fields.get("time"),
            limits=limits,
        )
    return fmt, profile


@router.get("/datasets", response_model=list[DatasetOut])
def list_datasets(request: Request, p: Principal = Depends(require("read"))) -> list[DatasetOut]:
    """The project's datasets, each with its versions."""
    return [DatasetOut.of(d) for d in services(request).datasets.list_datasets(p.project_id)]


@router.get("/datasets/{name}", response_model=DatasetOut)
def get_dataset(name: str, request: Request, p: Principal = Depends(require("read"))) -> DatasetOut:
    return DatasetOut.of(services(request).datasets.get(p.project_id, name))


@router.get("/datasets/{name}/versions/{version}", response_model=DatasetVersionOut)
def get_dataset_version(
    name: str, version: str, request: Request, p: Principal = Depends(require("read"))
) -> DatasetVersionOut:
    v = services(request).datasets.get_version(p.project_id, name, dataset_version(name, version))
    return DatasetVersionOut.of(name, v)


@router.get("/datasets/{name}/preview", response_model=Preview)
async def preview_latest(
    name: str,
    request: Request,
    rows: int = Query(20, ge=1, le=MAX_PREVIEW_ROWS, description="How many first rows."),
    p: Principal = Depends(require("read")),
) -> Preview:
    """The first rows of the dataset's latest version."""
    return await _preview(request, p, name, None, rows)


@router.get("/datasets/{name}/versions/{version}/preview", response_model=Preview)
async def preview_version(
    name: str,
    version: str,
    request: Request,
    rows: int = Query(20, ge=1, le=MAX_PREVIEW_ROWS, description="How many first rows."),
    p: Principal = Depends(require("read")),
) -> Preview:
    """The first rows of one version."""
    return await _preview(request, p, name, dataset_version(name, version), rows)


async def _preview(
    request: Request, p: Principal, name: str, version: int | None, rows: int
) -> Preview:
    svc = services(request)
    v = await to_thread.run_sync(svc.datasets.get_version, p.project_id, name, version)

    def read() -> dict[str, Any]:
        from modelworks.datasets import preview

        return preview(svc.store.local_path(v.digest), v.format, rows)

    found = await to_thread.run_sync(read)
    return Preview(dataset=name, version=v.version, columns=found["columns"], rows=found["rows"])


@router.delete("/datasets/{name}", response_model=Deleted)
def delete_dataset(
    name: str, request: Request, p: Principal = Depends(require("write"))
) -> Deleted:
    """Delete the dataset and every version of it."""
    services(request).datasets.delete(p.project_id, name)
    audit_action(request, p, "dataset.delete", name)
    return Deleted(deleted=name)


@router.delete("/datasets/{name}/versions/{version}", response_model=Deleted)
def delete_dataset_version(
    name: str, version: str, request: Request, p: Principal = Depends(require("write"))
) -> Deleted:
    number = dataset_version(name, version)
    services(request).datasets.delete_version(p.project_id, name, number)
    audit_action(request, p, "dataset.delete", f"{name}:{number}")
    return Deleted(deleted=f"{name}:{number}")
