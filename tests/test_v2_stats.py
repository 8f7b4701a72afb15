"""Triton's statistics extension: GET /v2/models[/{m}[/versions/{v}]]/stats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.client import Client
from tests.conftest import LiveServer
from tests.models import linear_onnx

X = np.arange(12, dtype=np.float32).reshape(3, 4)


def push(client: Client, path: Path, name: str) -> None:
    client.create_model(name)
    client.push(name, path)


def v2(rows: int = 1) -> dict[str, Any]:
    x = X[:rows]
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


def by_version(stats: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    return {s["version"]: s for s in stats["model_stats"] if s["name"] == name}


@pytest.mark.socket
def test_tritonclient_statistics_after_infers(
    client: Client, tmp_path: Path, live_server: LiveServer, admin_key: str
) -> None:
    import tritonclient.http as triton

    push(client, linear_onnx(tmp_path / "a.onnx"), "m")
    client.push("m", linear_onnx(tmp_path / "b.onnx", seed=1))  # version 2 serves
    c = triton.InferenceServerClient(url=f"127.0.0.1:{live_server.port}")
    auth = {"Authorization": f"Bearer {admin_key}"}
    try:
        assert "statistics" in c.get_server_metadata(headers=auth)["extensions"]
        for rows in (1, 3, 2, 3):
            inp = triton.InferInput("x", [rows, 4], "FP32")
            inp.set_data_from_numpy(X[:rows])
            c.infer("m", [inp], headers=dict(auth))
        stats = c.get_inference_statistics("m", headers=auth)
        versions = by_version(stats, "m")
        assert set(versions) == {"1", "2"}  # a bare name: every version, as Triton
        idle, served = versions["1"], versions["2"]
        assert idle["inference_count"] == 0 and idle["inference_stats"]["success"]["count"] == 0
        inference = served["inference_stats"]
        assert inference["success"]["count"] == 4
        assert inference["success"]["ns"] > 0 and inference["compute_infer"]["ns"] > 0
        assert inference["queue"]["count"] == 4 and inference["fail"]["count"] == 0
        assert served["inference_count"] == 1 + 3 + 2 + 3  # rows, as Triton counts
        assert 1 <= served["execution_count"] <= served["inference_count"]
        assert served["last_inference"] > 0
        sizes = {b["batch_size"] for b in served["batch_stats"]}
        assert sizes and sizes <= {1, 2, 3, 4, 5, 6, 9}
        assert (
            sum(b["compute_infer"]["count"] for b in served["batch_stats"])
            == (served["execution_count"])
        )
        one = c.get_inference_statistics("m", "2", headers=auth)["model_stats"]
        assert [(s["name"], s["version"]) for s in one] == [("m", "2")]
        assert one[0]["inference_stats"]["success"]["count"] == 4
        everything = c.get_inference_statistics(headers=auth)
        assert by_version(everything, "m")["2"]["inference_count"] == 9
    finally:
        c.close()


def test_every_protocol_counts(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, linear_onnx(tmp_path / "m.onnx"), "m")
    assert http.post("/v2/models/m/infer", json=v2(2)).status_code == 200
    r = http.post("/v1/models/m:predict", json={"instances": X[:3].tolist()})
    assert r.status_code == 200, r.text
    s = http.get("/v2/models/m/versions/1/stats").json()["model_stats"][0]
    assert s["inference_stats"]["success"]["count"] == 2
    assert s["inference_count"] == 5


def test_versions_sharing_a_file_keep_their_own_counts(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    same = linear_onnx(tmp_path / "m.onnx")
    push(client, same, "a")
    push(client, same, "b")  # same digest: one runtime, one batcher
    for _ in range(3):
        assert http.post("/v2/models/a/infer", json=v2()).status_code == 200
    assert http.post("/v2/models/b/infer", json=v2()).status_code == 200
    stats = http.get("/v2/models/stats").json()
    assert by_version(stats, "a")["1"]["inference_stats"]["success"]["count"] == 3
    assert by_version(stats, "b")["1"]["inference_stats"]["success"]["count"] == 1


def test_selector_and_unknown_model(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, linear_onnx(tmp_path / "m.onnx"), "m")
    r = http.get("/v2/models/m:1/stats")
    assert r.status_code == 200
    assert [s["version"] for s in r.json()["model_stats"]] == ["1"]
    for path in ("/v2/models/nope/stats", "/v2/models/m/versions/7/stats"):
        r = http.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, r.text
        metadata = http.get(path.removesuffix("/stats"))
        assert r.json() == metadata.json()  # worded as the metadata route words it


def test_a_key_sees_only_its_models(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, linear_onnx(tmp_path / "m.onnx"), "m1")
    push(client, linear_onnx(tmp_path / "n.onnx", seed=2), "m2")
    client.create_project("other")
    limited = http.post("/api/v1/keys", json={"role": "developer", "models": ["m1"]}).json()
    outsider = http.post("/api/v1/keys", json={"role": "developer", "project": "other"}).json()
    viewer = http.post("/api/v1/keys", json={"role": "viewer"}).json()
    as_limited = {"Authorization": f"Bearer {limited['key']}"}
    names = {
        s["name"] for s in http.get("/v2/models/stats", headers=as_limited).json()["model_stats"]
    }
    assert names == {"m1"}
    assert http.get("/v2/models/m2/stats", headers=as_limited).status_code == 404
    as_outsider = {"Authorization": f"Bearer {outsider['key']}"}
    assert http.get("/v2/models/stats", headers=as_outsider).json() == {"model_stats": []}
    assert http.get("/v2/models/m1/stats", headers=as_outsider).status_code == 404
    as_viewer = {"Authorization": f"Bearer {viewer['key']}"}
    for path in ("/v2/models/m1", "/v2/models/m1/stats", "/v2/models/stats"):
        assert http.get(path, headers=as_viewer).status_code == 403  # no 'infer' grant
    assert http.get("/v2/models/stats", headers={"Authorization": "Bearer nope"}).status_code == 401
