"""The auth dependency: `Authorization: Bearer <key>` -> Principal, failures audited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from anyio import to_thread
from fastapi import Depends
from starlette.requests import Request

from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.errors import Unauthorized

ANONYMOUS_ROLE = "admin"  # auth off (loopback only): every caller may do everything


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def authenticate(request: Request) -> Principal:
    svc = services(request)
    if not svc.settings.auth:
        p = Principal(
            key_id=None, prefix="anonymous", project_id=svc.default_project_id, role=ANONYMOUS_ROLE
        )
        request.state.principal = p
        return p
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    try:
        if not header:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer mw_…' "
                "(or set MODELWORKS_API_KEY for the CLI and SDK)"
            )
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: use 'Authorization: Bearer mw_…'")
        secret = token.strip()
        found = svc.keys.cached(secret)
        if found is None:
            found = await to_thread.run_sync(svc.keys.authenticate, secret)
    except Unauthorized as exc:
        record = partial(
            svc.audit.record,
            action="auth.failure",
            outcome="denied",
            actor=token.strip()[:12] if token else "",
            target=request.url.path[:256],
            client=client_address(request),
            request_id=getattr(request.state, "request_id", ""),
            details={"reason": exc.message},
        )
        await to_thread.run_sync(record)
        raise
    request.state.principal = found
    return found


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates and checks the role allows `permission`."""

    async def dependency(p: Principal = Depends(authenticate)) -> Principal:
        p.require(permission)
        return p

    return dependency
