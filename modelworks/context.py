"""Facts about the request being served (model, key, items, tokens, error code), gathered
by whichever layer learns them and read once the response is out (metrics, metering).

A context variable holding a dict: set by the HTTP layer per request, written by the auth
dependency and the serving engine, so no layer has to import the one above it.
"""

from __future__ import annotations

import contextvars
from typing import Any

CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "modelworks_request", default=None
)


def note(**fields: Any) -> None:
    """Attach facts to the request being served (a no-op outside one)."""
    current = CURRENT.get()
    if current is not None:
        current.update(fields)


async def reserve(**counts: int) -> None:
    """Charge `counts` (items, tokens) against the request's quotas *before* the work runs.

    The auth layer puts a `reserve` callback into the request's facts; it raises 429 when a
    quota cannot cover the counts. Outside a request, or for a key without quotas, a no-op."""
    current = CURRENT.get()
    hook = current.get("reserve") if current is not None else None
    if hook is not None:
        await hook(counts)
