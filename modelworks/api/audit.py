"""`GET /api/v1/audit`: the append-only record of management actions and auth failures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request

from modelworks.api.auth import project_scope, require
from modelworks.api.services import services
from modelworks.auth.keys import Principal

router = APIRouter(prefix="/api/v1", tags=["audit"])


def _iso(dt: datetime) -> str:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


@router.get("/audit")
def audit(
    request: Request,
    p: Principal = Depends(require("keys")),
    action: str | None = Query(None, max_length=64, description="e.g. model.delete, auth.failure"),
    actor: str | None = Query(None, max_length=64, description="Key prefix."),
    start: datetime | None = Query(None, alias="from"),
    end: datetime | None = Query(None, alias="to"),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    """Newest first. Owners see their project's events; admins every project's, auth failures
    (which belong to no project) included, or one project's with `?project=`. A key limited
    to some models sees only events about those models and its own actions."""
    events = services(request).audit.list(
        project_id=project_scope(request, p),
        include_unscoped=p.role == "admin",
        action=action,
        actor=actor,
        start=start,
        end=end,
        limit=limit,
        models=p.models,
        own_prefix=p.prefix,
    )
    return [
        {
            "id": e.id,
            "at": _iso(e.at),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "outcome": e.outcome,
            "client": e.client,
            "request_id": e.request_id,
            "details": e.details,
        }
        for e in events
    ]
