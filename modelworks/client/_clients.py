"""The sync and async clients: each only knows how to execute a `Call`."""

from __future__ import annotations

import inspect
from types import TracebackType
from typing import Any

import anyio
import httpx

from modelworks import __version__
from modelworks.client._base import (
    DEFAULT_TIMEOUT,
    Call,
    Endpoints,
    resolve_config,
    unreachable,
)
from modelworks.client._jobs import AsyncJobs, Jobs


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"modelworks-python/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _kwargs(call: Call) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for name in ("json", "params", "files", "data"):
        value = getattr(call, name)
        if value is not None:
            kw[name] = value
    if call.timeout is not None:
        kw["timeout"] = call.timeout
    return kw


class Client(Endpoints):
    """Synchronous client. `transport` lets tests run it against an in-process app."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = resolve_config(url, api_key)
        self._signatures: dict[str, dict[str, Any]] = {}
        self._http = httpx.Client(
            base_url=self.url, headers=_headers(self.api_key), timeout=timeout, transport=transport
        )
        self.jobs = Jobs(self._http, self.url, self._execute)
        """Background jobs: `list`, `get`, `cancel`, `logs`, `follow` (yields events)."""

    def _execute(self, call: Call) -> Any:
        try:
            if call.prepare is not None:
                call.prepare()
            response = self._http.request(call.method, call.path, **_kwargs(call))
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from None
        finally:
            if call.on_done is not None:
                call.on_done()
        return call.answer(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(Endpoints):
    """Asynchronous twin of `Client`: the same methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = resolve_config(url, api_key)
        self._signatures: dict[str, dict[str, Any]] = {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=_headers(self.api_key), timeout=timeout, transport=transport
        )
        self.jobs = AsyncJobs(self._http, self.url, self._execute)
        """Background jobs, awaited; `follow` is an async iterator of events."""

    def _execute(self, call: Call) -> Any:
        return self._run(call)

    async def _run(self, call: Call) -> Any:
        try:
            if call.prepare is not None:
                await anyio.to_thread.run_sync(call.prepare)
            response = await self._http.request(call.method, call.path, **_kwargs(call))
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from None
        finally:
            if call.on_done is not None:
                call.on_done()
        result = call.answer(response)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
