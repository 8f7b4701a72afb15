"""The model pool and promotions: warm-up, memory budget, readiness, metrics, no failed
request while an alias moves under load."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from modelworks.api.services import Services
from modelworks.client import Client
from modelworks.errors import Conflict
from modelworks.jobs.export import ExportKind
from modelworks.jobs.kinds import Plan
from modelworks.serving.pool import runtime_message
from tests.conftest import LiveServer
from tests.models import linear_onnx, linear_reference

ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def _two_versions(client: Client, tmp_path: Path) -> None:
    client.create_model("m")
    client.push("m", linear_onnx(tmp_path / "a.onnx", seed=1))
    client.push("m", linear_onnx(tmp_path / "b.onnx", seed=2))


def test_no_request_fails_while_the_alias_moves(
    client: Client, live_server: LiveServer, admin_key: str, tmp_path: Path
) -> None:
    _two_versions(client, tmp_path)
    client.set_alias("m", "production", 1)
    expected = {
        1: linear_reference(np.array([[1, 2, 3, 4]], np.float32), seed=1),
        2: linear_reference(np.array([[1, 2, 3, 4]], np.float32), seed=2),
    }
    stop = threading.Event()
    failures: list[str] = []
    served: list[int] = []

    def hammer() -> None:
        with httpx.Client(
            base_url=live_server.url, headers={"Authorization": f"Bearer {admin_key}"}
        ) as h:
            for _ in range(2000):
                if stop.is_set():
                    return
                r = h.post("/v2/models/m/infer", json=ROW)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                body = r.json()
                version = int(body["model_version"])
                np.testing.assert_allclose(
                    np.array(body["outputs"][0]["data"]).reshape(1, 2), expected[version], rtol=1e-5
                )
                served.append(version)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    with Client(live_server.url, admin_key) as admin:
        for i in range(6):
            admin.set_alias("m", "production", 2 if i % 2 == 0 else 1)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures[:3]
    assert {1, 2} <= set(served), "both versions answered during the promotions"


def test_alias_is_not_moved_to_a_version_that_cannot_load(
    client: Client, services: Services, tmp_path: Path
) -> None:
    _two_versions(client, tmp_path)
    client.set_alias("m", "production", 1)
    digest = client.get_version("m", 2)["digest"]
    blob = services.store.root / "blobs" / "sha256" / digest[7:9] / digest[9:]
    blob.write_bytes(b"corrupted")
    with pytest.raises(Conflict, match="not moved"):
        client.set_alias("m", "production", 2)
    assert client.get_model("m")["aliases"] == {"production": 1}


def test_memory_budget_unloads_the_least_recently_used(tmp_path: Path) -> None:
    from modelworks.api.app import create_app
    from modelworks.db import upgrade
    from modelworks.settings import Settings
    from tests.asgi import SyncASGITransport

    settings = Settings(home=tmp_path / "h", auth=False, memory_budget_mb=1, allowed_hosts="*")
    upgrade(settings.resolved_database_url)
    svc = Services.build(settings)
    t = SyncASGITransport(create_app(settings, svc))
    try:
        with Client("http://testserver", transport=t) as c:
            for i, name in enumerate(("a", "b", "c")):
                c.create_model(name)
                c.push(name, linear_onnx(tmp_path / f"{name}.onnx", seed=i))
                assert c.infer(name, {"x": [[1, 2, 3, 4]]})["y"].shape == (1, 2)
            loaded = [e.target.model for e in svc.pool.entries() if e.model is not None]
            assert loaded == ["c"], "older models were unloaded to stay within the budget"
            # an unloaded model loads again on its next call
            assert c.infer("a", {"x": [[1, 2, 3, 4]]})["y"].shape == (1, 2)
    finally:
        t.close()
        svc.close()


def test_ready_route_loads_and_warms(
    http: httpx.Client, client: Client, services: Services, tmp_path: Path
) -> None:
    client.create_model("m")
    client.push("m", linear_onnx(tmp_path / "a.onnx"))
    assert [e for e in services.pool.entries() if e.model is not None] == []
    r = http.get("/v2/models/m/ready")
    assert r.status_code == 200 and r.json() == {"name": "m", "ready": True}
    (entry,) = services.pool.entries()
    assert entry.model is not None and entry.load_seconds > 0


def test_metrics(http: httpx.Client, anon: httpx.Client, client: Client, tmp_path: Path) -> None:
    client.create_model("m")
    client.push("m", linear_onnx(tmp_path / "a.onnx"))
    for _ in range(3):
        assert http.post("/v2/models/m/infer", json=ROW).status_code == 200
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert http.post("/v2/models/m/infer", json=bad).status_code == 400
    assert anon.get("/metrics").status_code == 401
    text = http.get("/metrics").text
    assert 'modelworks_requests_total{model="m:1",protocol="v2",status="200"} 3.0' in text
    assert 'modelworks_errors_total{code="invalid_input",model="m:1",protocol="v2"} 1.0' in text
    assert "modelworks_batch_size_bucket" in text
    assert 'modelworks_model_load_seconds{model="m:1"}' in text
    assert 'modelworks_queue_depth{model="m:1",project_id="1"} 0.0' in text
    assert 'modelworks_inference_items_total{model="m:1"} 3.0' in text


def test_serving_options_per_model(client: Client, http: httpx.Client) -> None:
    client.create_model("m")
    r = http.patch("/api/v1/models/m", json={"serving": {"max_batch_size": 8, "max_delay_ms": 0}})
    assert r.status_code == 200 and r.json()["serving"] == {
        "max_batch_size": 8,
        "max_delay_ms": 0.0,
    }
    r = http.patch("/api/v1/models/m", json={"serving": {"max_batch_size": 0}})
    assert r.status_code == 422 and "from 1 to 4096" in r.json()["error"]["message"]
    r = http.patch("/api/v1/models/m", json={"serving": {"turbo": 1}})
    assert r.status_code == 422


ORT_SIGNATURE = (
    "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model_load_utils"
    ".h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::unordered_map"
    "<std::__cxx11::basic_string<char>, int>&, const onnxruntime::logging::Logger&, bool, const"
    " string&, int) ONNX Runtime only *guarantees* support for models stamped with official "
    "released onnx opset versions. Opset 999 is under development."
)
RUNTIME_MESSAGES = {
    "pretty-function": (
        ORT_SIGNATURE,
        "FAIL : ONNX Runtime only *guarantees* support for models stamped with official "
        "released onnx opset versions. Opset 999 is under development.",
    ),
    "constructor": (
        "[ONNXRuntimeError] : 1 : FAIL : /src/onnxruntime/core/graph/model.cc:256 onnxruntime::"
        "Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&) Unsupported model IR "
        "version: 15, max supported IR version: 14",
        "FAIL : Unsupported model IR version: 15, max supported IR version: 14",
    ),
    "bare-function-name": (
        "[ONNXRuntimeError] : 1 : FAIL : model.cc:95 ValidateFunctionNodeCounts Invalid opset "
        "version for domain local.fn in function F",
        "FAIL : Invalid opset version for domain local.fn in function F",
    ),
    "std-type": (
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
        "running Expand node. Status Message: std::bad_alloc",
        "RUNTIME_EXCEPTION : Non-zero status code returned while running Expand node. Status "
        "Message: bad_alloc",
    ),
    "python-module-path": (
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: "
        "invalid JSON in header",
        "SafetensorError: Error while deserializing header: invalid JSON in header",
    ),
    "module-path-before-ort-prefix": (
        "onnxruntime.capi.onnxruntime_pybind11_state.Fail: [ONNXRuntimeError] : 1 : FAIL : x",
        "Fail: FAIL : x",
    ),
}


@pytest.mark.parametrize("case", sorted(RUNTIME_MESSAGES))
def test_runtime_messages_lose_cpp_signatures_and_module_paths(case: str) -> None:
    raw, expected = RUNTIME_MESSAGES[case]

    assert runtime_message(RuntimeError(raw)) == expected


def test_an_export_failure_reason_names_no_library_module() -> None:
    tail = [
        "Traceback (most recent call last):",
        '  File "/srv/lib/site-packages/safetensors/torch.py", line 3, in load',
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: "
        "invalid JSON in header",
    ]
    ctx = SimpleNamespace(settings=SimpleNamespace(export_memory_mb=0))
    plan = Plan(argv=[], env={}, timeout_s=1.0)

    reason, retry = ExportKind().failure(None, ctx, plan, 1, tail)  # type: ignore[arg-type]

    assert reason == (
        "ONNX export failed: SafetensorError: Error while deserializing header: invalid JSON in "
        "header"
    )
    assert not retry, "an export that ran and failed fails the same way again"
