"""One error envelope, pinned; no tracebacks or server paths in any answer."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from modelworks.errors import ERRORS_BY_CODE, NotFound, error_from_envelope


def test_management_envelope_is_pinned(http: httpx.Client) -> None:
    r = http.get("/api/v1/models/missing-model")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == "not_found"
    assert body["error"]["request_id"] == r.headers["x-request-id"]


def test_protocol_envelope_is_a_string(http: httpx.Client) -> None:
    r = http.post("/v2/models/missing-model/infer", json={"inputs": []})
    assert r.status_code == 404
    assert isinstance(r.json()["error"], str)


def test_unknown_route_and_method(http: httpx.Client) -> None:
    r = http.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.put("/api/v1/models")
    assert r.status_code == 405


def test_body_validation_is_422_without_echo(http: httpx.Client) -> None:
    r = http.post("/api/v1/models", json={"name": "ok", "task": "tensor", "secret": "s3cr3t-value"})
    assert r.status_code == 422
    assert "s3cr3t-value" not in r.text
    r = http.post(
        "/api/v1/models", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


def test_unexpected_error_is_generic_500(app: FastAPI, http: httpx.Client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError(f"secret path {tmp_path}/db")

    r = http.get("/api/v1/boom")
    assert r.status_code == 500
    assert str(tmp_path) not in r.text and "Traceback" not in r.text
    assert r.json()["error"]["code"] == "internal_error"


def test_security_headers(http: httpx.Client) -> None:
    r = http.get("/livez")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "server" not in r.headers or "uvicorn" not in r.headers["server"]


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_sdk_rebuilds_every_error_class(code: str) -> None:
    cls = ERRORS_BY_CODE[code]
    err = error_from_envelope(cls.status, {"error": {"code": code, "message": "m"}})
    assert type(err) is cls and err.message == "m"


def test_sdk_maps_protocol_errors_by_status() -> None:
    assert isinstance(error_from_envelope(404, {"error": "gone"}), NotFound)
