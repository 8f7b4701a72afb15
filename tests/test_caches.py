"""The per-process caches on the hot path (API keys, model references): when an entry runs
out, one caller goes back to the database while the others keep the entry, and whatever the
database says then (revoked, deleted) wins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from modelworks.api.services import Services
from modelworks.auth import keys as keys_module
from modelworks.auth.keys import KeyService
from modelworks.errors import NotFound, Unauthorized
from modelworks.names import ModelName
from modelworks.registry import Registry
from modelworks.serving import engine as engine_module
from tests.models import linear_onnx
from tests.test_access import deploy


def test_an_expired_key_is_rechecked_by_one_caller_while_the_others_keep_it(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = services.keys
    row, secret = keys.create(project_id=services.default_project_id, role="invoker")
    monkeypatch.setattr(keys_module, "CACHE_TTL_S", 0.0)  # every entry is out at once
    first = keys.authenticate(secret)
    assert keys.cached(secret) is None  # this caller re-checks the database…
    assert keys.cached(secret) == first  # …and the next ones are not sent there too
    assert keys.cached(secret) == first

    # another process revokes it: the next re-check says so and drops the entry
    KeyService(keys.sessions).revoke(row.id)
    with pytest.raises(Unauthorized, match="revoked"):
        keys.authenticate(secret)
    assert keys.cached(secret) is None
    assert keys.cached(secret) is None


def test_a_key_that_passes_the_recheck_is_cached_afresh(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = services.keys
    _, secret = keys.create(project_id=services.default_project_id, role="invoker")
    keys.authenticate(secret)
    assert keys.cached(secret) is not None  # within CACHE_TTL_S
    monkeypatch.setattr(keys._cache, "refresh_s", 0.0)  # no grace for other callers
    monkeypatch.setattr(keys_module, "CACHE_TTL_S", 0.0)
    keys.authenticate(secret)  # cached with no time left
    assert keys.cached(secret) is None
    monkeypatch.setattr(keys_module, "CACHE_TTL_S", 60.0)
    keys.authenticate(secret)
    assert keys.cached(secret) is not None


def test_an_expired_model_reference_is_refreshed_once(
    http: httpx.Client, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy(http, "press", linear_onnx(tmp_path / "press.onnx"))
    engine = services.serving
    principal = services.keys.authenticate(
        services.keys.create(project_id=services.default_project_id, role="invoker")[1]
    )
    calls: list[str] = []
    real = services.registry.resolve

    def counting(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append("db")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(services.registry, "resolve", counting)
    monkeypatch.setattr(engine_module, "RESOLVE_TTL_S", 0.0)

    async def main() -> None:
        first = await engine.resolve_async(principal, "press")
        assert calls == ["db"]
        # out of date at once: the first of many concurrent callers refreshes it…
        targets = await asyncio.gather(
            *(engine.resolve_async(principal, "press") for _ in range(20))
        )
        assert all(t.digest == first.digest for t in targets)
        assert calls == ["db", "db"]

    asyncio.run(main())

    # another replica deletes it (this process hears nothing): the next refresh finds it
    # gone, and the entry goes for everyone instead of being kept as during a refresh
    other_replica = Registry(services.registry.sessions, services.store)
    other_replica.delete_model(services.default_project_id, ModelName("press"))
    for _ in range(2):
        with pytest.raises(NotFound):
            engine.resolve(principal, "press")
