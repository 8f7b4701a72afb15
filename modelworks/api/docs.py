"""The API's documentation: `/openapi.json`, Swagger UI at `/docs` and ReDoc at `/redoc`.

They describe every route, so they need a key like the rest of the API unless
`MODELWORKS_DOCS_PUBLIC` opens them. The pages' scripts and styles come from the installed
`fastapi-offline` package, never from a CDN: a self-hosted server may have no internet, and a
page that pulls code from a third party runs that party's code next to an API key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from modelworks.api.auth import authenticate, authorize
from modelworks.errors import NotFound, Unauthorized
from modelworks.settings import Settings

ASSETS = "/docs/static"
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
# the pages may load code, styles and data from this server only (ReDoc runs a blob worker)
PAGE_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
NEEDS_KEY = (
    "the API documentation needs a key: fetch /openapi.json with "
    "'Authorization: Bearer mw_…', or set MODELWORKS_DOCS_PUBLIC=true on a server only "
    "trusted users can reach to open /docs in a browser"
)


def access(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    """A dependency: nothing when the docs are public, else a key with the `read` role."""

    async def public(request: Request) -> None:
        return None

    async def keyed(request: Request) -> None:
        try:
            principal = await authenticate(request)
        except Unauthorized:
            raise Unauthorized(NEEDS_KEY) from None
        await authorize(request, principal, "read")

    return public if settings.docs_public else keyed


def asset(name: str) -> bytes:
    """A file of the packaged Swagger UI / ReDoc build."""
    return (resources.files("fastapi_offline") / "static" / name).read_bytes()


def page(response: HTMLResponse) -> HTMLResponse:
    response.headers["content-security-policy"] = PAGE_POLICY
    return response


def router(settings: Settings, app: FastAPI) -> APIRouter:
    """The documentation routes of `app` (left out of the document they serve)."""
    docs = APIRouter(include_in_schema=False, dependencies=[Depends(access(settings))])
    title = app.title

    @docs.get("/openapi.json")
    def openapi() -> JSONResponse:
        document: dict[str, Any] = app.openapi()
        return JSONResponse(document)

    @docs.get("/docs")
    def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return page(
            get_swagger_ui_html(
                openapi_url=f"{root}/openapi.json",
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
                # Swagger UI's default sends the document to an online validator
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @docs.get("/redoc")
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return page(
            get_redoc_html(
                openapi_url=f"{root}/openapi.json",
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )

    @docs.get(ASSETS + "/{name}")
    def static(name: str) -> Response:
        media_type = ASSET_TYPES.get(name)
        if media_type is None:
            raise NotFound(f"no documentation asset {name[:64]!r}; open /docs")
        return Response(asset(name), media_type=media_type)

    return docs
