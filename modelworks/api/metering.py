"""Metering and quota settling once an inference response has gone out.

What `authorize` reserved before the work ran (one request, and the items the serving
engine took through `modelworks.context.reserve`) is settled here: a successful answer keeps
the request and charges the items and tokens the run reported, releasing any reserved items
it did not use; an error answer (4xx or 5xx, the model's refusal included) releases all of
it, so a failed call never uses up a quota. Tokens are only known after a run, so they are
charged then, even past the quota: one request may overshoot it, and the next is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from modelworks.api.services import Services
from modelworks.auth.limits import Reservation


def make_account(svc: Services) -> Callable[[str, dict[str, Any], int], Awaitable[None]]:
    """The callback the metrics middleware runs after each response."""

    async def account(_protocol: str, facts: dict[str, Any], status: int) -> None:
        """Settle the request's quota reservation, then meter it (per key x model x hour)."""
        items, tokens = int(facts.get("items", 0)), int(facts.get("tokens", 0))
        held = facts.get("quota")
        if isinstance(held, Reservation):
            used = {"requests": 1, "items": items, "tokens": tokens} if status < 400 else None
            with contextlib.suppress(Exception):  # a limits outage must not fail the answer
                await svc.limiter.settle(held, used)
        model = str(facts.get("model") or "")
        inference = facts.get("method") == "POST"  # metadata and readiness reads are free
        if not svc.settings.metering or not inference or "key_id" not in facts or ":" not in model:
            return
        name, _, version = model.rpartition(":")
        svc.usage.record(
            project_id=facts["project_id"],
            key_id=facts["key_id"],
            model=name,
            version=int(version),
            items=items,
            tokens=tokens,
            compute_ms=float(facts.get("compute_ms", 0.0)),
            error=status >= 400,
        )

    return account
