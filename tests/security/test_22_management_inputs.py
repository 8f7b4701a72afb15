"""Management inputs an outside battery found lax (issue 9, second round): absurd rate limits
and the Retry-After they produce, expiries that are dead at birth or silently rewritten, a
minted key that would outlive its parent, and probes that use HEAD."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from modelworks.api.errors import MAX_RETRY_AFTER_S, error_response
from modelworks.errors import TooManyRequests


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("rate", [1e-300, 1e-9, 0.0009, 0, -1, 1e7])
@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("POST", "/api/v1/keys", {"role": "developer"}),
        ("POST", "/api/v1/projects", {"name": "absurd"}),
        ("PATCH", "/api/v1/projects/default", {}),
    ],
)
def test_a_rate_limit_outside_what_the_cli_allows_is_422(
    http: httpx.Client, rate: float, method: str, path: str, extra: dict[str, Any]
) -> None:
    r = http.request(method, path, json={**extra, "rate_limit": rate})
    assert r.status_code == 422, r.text
    assert "rate_limit" in r.text


def test_the_smallest_rate_limit_is_accepted(http: httpx.Client) -> None:
    r = http.post("/api/v1/keys", json={"role": "developer", "rate_limit": 0.001})
    assert r.status_code == 201, r.text


def test_retry_after_is_whole_seconds_and_at_most_a_day() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/v2/x", "headers": []})
    for asked, sent in ((10**300, MAX_RETRY_AFTER_S), (3, 3), (-5, 0)):
        exc = TooManyRequests("slow down", details={"retry_after": asked})
        assert error_response(request, exc).headers["Retry-After"] == str(sent)


@pytest.mark.parametrize(
    "expires",
    [
        "2001-01-01T00:00:00Z",  # dead at birth
        "9999-12-31T23:59:59-23:59",  # past year 9999 once in UTC
        "0001-01-01T00:00:00+23:59",  # before year 1 once in UTC
    ],
)
def test_an_expiry_that_cannot_be_kept_as_asked_is_422(http: httpx.Client, expires: str) -> None:
    r = http.post("/api/v1/keys", json={"role": "developer", "expires_at": expires})
    assert r.status_code == 422, r.text
    assert "expires_at" in r.text


def test_an_expiry_with_an_offset_is_kept_as_the_same_instant(http: httpx.Client) -> None:
    r = http.post(
        "/api/v1/keys", json={"role": "developer", "expires_at": "2090-06-01T12:00:00+02:00"}
    )
    assert r.status_code == 201, r.text
    kept = datetime.fromisoformat(r.json()["expires_at"].replace("Z", "+00:00"))
    assert kept == datetime(2090, 6, 1, 10, tzinfo=UTC)


def test_a_minted_key_may_not_outlive_its_parent(http: httpx.Client, anon: httpx.Client) -> None:
    soon = datetime.now(UTC) + timedelta(hours=2)
    parent = http.post(
        "/api/v1/keys", json={"role": "owner", "expires_at": soon.isoformat()}
    ).json()
    later = (soon + timedelta(days=1)).isoformat()
    r = anon.post(
        "/api/v1/keys",
        json={"role": "developer", "expires_at": later},
        headers=bearer(parent["key"]),
    )
    assert r.status_code == 403, r.text
    assert "outlive" in r.text

    inherited = anon.post("/api/v1/keys", json={"role": "developer"}, headers=bearer(parent["key"]))
    assert inherited.status_code == 201, inherited.text
    assert inherited.json()["expires_at"] is not None


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/v2/health/live", "/v2/health/ready"])
def test_health_probes_answer_head(anon: httpx.Client, path: str) -> None:
    r = anon.head(path)
    assert r.status_code == 200, (path, r.status_code, r.headers.get("allow"))
