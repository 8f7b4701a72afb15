"""`create_app(settings)`: the FastAPI application. No side effects at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import PlainTextResponse

from modelworks import __version__
from modelworks.api import errors, health, keys, models
from modelworks.api.auth import require
from modelworks.api.metrics import Metrics, MetricsMiddleware
from modelworks.api.middleware import RequestContext
from modelworks.api.protocols import hf, openai, tfserving, v2
from modelworks.api.services import Services
from modelworks.auth.keys import Principal
from modelworks.settings import Settings


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app on an already migrated database (`modelworks db upgrade`)."""
    svc = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.store.clean_scratch()
        svc.exporter.resume()
        yield
        svc.close()

    app = FastAPI(
        title="Modelworks",
        version=__version__,
        summary="Register, serve and meter models over the protocols real clients speak.",
        lifespan=lifespan,
    )
    app.state.services = svc
    errors.install(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(keys.router)
    app.include_router(v2.router)
    app.include_router(openai.router)
    app.include_router(hf.router)
    app.include_router(tfserving.router)
    metrics = Metrics(svc.pool)
    app.state.metrics = metrics

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def prometheus(_p: Principal = Depends(require("read"))) -> PlainTextResponse:
        """Prometheus metrics (scrape with a viewer key as bearer token)."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContext)
    return app
