"""Readiness tells the truth on every protocol: a version whose stored artifact is damaged (so
its runtime cannot load it) is not ready on OIP, TF-Serving and OpenAI status routes, on the
first look, before any inference has tried to load it; a healthy model beside it is ready."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from modelworks.api.services import Services
from modelworks.client import Client
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx


def mistyped_identity(path: Path) -> Path:
    """x FP32 -> Identity -> y declared INT64: uploads fine, but ONNX Runtime refuses to load
    it (the output's type does not match the node's)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "mistyped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@dataclass(frozen=True)
class Broken:
    reason: str  # what the reason says, in every protocol's answer
    store_root: str  # never in an answer


@pytest.fixture(params=["damaged-artifact", "runtime-refuses"])
def broken(
    request: pytest.FixtureRequest, client: Client, services: Services, tmp_path: Path
) -> Broken:
    """`broken` (version 1) that cannot load, and `healthy` beside it. Nothing has loaded
    either yet (setting an alias would: it warms the version first)."""
    client.create_model("healthy")
    client.push("healthy", linear_onnx(tmp_path / "healthy.onnx", seed=4))
    client.create_model("broken")
    root = str(services.store.root)
    if request.param == "runtime-refuses":
        client.push("broken", mistyped_identity(tmp_path / "broken.onnx"))
        return Broken("could not load this model", root)
    digest = client.push("broken", linear_onnx(tmp_path / "broken.onnx", seed=3))["digest"]
    hexdigest = digest.removeprefix("sha256:")
    blob = services.store.root / "blobs" / "sha256" / hexdigest[:2] / hexdigest[2:]
    assert blob.is_file()
    blob.write_bytes(b"\x00garbage, not the uploaded model" * 8)
    return Broken("failed its digest check; re-upload the version", root)


def test_oip_ready_is_503_with_the_reason(http: httpx.Client, broken: Broken) -> None:
    for path in ("/v2/models/broken/ready", "/v2/models/broken/versions/1/ready"):
        r = http.get(path)
        assert r.status_code == 503, (path, r.text)
        body = r.json()
        assert (body["name"], body["ready"]) == ("broken", False)
        assert broken.reason in body["error"], body
        assert broken.store_root not in body["error"]  # no server paths
    assert http.get("/v2/models/healthy/ready").json() == {"name": "healthy", "ready": True}


def test_tfserving_status_is_end_with_the_reason(http: httpx.Client, broken: Broken) -> None:
    r = http.get("/v1/models/broken/versions/1")
    assert r.status_code == 200, r.text  # as TF-Serving: the status is the answer
    (status,) = r.json()["model_version_status"]
    assert status["version"] == "1"
    assert status["state"] == "END", status
    assert status["status"]["error_code"] == "UNKNOWN"
    assert broken.reason in status["status"]["error_message"]
    assert broken.store_root not in status["status"]["error_message"]
    (healthy,) = http.get("/v1/models/healthy/versions/1").json()["model_version_status"]
    assert healthy["state"] == "AVAILABLE"
    assert healthy["status"] == {"error_code": "OK", "error_message": ""}


def test_shared_model_route_is_503_for_every_client(http: httpx.Client, broken: Broken) -> None:
    """`GET /v1/models/{id}`: OpenAI's error object, KServe V1's `ready`, TF-Serving's status."""
    r = http.get("/v1/models/broken")
    assert r.status_code == 503, r.text
    assert r.headers["x-should-retry"] == "false"
    body = r.json()
    assert body["error"]["type"] == "server_error"
    assert "broken:1 is not ready" in body["error"]["message"]
    assert broken.reason in body["error"]["message"]
    assert broken.store_root not in r.text
    assert (body["id"], body["name"], body["ready"]) == ("broken", "broken", False)
    (status,) = body["model_version_status"]
    assert status["state"] == "END" and broken.reason in status["status"]["error_message"]

    healthy = http.get("/v1/models/healthy")
    assert healthy.status_code == 200, healthy.text
    assert healthy.json()["ready"] is True
    assert healthy.json()["model_version_status"][0]["state"] == "AVAILABLE"
    # the listing says what exists, ready or not
    listed = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert listed == {"broken", "healthy"}


def test_openai_client_retrieve_raises_once(
    transport: SyncASGITransport, admin_key: str, broken: Broken
) -> None:
    import openai

    calls: list[str] = []
    with httpx.Client(
        transport=transport, event_hooks={"request": [lambda r: calls.append(r.url.path)]}
    ) as http_client:
        oai = openai.OpenAI(
            base_url="http://testserver/v1",
            api_key=admin_key,
            http_client=http_client,  # type: ignore[arg-type]  # openai's stubs name httpx2
        )
        with pytest.raises(openai.InternalServerError) as caught:
            oai.models.retrieve("broken")
        assert caught.value.status_code == 503
        assert broken.reason in caught.value.message
        assert calls == ["/v1/models/broken"]  # default retries, but no retry of a broken file
        assert oai.models.retrieve("healthy").id == "healthy"
