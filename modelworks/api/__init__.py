"""The HTTP layer: `create_app(settings)` builds the FastAPI application."""

from modelworks.api.app import create_app

__all__ = ["create_app"]
