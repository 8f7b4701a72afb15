"""`GET /api/v1/usage`: what keys used of which models, per hour, day, key or model."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query
from starlette.requests import Request

from modelworks.api.auth import project_scope, require
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.auth.usage import GROUPS
from modelworks.errors import ValidationFailed

router = APIRouter(prefix="/api/v1", tags=["usage"])


@router.get("/usage")
async def usage(
    request: Request,
    p: Principal = Depends(require("read")),
    key: int | None = Query(None, ge=0, le=2**63 - 1, description="Only this key id."),
    model: str | None = Query(None, max_length=64, description="Only this model."),
    start: datetime | None = Query(None, alias="from", description="From this hour (ISO 8601)."),
    end: datetime | None = Query(None, alias="to", description="Up to this hour, exclusive."),
    group_by: str = Query(
        "hour,key,model", max_length=100, description=f"Comma-separated: {', '.join(GROUPS)}."
    ),
) -> list[dict[str, Any]]:
    """Sums of requests, items, tokens, compute_ms and errors for the key's project; admin
    keys see every project's, or one with `?project=`."""
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValidationFailed(f"group_by takes {', '.join(GROUPS)}; got {group_by!r}")
    svc = services(request)
    if model is not None:
        p.check_model(model)
    await to_thread.run_sync(svc.usage.flush)  # include what was just served
    return await to_thread.run_sync(
        lambda: svc.usage.query(
            project_id=project_scope(request, p),
            models=p.models,
            key_id=key,
            model=model,
            start=start,
            end=end,
            group_by=groups,
        )
    )
