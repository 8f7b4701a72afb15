"""Management inputs an outside battery found lax (issue 9, second round): absurd rate limits
and the Retry-After they produce, expiries that are dead at birth or silently rewritten, a
minted key that would outlive its parent, and probes that use HEAD."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from modelworks.api.errors import MAX_RETRY_AFTER_S, error_response
from modelworks.errors import NotFound, TooManyRequests
from tests.models import linear_onnx


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


# multipart uploads ------------------------------------------------------------------------------
BOUNDARY = "mw-mgmt-5f2a"


def multipart(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, dict[str, str]]:
    """(Content-Disposition value, content) parts as one multipart body."""
    b = BOUNDARY.encode()
    out = b"".join(
        b"--" + b + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + content + b"\r\n"
        for disposition, content in parts
    )
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    return out + b"--" + b + b"--\r\n", {"Content-Type": ctype}


@pytest.fixture
def onnx_bytes(tmp_path: Path) -> bytes:
    return linear_onnx(tmp_path / "m.onnx").read_bytes()


@pytest.fixture
def versions(http: httpx.Client) -> str:
    assert http.post("/api/v1/models", json={"name": "parts"}).status_code == 201
    return "/api/v1/models/parts/versions"


def test_a_repeated_form_field_is_400(http: httpx.Client, versions: str, onnx_bytes: bytes) -> None:
    content, headers = multipart(
        [
            (b'form-data; name="description"', b"first"),
            (b'form-data; name="description"', b"second"),
            (b'form-data; name="file"; filename="m.onnx"', onnx_bytes),
        ]
    )
    r = http.post(versions, content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert "appears twice" in r.text
    assert http.get(versions).json() == []


@pytest.mark.parametrize(
    ("disposition", "kept"),
    [
        (b'filename="../../../etc/x.onnx"', "x.onnx"),
        (b'filename="C:\\\\models\\\\press.onnx"', "press.onnx"),
        (b"filename*=UTF-8''caf%C3%A9.onnx", "café.onnx"),
    ],
)
def test_only_the_base_of_a_file_name_is_recorded(
    http: httpx.Client, versions: str, onnx_bytes: bytes, disposition: bytes, kept: str
) -> None:
    content, headers = multipart([(b'form-data; name="file"; ' + disposition, onnx_bytes)])
    r = http.post(versions, content=content, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["lineage"]["filename"] == kept


@pytest.mark.parametrize(
    "disposition",
    [b"filename*=UTF-8''%ED%A0%80.onnx", b"filename*=UTF-8''%FF.onnx", b"filename*=latin-1''x"],
)
def test_an_extended_file_name_that_is_not_utf8_is_400(
    http: httpx.Client, versions: str, onnx_bytes: bytes, disposition: bytes
) -> None:
    content, headers = multipart([(b'form-data; name="file"; ' + disposition, onnx_bytes)])
    r = http.post(versions, content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert "filename*" in r.text
    assert http.get(versions).json() == []


# query strings and paths that are not UTF-8 ------------------------------------------------------
@pytest.mark.parametrize("escape", ["%ED%A0%80", "%FF", "%C0%AF", "%E2%82"])
@pytest.mark.parametrize(
    "template",
    [
        "/api/v1/audit?action={}",
        "/api/v1/usage?group_by={}",
        "/api/v1/models?project={}",
        "/api/v1/models/{}",
        "/v2/models/{}/ready",
    ],
)
def test_a_percent_escape_that_is_not_utf8_is_400(
    http: httpx.Client, template: str, escape: str
) -> None:
    r = http.get(template.format(escape))
    assert r.status_code == 400, (template, r.status_code, r.text)
    assert "UTF-8" in r.text
    assert "\ufffd" not in r.text  # nothing decoded with replacement characters is echoed


def test_utf8_escapes_still_pass(http: httpx.Client) -> None:
    r = http.get("/api/v1/audit?action=caf%C3%A9")
    assert r.status_code == 200, r.text


# one spelling per version on the management routes ----------------------------------------------
@pytest.fixture
def one_version(http: httpx.Client, tmp_path: Path) -> str:
    assert http.post("/api/v1/models", json={"name": "spell"}).status_code == 201
    path = linear_onnx(tmp_path / "m.onnx")
    with path.open("rb") as fh:
        r = http.post("/api/v1/models/spell/versions", files={"file": ("m.onnx", fh)})
    assert r.status_code == 201, r.text
    return "/api/v1/models/spell"


@pytest.mark.parametrize(
    "spelling", ["1.0", "+1", "%201", "1%20", "01", "0001", "1e0", "%EF%BC%91"]
)
def test_a_version_has_one_spelling_in_management_paths(
    http: httpx.Client, one_version: str, spelling: str
) -> None:
    assert http.get(f"{one_version}/versions/1").status_code == 200
    r = http.get(f"{one_version}/versions/{spelling}")
    assert r.status_code in (400, 404), (spelling, r.status_code, r.text)


@pytest.mark.parametrize("version", [True, "1", "01", 1.0, 1e0])
def test_an_alias_takes_a_whole_number_only(
    http: httpx.Client, one_version: str, version: object
) -> None:
    r = http.put(f"{one_version}/aliases/prod", json={"version": version, "warm": False})
    assert r.status_code == 422, (version, r.text)
    assert http.get(f"{one_version}/aliases/prod").status_code in (404, 405)


def test_an_error_that_echoes_a_lone_surrogate_still_answers() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/api/v1/x", "headers": []})
    r = error_response(request, NotFound("model '\ud800' not found"))
    assert r.status_code == 404
    assert b"\\ud800" in r.body


# texts a terminal would act on ------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["d\x1b[2J\x1b]0;pwn\x07", "a\x9b31m", "evil\u202etxt.exe", "x\u2066y", "nul\x00"]
)
@pytest.mark.parametrize(
    ("path", "field", "extra"),
    [
        ("/api/v1/models", "description", {"name": "ctl"}),
        ("/api/v1/keys", "name", {"role": "developer"}),
        ("/api/v1/projects", "description", {"name": "ctl"}),
    ],
)
def test_management_texts_refuse_terminal_controls(
    http: httpx.Client, path: str, field: str, extra: dict[str, Any], text: str
) -> None:
    r = http.post(path, json={**extra, field: text})
    assert r.status_code == 400, (path, r.status_code, r.text)
    assert "control" in r.text


def test_tabs_and_newlines_stay_allowed(http: httpx.Client) -> None:
    r = http.post("/api/v1/models", json={"name": "multi", "description": "line 1\n\tline 2"})
    assert r.status_code == 201, r.text


def test_a_version_description_refuses_terminal_controls(
    http: httpx.Client, versions: str, onnx_bytes: bytes
) -> None:
    content, headers = multipart(
        [
            (b'form-data; name="description"', b"d\x1b[2J"),
            (b'form-data; name="file"; filename="m.onnx"', onnx_bytes),
        ]
    )
    r = http.post(versions, content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert http.get(versions).json() == []
