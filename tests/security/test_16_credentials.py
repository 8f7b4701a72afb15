"""SECURITY.md classes 7 and 10: credentials are read strictly and leave no trace when refused.

One `Authorization` header, `Bearer` and the key separated by exactly one space and nothing
else around them; an unknown prefix costs the same work as a known one (checked by counting
the work, not by timing it); the audit log keeps nothing of a rejected credential.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from modelworks.api.services import Services
from modelworks.auth import keys as keys_module
from modelworks.errors import Unauthorized

ROUTES = [
    ("GET", "/api/v1/models", {}),
    ("GET", "/api/v1/keys", {}),
    ("GET", "/v2/models/m", {}),
    ("POST", "/v2/models/m/infer", {"json": {"inputs": []}}),  # a protocol route (api/routing.py)
    ("POST", "/v1/embeddings", {"json": {"model": "m", "input": "hi"}}),
    ("POST", "/v1/models/m:predict", {"json": {"instances": [[1]]}}),
]


def test_two_authorization_headers_are_400(anon: httpx.Client, admin_key: str) -> None:
    bad = "mw_" + "Q" * 43
    for first, second in ((admin_key, bad), (bad, admin_key), (admin_key, admin_key)):
        headers = [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]
        for method, path, kw in ROUTES:
            r = anon.request(method, path, headers=headers, **kw)
            assert r.status_code == 400, (method, path, r.text)
            assert "send one" in r.text and "Authorization" in r.text, r.text
    assert anon.get("/api/v1/models", headers={"Authorization": f"Bearer {admin_key}"}).is_success


MALFORMED = [
    "Bearer  {k}",  # two spaces
    "Bearer\t{k}",
    "Bearer {k} ",  # trailing space or tab: the key is never trimmed
    "Bearer {k}\t",
    " Bearer {k}",
    "Bearer {k} extra",
    "Bearer {k}\x0b",
    "Bearer\u00a0{k}",
    "Bearer{k}",
]


def test_whitespace_around_the_key_is_malformed(anon: httpx.Client, admin_key: str) -> None:
    # the management API and a protocol route (staying within the failure budget of
    # 30 a minute per address: beyond it, bad credentials get 429)
    for shape in MALFORMED:
        header = shape.replace("{k}", admin_key).encode("latin-1")
        for method, path, kw in (ROUTES[0], ROUTES[3]):
            r = anon.request(method, path, headers=[("Authorization", header)], **kw)
            assert r.status_code == 401, (method, path, shape, r.text)
            assert "malformed" in r.text, (shape, r.text)
    # exactly one space is the form that works (the scheme's case does not matter)
    for good in (f"Bearer {admin_key}", f"bearer {admin_key}"):
        assert anon.get("/api/v1/models", headers={"Authorization": good}).is_success


class Work:
    """Counts what one authentication does: database statements, hashes, comparisons."""

    def __init__(self, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts = {"statements": 0, "hashes": 0, "compares": 0}
        event.listen(services.engine, "before_cursor_execute", self._statement)
        self._engine = services.engine
        real_hash, real_compare = keys_module.hash_secret, keys_module.hmac.compare_digest

        def counted_hash(secret: str) -> str:
            self.counts["hashes"] += 1
            return real_hash(secret)

        def counted_compare(a: Any, b: Any) -> bool:
            self.counts["compares"] += 1
            return real_compare(a, b)

        monkeypatch.setattr(keys_module, "hash_secret", counted_hash)
        monkeypatch.setattr(keys_module.hmac, "compare_digest", counted_compare)

    def _statement(self, *_: Any) -> None:
        self.counts["statements"] += 1

    def of(self, services: Services, secret: str) -> dict[str, int]:
        self.counts = dict.fromkeys(self.counts, 0)
        with pytest.raises(Unauthorized, match="invalid API key"):
            services.keys.authenticate(secret)
        return dict(self.counts)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._statement)


@pytest.fixture
def work(services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[Work]:
    w = Work(services, monkeypatch)
    yield w
    w.close()


def test_an_unknown_prefix_costs_the_same_work_as_a_known_one(
    services: Services, admin_key: str, work: Work
) -> None:
    known = admin_key[:12] + "x" * (len(admin_key) - 12)  # a real prefix, a wrong secret
    unknown = "mw_" + "x" * (len(admin_key) - 3)
    with_prefix, without = work.of(services, known), work.of(services, unknown)
    assert with_prefix == without, (with_prefix, without)
    assert without["compares"] == 1 and without["hashes"] >= 1 and without["statements"] >= 1


def test_the_audit_log_keeps_nothing_of_a_rejected_credential(
    http: httpx.Client, anon: httpx.Client, services: Services
) -> None:
    revoked = http.post("/api/v1/keys", json={"role": "developer"}).json()
    assert http.delete(f"/api/v1/keys/{revoked['id']}").is_success
    past = datetime.now(UTC) - timedelta(seconds=5)  # the API refuses it: made directly
    expired = {
        "key": services.keys.create(
            project_id=services.default_project_id, role="developer", expires_at=past
        )[1]
    }
    rejected = {
        "unknown": "mw_" + "Q" * 43,
        "malformed": "ZZZZsecretZZZZ",
        "short": "mw_WWWWWW",
        "revoked": revoked["key"],
        "expired": expired["key"],
    }
    for token in rejected.values():
        for method, path, kw in ROUTES[:4]:
            r = anon.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
            assert r.status_code == 401, (path, r.text)
    failures = [e for e in services.audit.list(limit=1000) if e.action == "auth.failure"]
    assert len(failures) == len(rejected) * 4
    assert {e.actor for e in failures} == {""}
    stored = json.dumps([[e.actor, e.target, e.client, e.details] for e in failures])
    stored += http.get("/api/v1/audit", params={"action": "auth.failure", "limit": 1000}).text
    for label, token in rejected.items():
        body = token[3:] if token.startswith("mw_") else token
        for i in range(len(body) - 3):
            assert body[i : i + 4] not in stored, (label, body[i : i + 4])
