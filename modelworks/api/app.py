"""`create_app(settings)`: the FastAPI application. No side effects at import."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import Depends, FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse

from modelworks import __version__
from modelworks.api import (
    audit,
    datasets,
    docs,
    errors,
    health,
    jobs,
    keys,
    models,
    projects,
    usage,
)
from modelworks.api.auth import require
from modelworks.api.encoding import Compress
from modelworks.api.limits import BodyLimit
from modelworks.api.metering import make_account
from modelworks.api.metrics import Metrics, MetricsMiddleware
from modelworks.api.middleware import RequestContext
from modelworks.api.protocols import hf, openai, tfserving, v2
from modelworks.api.routing import Dispatch, ProtocolRoutes
from modelworks.api.services import Services
from modelworks.auth.keys import Principal
from modelworks.errors import Forbidden
from modelworks.quiet import confine
from modelworks.settings import Settings

USAGE_FLUSH_S = 2.0


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app on an already migrated database (`modelworks db upgrade`).

    It confines the process first (no telemetry, caches under the home): a server that
    embeds the app may call this before anything imports a runtime. The hub's offline
    switches are left to `modelworks serve`: they would also stop the host's own clients."""
    confine(settings.home, offline=False)
    svc = services or Services.build(settings)

    async def flush_usage_forever() -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            await to_thread.run_sync(svc.usage.flush)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.store.clean_scratch()
        flusher = asyncio.create_task(flush_usage_forever())
        yield
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await to_thread.run_sync(svc.usage.flush)
        await svc.limiter.close()
        svc.close()

    app = FastAPI(
        title="Modelworks",
        version=__version__,
        summary="Register, serve and meter models over the protocols real clients speak.",
        lifespan=lifespan,
        # served by api/docs.py: behind a key, assets from the package
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.services = svc
    errors.install(app)
    routers = (health, models, datasets, keys, projects, usage, audit, jobs)
    for module in (*routers, v2, openai, hf, tfserving):
        app.include_router(module.router)
    # the protocol routes, declared once on their routers: FastAPI documents them, Dispatch
    # (modelworks.api.routing) serves them
    protocol_routers = (v2.router, openai.router, hf.router, tfserving.router)
    app.state.protocol_routes = ProtocolRoutes(d for r in protocol_routers for d in r.described)
    app.include_router(docs.router(settings, app))
    metrics = Metrics(svc.pool)
    app.state.metrics = metrics

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def prometheus(p: Principal = Depends(require("read"))) -> PlainTextResponse:
        """Prometheus metrics of the whole server (scrape with an admin key as bearer token:
        they name the models of every project)."""
        if p.role != "admin":
            raise Forbidden("metrics cover every project; scrape them with an admin key")
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    account = make_account(svc)

    app.add_middleware(Dispatch)  # innermost: metrics, limits and hosts apply to it too
    app.add_middleware(MetricsMiddleware, metrics=metrics, on_done=account)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(Compress)  # responses; BodyLimit inflates compressed requests
    if settings.origins:
        # exact origins only; credentials travel in the Authorization header, never cookies
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Content-Encoding",
                "Inference-Header-Content-Length",
            ],
            expose_headers=[
                "Inference-Header-Content-Length",
                "Retry-After",
                "X-Request-ID",
                "X-Error-Code",
            ],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.host_names)
    # outermost (added last): request ids, security headers, and the 500 of an exception no
    # handler took, which Starlette would otherwise answer outside all of these
    app.add_middleware(RequestContext)
    return app
