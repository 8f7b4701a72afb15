"""Metering and quota charging once an inference response has gone out."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from modelworks.api.services import Services


def make_account(svc: Services) -> Callable[[str, dict[str, Any], int], Awaitable[None]]:
    """The callback the metrics middleware runs after each response."""

    async def account(_protocol: str, facts: dict[str, Any], status: int) -> None:
        """Meter every inference request (per key x model x hour) and charge quotas."""
        model = str(facts.get("model") or "")
        inference = facts.get("method") == "POST"  # metadata and readiness reads are free
        if not svc.settings.metering or not inference or "key_id" not in facts or ":" not in model:
            return
        name, _, version = model.rpartition(":")
        items, tokens = int(facts.get("items", 0)), int(facts.get("tokens", 0))
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
        limits = facts.get("limits")
        if limits is not None and limits.quota and status < 400:
            with contextlib.suppress(Exception):  # a limits outage must not fail the answer
                await svc.limiter.add_usage(
                    facts["key_id"], limits, {"requests": 1, "items": items, "tokens": tokens}
                )

    return account
