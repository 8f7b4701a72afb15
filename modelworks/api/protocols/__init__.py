"""The protocols the server speaks, each described once: its metrics label, the shape of its
errors, whether its bodies are inference bodies, and the paths it owns.

A protocol module declares its routes on a `ProtocolRouter` (a FastAPI `APIRouter`, so the
routes are documented in `/openapi.json` as any other); the router also records each route
with its protocol, and `modelworks.api.routing` dispatches them from that record. Every layer
that needs to know a request's protocol (the error shape, the body cap, the metrics label)
asks `protocol_of(scope)`, which answers from the route the request
matched, and for a path no route matches, from the protocol that owns the path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

KEY = "modelworks.route"  # the scope key of a request's `Resolved`
# a protocol route's endpoint, called with its path parameters (modelworks.api.routing)
Call = Callable[[Request, dict[str, Any]], Awaitable[Response]]


@dataclass(frozen=True)
class Protocol:
    name: str  # the `protocol` label of the request metrics
    errors: str  # "string": {"error": "<message>"}; "openai": OpenAI's error object
    # paths that no route matches but that this protocol owns (their 404 has its error shape):
    # each prefix owns itself and every path below it
    owns: tuple[str, ...] = ()
    inference: bool = True  # bodies capped by MODELWORKS_MAX_REQUEST_BYTES, not 1 MiB


V2 = Protocol("v2", "string", owns=("/v2",))
OPENAI = Protocol(
    "openai", "openai", owns=("/v1/embeddings", "/v1/chat", "/v1/completions", "/v1/responses")
)
TFSERVING = Protocol("tfserving", "string", owns=("/v1",))
HF = Protocol("hf", "string", owns=("/models",))
PROTOCOLS = (V2, OPENAI, TFSERVING, HF)
# the longest owned prefix decides: /v1/embeddings is OpenAI's, the rest of /v1/ TF-Serving's
_OWNED = sorted(((p, proto) for proto in PROTOCOLS for p in proto.owns), key=lambda x: -len(x[0]))


def owner(path: str) -> Protocol | None:
    """The protocol that owns `path` (for a path no route matches); None: the management API."""
    for prefix, proto in _OWNED:
        if path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] in ("", "/"):
            return proto
    return None


@dataclass(frozen=True)
class Described:
    """One route of a protocol, as `modelworks.api.routing` dispatches it."""

    protocol: Protocol
    path: str
    methods: frozenset[str]
    endpoint: Callable[..., Any]


class ProtocolRouter(APIRouter):
    """An APIRouter whose routes belong to `protocol` (and are recorded in `described`)."""

    def __init__(self, protocol: Protocol, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = protocol
        self.described: list[Described] = []

    def add_api_route(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: set[str] | list[str] | None = None,
        tags: list[str | Enum] | None = None,
        **kwargs: Any,
    ) -> None:
        super().add_api_route(path, endpoint, methods=methods, tags=tags, **kwargs)
        verbs = frozenset(m.upper() for m in (methods or ["GET"]))
        self.described.append(Described(self.protocol, self.prefix + path, verbs, endpoint))


@dataclass(frozen=True)
class Resolved:
    """What a request matched: its protocol (None: the management API), and the call of the
    protocol route that takes it (None when no protocol route takes this method and path)."""

    protocol: Protocol | None
    call: Call | None = None
    params: dict[str, Any] = field(default_factory=dict)


def route_path(scope: Scope) -> str:
    """The path the routes see: without the root path the app is mounted under (Starlette's
    rule)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


def resolve(scope: Scope) -> Resolved:
    """The request's protocol route, matched once per request and kept in the scope, against
    the table the app keeps in `app.state.protocol_routes` (`modelworks.api.routing`)."""
    found: Resolved | None = scope.get(KEY)
    if found is None:
        path = route_path(scope)
        state = getattr(scope.get("app"), "state", None)
        table = getattr(state, "protocol_routes", None)
        found = table.resolve(scope["method"], path) if table is not None else Resolved(owner(path))
        scope[KEY] = found
    return found


def protocol_of(scope: Scope) -> Protocol | None:
    """The protocol of an HTTP request (None: the management API)."""
    return resolve(scope).protocol


__all__ = [
    "HF",
    "OPENAI",
    "PROTOCOLS",
    "TFSERVING",
    "V2",
    "Described",
    "Protocol",
    "Resolved",
    "owner",
    "protocol_of",
    "resolve",
]
