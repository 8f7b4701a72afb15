"""Jobs over REST: list, show, cancel, follow (Server-Sent Events) and logs."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["jobs"])
