"""The hot inference routes without the framework's routing and dependency solving.

`POST /v2/models/{model}[/versions/{version}]/infer` and `POST /v1/embeddings` are matched
here and handed straight to the same handlers, after the same `authenticate` and `authorize`
calls the routed versions make; errors become the same responses. Everything else passes
through to FastAPI. On a tiny model, routing and dependency solving were half of a request's
Python time.
"""

from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelworks.api.auth import authenticate, authorize
from modelworks.api.errors import error_response
from modelworks.api.protocols import openai, v2
from modelworks.errors import InternalError, ModelworksError, ValidationFailed

log = logging.getLogger("modelworks.api")
INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
EMBEDDINGS = "/v1/embeddings"


class InferFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        embed = False
        if scope["type"] == "http" and scope["method"] == "POST":
            embed = scope["path"] == EMBEDDINGS
            match = None if embed else INFER.match(scope["path"])
        if match is None and not embed:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response: Response
        try:
            project = request.query_params.get("project")
            if project is not None and len(project) > 64:
                raise ValidationFailed(  # worded as the routed handlers' validation says it
                    "invalid request: query.project: String should have at most 64 characters"
                )
            principal = await authenticate(request)
            principal = await authorize(request, principal, "infer", project)
            if match is not None:
                response = await v2.infer(match[1], request, match[2], principal)
            else:
                response = await openai.embeddings(request, principal)
        except ModelworksError as exc:
            response = error_response(request, exc)
        except Exception:
            rid = getattr(request.state, "request_id", "")
            log.exception("unhandled error (request %s)", rid)
            response = error_response(
                request, InternalError(f"internal error; quote request id {rid} when reporting it")
            )
        await response(scope, receive, send)
