"""One error envelope, pinned; no tracebacks or server paths in any answer; every error
class comes back from the SDK as itself, whatever shape its route answers."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import modelworks
from modelworks.api.errors import error_style
from modelworks.client._base import raise_for
from modelworks.errors import (
    ERRORS_BY_CODE,
    ERRORS_BY_STATUS,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelworksError,
    NotFound,
    error_from_envelope,
)

# a route of each error shape (see modelworks.api.errors.error_style)
SHAPES = {
    "envelope": "/api/v1/test-raise",
    "string": "/v2/test-raise",
    "openai": "/v1/embeddings/test-raise",
}


def every_error_class() -> list[type[ModelworksError]]:
    """Every subclass of ModelworksError in the package, wherever it is defined (every module
    is imported first; migrations run on import, the entry point starts the CLI)."""
    for info in pkgutil.walk_packages(modelworks.__path__, "modelworks."):
        if info.name.startswith("modelworks.db.migrations.") or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
    found: list[type[ModelworksError]] = []
    todo = [ModelworksError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_unexpected_error_is_generic_500(
    app: FastAPI,
    http: httpx.Client,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    shape: str,
) -> None:
    path = SHAPES[shape] + "/boom"
    assert error_style(path) == shape

    @app.get(path)
    def boom() -> None:
        raise RuntimeError(f"secret path {tmp_path}/db")

    caplog.set_level(logging.ERROR, logger="modelworks.api")
    r = http.get(path, headers={"x-request-id": "req-42"})
    assert r.status_code == 500
    assert str(tmp_path) not in r.text and "Traceback" not in r.text
    # answered by our outermost middleware: the request id and the security headers
    assert r.headers["x-request-id"] == "req-42"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    message = error if shape == "string" else error["message"]
    assert "req-42" in message
    if shape == "envelope":
        assert error["code"] == "internal_error" and error["request_id"] == "req-42"
    assert type(sdk_error(r)) is InternalError
    # logged once, with its traceback, under the request id
    logged = [rec for rec in caplog.records if "req-42" in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "secret path" in caplog.text and "Traceback" in caplog.text


def sdk_error(response: httpx.Response) -> ModelworksError:
    """What the SDK raises for this answer."""
    with pytest.raises(ModelworksError) as info:
        raise_for(response)
    return info.value


def test_security_headers(http: httpx.Client) -> None:
    r = http.get("/livez")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "server" not in r.headers or "uvicorn" not in r.headers["server"]


def test_every_error_class_lives_in_errors_with_a_code_of_its_own() -> None:
    """The SDK imports modelworks.errors only: a class defined elsewhere, or sharing another's
    code, cannot come back from it as itself."""
    classes = every_error_class()
    assert len(classes) >= len(ERRORS_BY_CODE)
    elsewhere = [qualified(c) for c in classes if c.__module__ != "modelworks.errors"]
    assert not elsewhere, f"define these in modelworks.errors and import them: {elsewhere}"
    shared = [qualified(c) for c in classes if ERRORS_BY_CODE.get(c.code) is not c]
    assert not shared, f"these share another class's code: {shared}"
    # the status map is derived: each status answers its most general class
    for status, cls in ERRORS_BY_STATUS.items():
        assert cls.status == status and cls.__mro__[1] is ModelworksError


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_sdk_rebuilds_every_error_class(app: FastAPI, http: httpx.Client, shape: str) -> None:
    """Each class, raised by a route of each error shape, comes back from the SDK as itself
    (the string shape carries the code in the x-error-code header)."""
    classes = every_error_class()
    path = SHAPES[shape]
    assert error_style(path + "/0") == shape

    @app.get(path + "/{index}")
    def raise_one(index: int) -> None:
        raise classes[index]("the message", details={"limit": 3})

    wrong = []
    for i, cls in enumerate(classes):
        r = http.get(f"{path}/{i}")
        assert r.status_code == cls.status, (cls, r.text)
        err = sdk_error(r)
        if type(err) is not cls or "the message" not in err.message:
            wrong.append(f"{qualified(cls)} came back as {qualified(type(err))}")
    assert not wrong


@pytest.mark.parametrize(
    ("status", "body", "header", "expected"),
    [
        (504, {"error": "the deadline passed"}, None, DeadlineExceeded),
        (500, {"error": "boom"}, None, InternalError),
        (404, {"error": "gone"}, None, NotFound),
        (400, {"error": "bad"}, "invalid_input", InvalidInput),
        # OpenAI's own codes are not ours: the status decides
        (404, {"error": {"message": "m", "type": "x", "code": "model_not_found"}}, None, NotFound),
        (502, None, None, ModelworksError),
    ],
)
def test_sdk_maps_answers_without_our_code_by_status(
    status: int, body: Any, header: str | None, expected: type[ModelworksError]
) -> None:
    err = error_from_envelope(status, body, header)
    assert type(err) is expected
