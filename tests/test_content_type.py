"""Management routes read a JSON body sent without `Content-Type: application/json` (what
`curl -d` sends), refuse other explicit types with 415, and keep multipart uploads working."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from modelworks.client import Client
from tests.models import linear_onnx

# what curl -d sends, what a bare client sends, and plain text
JSON_ALIKE = [
    {"Content-Type": "application/x-www-form-urlencoded"},
    {},
    {"Content-Type": "text/plain; charset=utf-8"},
]


def raw(
    http: httpx.Client, method: str, path: str, body: object, headers: dict[str, str]
) -> httpx.Response:
    # httpx sends no Content-Type for `content=`; the headers given are all there is
    return http.request(method, path, content=json.dumps(body).encode(), headers=headers)


@pytest.mark.parametrize("headers", JSON_ALIKE, ids=["form", "none", "text"])
def test_json_without_json_content_type(http: httpx.Client, headers: dict[str, str]) -> None:
    r = raw(http, "POST", "/api/v1/models", {"name": "m", "description": "curl -d"}, headers)
    assert r.status_code == 201, r.text
    assert r.json()["description"] == "curl -d"
    r = raw(http, "PATCH", "/api/v1/models/m", {"serving": {"max_batch_size": 8}}, headers)
    assert r.status_code == 200, r.text
    assert r.json()["serving"]["max_batch_size"] == 8
    r = raw(http, "POST", "/api/v1/keys", {"role": "viewer", "name": "from-curl"}, headers)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "from-curl" and r.json()["key"]


def test_json_types_still_work(http: httpx.Client) -> None:
    for ctype in (
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ):
        r = raw(http, "POST", "/api/v1/keys", {"role": "viewer"}, {"Content-Type": ctype})
        assert r.status_code == 201, (ctype, r.text)


@pytest.mark.parametrize(
    "ctype", ["application/xml", "multipart/form-data; boundary=x", "image/png"]
)
def test_other_types_are_415(http: httpx.Client, ctype: str) -> None:
    for method, path in (
        ("POST", "/api/v1/models"),
        ("POST", "/api/v1/keys"),
        ("PATCH", "/api/v1/models/m"),
    ):
        r = raw(http, method, path, {"name": "m"}, {"Content-Type": ctype})
        assert r.status_code == 415, r.text
        assert "Content-Type: application/json" in r.json()["error"]["message"]


def test_a_form_that_is_not_json_says_what_to_send(http: httpx.Client) -> None:
    r = http.post(
        "/api/v1/models",
        content=b"name=m&task=tensor",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400, r.text
    assert "Content-Type: application/json" in r.json()["error"]["message"]


def test_bodyless_requests_ignore_the_type(http: httpx.Client, client: Client) -> None:
    client.create_model("m")
    r = http.delete("/api/v1/models/m", headers={"Content-Type": "application/xml"})
    assert r.status_code == 200, r.text


def test_uploads_stay_multipart(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    client.create_model("m")
    model = linear_onnx(tmp_path / "m.onnx")
    r = http.post("/api/v1/models/m/versions", files={"file": ("m.onnx", model.read_bytes())})
    assert r.status_code == 201, r.text
    assert client.push("m", model)["version"] == 2


@pytest.mark.parametrize("ctype", ["application/xml", "application/x-www-form-urlencoded"])
def test_no_route_is_still_404_or_405(http: httpx.Client, ctype: str) -> None:
    r = http.post("/api/v1/no-such-thing", content=b"a=b", headers={"Content-Type": ctype})
    assert r.status_code == 404, r.text
    r = http.put("/api/v1/keys", content=b"a=b", headers={"Content-Type": ctype})
    assert r.status_code == 405, r.text
