"""Probes: `/livez` (the process answers) and `/readyz` (the database answers)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse

from modelworks.api.services import services

router = APIRouter(tags=["health"])


def database_ok(request: Request) -> bool:
    try:
        with services(request).engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    if database_ok(request):
        return JSONResponse({"status": "ok"})
    return JSONResponse(
        {"status": "unavailable", "reason": "database unreachable"}, status_code=503
    )


# HEAD too: load balancers and uptime monitors often probe with it (kept out of the schema,
# where it would repeat the GET operation)
router.add_api_route("/livez", livez, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)
