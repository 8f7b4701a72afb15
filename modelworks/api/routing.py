"""The protocol routes' one dispatch path: a thin ASGI layer of our own in front of FastAPI.

Each protocol declares its routes once, on a `ProtocolRouter` (`modelworks.api.protocols`):
FastAPI documents them, and this module dispatches them. `resolve(scope)` matches a request
against the protocol routes once and keeps the answer in the scope, so the layers that need the
request's protocol (the body cap, the error shape, the metrics label) ask it instead of reading
the path; `Dispatch`, the innermost middleware, calls the matched route's endpoint with the same
`authenticate` and `authorize` its FastAPI dependency names, and turns an exception into a
response with the app's own exception handlers (what it has no handler for goes up to
`RequestContext`). Requests no protocol route takes (the management API, the docs, a 404 or a
405) go on to FastAPI.

Why not let FastAPI route them: on a small model, its routing and dependency solving add about
half again to the server CPU of an inference request (`benchmarks/request_cpu.py` against a
checkout with `Dispatch` removed: 663 vs 429 µs per OIP request).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from re import Pattern
from typing import Any

from anyio import to_thread
from fastapi import params
from fastapi.encoders import jsonable_encoder
from starlette.convertors import Convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from modelworks.api.auth import authenticate, authorize, project_param
from modelworks.api.protocols import Call, Described, Protocol, Resolved, owner, resolve


@dataclass(frozen=True)
class Entry:
    protocol: Protocol
    path: str
    methods: frozenset[str]
    regex: Pattern[str]
    convertors: dict[str, Convertor[Any]]
    call: Call


class ProtocolRoutes:
    """The protocol routes, indexed by first path segment and method, in declaration order."""

    def __init__(self, described: Iterable[Described]) -> None:
        self.entries: list[Entry] = []
        self.by_key: dict[tuple[str, str], list[Entry]] = {}  # (segment, method): entries
        self.by_segment: dict[str, list[Entry]] = {}
        for d in described:
            regex, _, convertors = compile_path(d.path)
            entry = Entry(d.protocol, d.path, d.methods, regex, convertors, caller(d))
            self.entries.append(entry)
            self.by_segment.setdefault(_segment(d.path), []).append(entry)
            for method in d.methods:
                self.by_key.setdefault((_segment(d.path), method), []).append(entry)

    def resolve(self, method: str, path: str) -> Resolved:
        segment = _segment(path)
        for entry in self.by_key.get((segment, method), ()):
            m = entry.regex.match(path)
            if m is not None:
                found = {k: entry.convertors[k].convert(v) for k, v in m.groupdict().items()}
                return Resolved(entry.protocol, entry.call, found)
        for entry in self.by_segment.get(segment, ()):
            if entry.regex.match(path) is not None:  # a 405 of this protocol, FastAPI's answer
                return Resolved(entry.protocol)
        return Resolved(owner(path))


def _segment(path: str) -> str:
    return path.split("/", 2)[1] if path.startswith("/") and len(path) > 1 else ""


def caller(d: Described) -> Call:
    """How to call `d.endpoint` without FastAPI: its parameters may be the `Request`, the
    principal its `require(...)` dependency gives, and the route's path parameters (as strings,
    or left at their defaults); anything else is refused here, at startup, rather than
    silently dropped at request time."""
    endpoint = d.endpoint
    hints = typing.get_type_hints(endpoint)
    _, _, convertors = compile_path(d.path)
    request_name = principal_name = permission = None
    for name, param in inspect.signature(endpoint).parameters.items():
        default = param.default
        if isinstance(default, params.Depends):
            permission = getattr(default.dependency, "permission", None)
            if permission is None:
                raise TypeError(f"{d.path}: only require(...) may be a dependency here ({name})")
            principal_name = name
        elif hints.get(name) is Request:
            request_name = name
        elif name not in convertors and default is inspect.Parameter.empty:
            raise TypeError(f"{d.path}: parameter {name!r} is neither a path parameter nor known")
    run_sync = not inspect.iscoroutinefunction(endpoint)

    async def call(request: Request, path_params: dict[str, Any]) -> Response:
        kwargs = dict(path_params)
        if request_name is not None:
            kwargs[request_name] = request
        if principal_name is not None:
            principal = await authenticate(request)
            project = project_param(request)
            kwargs[principal_name] = await authorize(request, principal, str(permission), project)
        if run_sync:
            result = await to_thread.run_sync(partial(endpoint, **kwargs))
        else:
            result = await endpoint(**kwargs)
        if isinstance(result, Response):
            return result
        return JSONResponse(jsonable_encoder(result))

    return call


def _handler(app: Any, exc: Exception) -> Callable[[Request, Exception], Any] | None:
    handlers: dict[Any, Any] = getattr(app, "exception_handlers", {})
    for cls in type(exc).__mro__:
        if cls in handlers:
            return typing.cast(Callable[[Request, Exception], Any], handlers[cls])
    return None


class Dispatch:
    """Innermost middleware: calls the protocol route a request matched (after the metrics,
    limits and hosts layers), else hands the request to FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = resolve(scope) if scope["type"] == "http" else None
        if found is None or found.call is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = found.params  # as Starlette's router sets them
        request = Request(scope, receive)
        try:
            response = await found.call(request, found.params)
        except Exception as exc:
            handler = _handler(scope.get("app"), exc)
            if handler is None:
                raise  # RequestContext logs it and answers the 500
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)
