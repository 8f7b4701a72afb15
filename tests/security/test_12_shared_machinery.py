"""SECURITY.md class 12: shared machinery across tenants.

Two projects that upload the same bytes share the loaded session and nothing else: each has
its own queue, capacity, deadlines and error texts, and the memory budget counts the session
once. The memory budget is shared fairly: one tenant loading many models evicts its own. No
model runs on the event loop: a slow run leaves /livez answering, a running request past its
deadline answers 504 and the run is stopped, and requests queued behind a stuck run answer 504
at their own deadlines.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelworks.api.services import Services
from modelworks.client import Client
from modelworks.db import upgrade
from modelworks.errors import DeadlineExceeded
from modelworks.serving import pool as pool_module
from modelworks.serving.batcher import Answer, Batcher, BatchSettings
from modelworks.serving.pool import Entry
from modelworks.settings import Settings
from tests.conftest import LiveServer
from tests.models import linear_onnx

WIDTH = 64
SLOW = 3_000_000  # Loop iterations: seconds of work, unless the run is stopped
ALPHA, BRAVO = "tenant-alpha-12", "tenant-bravo-12"
A_MODEL, B_MODEL = "alpha-model", "bravo-model"
THREADS = 40  # anyio's default worker threads: synchronous routes, database lookups, loads


def slow_onnx(path: Path) -> Path:
    """y = x, passed `max(n)` times through tanh(y @ I) in a Loop: the caller picks the
    run's length with `n`, and ONNX Runtime can stop it between iterations."""
    eye = numpy_helper.from_array(np.eye(WIDTH, dtype=np.float32), "W")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["y_in", "W"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["y_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_in", TensorProto.FLOAT, ["batch", WIDTH]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_out", TensorProto.FLOAT, ["batch", WIDTH]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["n"], ["m"], keepdims=0),
            helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.array(True))),
            helper.make_node("Loop", ["m", "t", "x"], ["y"], body=body),
        ],
        "slow",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[eye],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def infer_body(n: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [0.5] * WIDTH},
            {"name": "n", "shape": [1], "datatype": "INT64", "data": [n]},
        ]
    }


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings; a test changes some with `@pytest.mark.parametrize("settings",
    [{...}], indirect=True)`."""
    s = Settings(
        home=tmp_path / "home",
        max_upload_bytes=1024 * 1024,
        allowed_hosts="testserver,127.0.0.1,localhost",
        **getattr(request, "param", {}),
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    return s


def project_with_model(http: httpx.Client, project: str, model: str, onnx_file: Path) -> str:
    """A project holding `model` (version 1 from `onnx_file`) and its owner's key."""
    assert http.post("/api/v1/projects", json={"name": project}).status_code == 201
    q = {"project": project}
    assert http.post("/api/v1/models", params=q, json={"name": model}).status_code == 201
    upload = {"file": ("m.onnx", onnx_file.read_bytes())}
    r = http.post(f"/api/v1/models/{model}/versions", params=q, files=upload)
    assert r.status_code == 201, r.text
    key = http.post("/api/v1/keys", json={"project": project, "role": "owner", "name": "o"})
    assert key.status_code == 201, key.text
    return str(key.json()["key"])


class Watched:
    """Wraps a loaded runtime's predict: `started` is set when a slow run begins, `finished`
    when it ends (stopped or not)."""

    def __init__(self, entry: Entry, monkeypatch: pytest.MonkeyPatch) -> None:
        assert entry.model is not None
        self.started = threading.Event()
        self.finished = threading.Event()
        predict = entry.model.predict

        def watched(feeds: Any, *args: Any, **kwargs: Any) -> Any:
            slow = int(feeds["n"].max()) > 1
            if slow:
                self.started.set()
            try:
                return predict(feeds, *args, **kwargs)
            finally:
                if slow:
                    self.finished.set()

        monkeypatch.setattr(entry.model, "predict", watched)


def entry_of(services: Services, model: str) -> Entry:
    (entry,) = [e for e in services.pool.entries() if e.target.model == model]
    return entry


def in_background(call: Any, results: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    return thread


def wait_until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError("the server never reached the expected state")


def queued(services: Services) -> int:
    return sum(e.batcher.depth for e in services.pool.entries() if e.batcher is not None)


# one session, two tenants -----------------------------------------------------------------------
@pytest.mark.parametrize("settings", [{"queue_size": 1, "request_timeout_s": 1.0}], indirect=True)
def test_identical_bytes_share_no_queue_and_no_names(
    http: httpx.Client,
    anon: httpx.Client,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = slow_onnx(tmp_path / "m.onnx")
    keys = {
        m: project_with_model(http, p, m, path) for p, m in ((ALPHA, A_MODEL), (BRAVO, B_MODEL))
    }

    def infer(model: str, n: int) -> httpx.Response:
        auth = {"Authorization": f"Bearer {keys[model]}"}
        return anon.post(f"/v2/models/{model}/infer", json=infer_body(n), headers=auth)

    assert infer(A_MODEL, 1).status_code == 200  # A loads the session
    assert infer(B_MODEL, 1).status_code == 200  # B's copy of the same bytes
    watched = Watched(entry_of(services, A_MODEL), monkeypatch)
    b_results: list[httpx.Response] = []
    running = in_background(lambda: infer(B_MODEL, SLOW), b_results)
    wait_until(watched.started.is_set)
    waiting = in_background(lambda: infer(B_MODEL, SLOW), b_results)
    wait_until(lambda: queued(services) == 1)

    full = infer(B_MODEL, 1)  # B's queue of one is full
    assert full.status_code == 503 and full.headers["retry-after"] == "1", full.text
    assert f"{B_MODEL}:1" in full.text and A_MODEL not in full.text, full.text
    mine = infer(A_MODEL, 1)  # A has a queue of its own
    assert mine.status_code == 200, mine.text
    assert not watched.finished.is_set(), "A was served while B's run still held B's queue"

    running.join(10)
    waiting.join(10)
    assert [r.status_code for r in b_results] == [504, 504], [r.text for r in b_results]
    for r in b_results:
        assert f"{B_MODEL}:1" in r.text and A_MODEL not in r.text, r.text
    a, b = entry_of(services, A_MODEL), entry_of(services, B_MODEL)
    assert a.model is b.model and a.batcher is not b.batcher
    assert infer(A_MODEL, 1).status_code == infer(B_MODEL, 1).status_code == 200


@pytest.mark.parametrize("settings", [{"memory_budget_mb": 40}], indirect=True)
def test_a_shared_session_counts_once_against_the_budget(
    http: httpx.Client, anon: httpx.Client, services: Services, tmp_path: Path
) -> None:
    path = linear_onnx(tmp_path / "m.onnx")  # ~32 MiB each by the pool's estimate
    for project, model in ((ALPHA, A_MODEL), (BRAVO, B_MODEL)):
        key = project_with_model(http, project, model, path)
        auth = {"Authorization": f"Bearer {key}"}
        row = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
        assert anon.post(f"/v2/models/{model}/infer", json=row, headers=auth).status_code == 200
    a, b = entry_of(services, A_MODEL), entry_of(services, B_MODEL)
    assert a.model is not None and a.model is b.model, "both stay loaded, on one session"


# a fair memory budget ---------------------------------------------------------------------------
@pytest.mark.parametrize("settings", [{"memory_budget_mb": 100}], indirect=True)
def test_one_tenant_loading_many_models_evicts_its_own(
    http: httpx.Client, anon: httpx.Client, services: Services, tmp_path: Path
) -> None:
    row = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    a_key = project_with_model(http, ALPHA, A_MODEL, linear_onnx(tmp_path / "m.onnx"))
    a_auth = {"Authorization": f"Bearer {a_key}"}
    assert anon.post(f"/v2/models/{A_MODEL}/infer", json=row, headers=a_auth).status_code == 200
    b_key = project_with_model(http, BRAVO, "b0", linear_onnx(tmp_path / "m.onnx", seed=1))
    b_auth = {"Authorization": f"Bearer {b_key}"}
    q = {"project": BRAVO}
    for i in range(6):  # three models of ~32 MiB fit the budget: B goes past it
        name = f"b{i}"
        if i:
            assert http.post("/api/v1/models", params=q, json={"name": name}).status_code == 201
            upload = {"file": ("m.onnx", linear_onnx(tmp_path / "m.onnx", seed=i + 1).read_bytes())}
            r = http.post(f"/api/v1/models/{name}/versions", params=q, files=upload)
            assert r.status_code == 201, r.text
        r = anon.post(f"/v2/models/{name}/infer", json=row, headers=b_auth)
        assert r.status_code == 200, r.text

    loaded = sorted(e.target.model for e in services.pool.entries() if e.model is not None)
    assert loaded == [A_MODEL, "b4", "b5"], loaded


def test_one_tenant_loading_cold_models_takes_no_thread_another_needs(
    http: httpx.Client,
    anon: httpx.Client,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_key = project_with_model(http, ALPHA, A_MODEL, linear_onnx(tmp_path / "m.onnx"))
    b_key = project_with_model(http, BRAVO, B_MODEL, linear_onnx(tmp_path / "m.onnx", seed=1))
    release, loading = threading.Event(), threading.Event()
    artifact_for = pool_module.artifact_for

    def held(target: Any, *args: Any, **kwargs: Any) -> Any:
        if target.model == B_MODEL:  # B's model takes long to load
            loading.set()
            release.wait(60)
        return artifact_for(target, *args, **kwargs)

    monkeypatch.setattr(pool_module, "artifact_for", held)
    entered: list[str] = []
    engine_load = services.serving.load

    async def counted(target: Any) -> Any:
        entered.append(target.model)
        return await engine_load(target)

    monkeypatch.setattr(services.serving, "load", counted)
    row = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}

    def infer(key: str, model: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}"}
        return anon.post(f"/v2/models/{model}/infer", json=row, headers=auth)

    b_results: list[httpx.Response] = []
    a_results: list[httpx.Response] = []
    flood: list[threading.Thread] = []
    try:
        for _ in range(THREADS + 10):
            flood.append(in_background(lambda: infer(b_key, B_MODEL), b_results))
        wait_until(lambda: loading.is_set() and len(entered) == len(flood))
        # A's cold model loads while B's wait: B's requests hold none of the shared threads
        in_background(lambda: infer(a_key, A_MODEL), a_results).join(10)
        served_while_b_loads = [r.status_code for r in a_results]
    finally:
        release.set()
        for thread in flood:
            thread.join(10)
    assert served_while_b_loads == [200]
    assert [r.status_code for r in b_results] == [200] * len(flood)


# nothing unbounded on the event loop ------------------------------------------------------------
@pytest.mark.parametrize("settings", [{"request_timeout_s": 0.5}], indirect=True)
def test_livez_answers_while_a_slow_model_runs_after_fast_calls(
    live_server: LiveServer,
    client: Client,
    admin_key: str,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client.create_model("slow")
    client.push("slow", slow_onnx(tmp_path / "m.onnx"))
    auth = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=live_server.url, headers=auth) as h:
        for _ in range(60):  # fast calls: a batcher that ran short models on the loop would now
            assert h.post("/v2/models/slow/infer", json=infer_body(1)).status_code == 200
        watched = Watched(entry_of(services, "slow"), monkeypatch)
        results: list[httpx.Response] = []
        slow = in_background(
            lambda: h.post("/v2/models/slow/infer", json=infer_body(SLOW)), results
        )
        wait_until(watched.started.is_set)
        assert h.get("/livez").status_code == 200
        assert not watched.finished.is_set(), "/livez waited for the model's run"
        slow.join(10)
    assert [r.status_code for r in results] == [504]


@pytest.mark.parametrize("settings", [{"request_timeout_s": 0.5}], indirect=True)
def test_running_request_past_its_deadline_is_504_and_its_run_is_stopped(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    client.create_model("slow")
    client.push("slow", slow_onnx(tmp_path / "m.onnx"))
    assert http.post("/v2/models/slow/infer", json=infer_body(1)).status_code == 200

    late = http.post("/v2/models/slow/infer", json=infer_body(SLOW))

    assert late.status_code == 504, late.text
    message = late.json()["error"]
    assert "slow:1" in message and "deadline" in message and "0.5 s" in message, message
    # the run was stopped: the model's thread is free well within the next request's deadline
    assert http.post("/v2/models/slow/infer", json=infer_body(1)).status_code == 200
    assert http.get("/livez").status_code == 200


class Stuck:
    """A model whose run ignores every stop switch until the test opens its gate."""

    def __init__(self) -> None:
        self.signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]}
        self.gate = threading.Event()
        self.calls: list[float] = []

    def predict(
        self, feeds: dict[str, np.ndarray], outputs: Any = None, run_options: Any = None
    ) -> dict[str, np.ndarray]:
        self.calls.append(float(feeds["x"][0, 0]))
        self.gate.wait(10)
        return {"y": feeds["x"]}


def test_requests_behind_a_stuck_run_answer_504_at_their_own_deadlines() -> None:
    model = Stuck()
    batcher = Batcher(model, BatchSettings(max_batch_size=1, timeout_s=0.2), name="stuck:1")

    async def main() -> list[BaseException | dict[str, np.ndarray]]:
        running = asyncio.create_task(batcher.submit({"x": np.full((1, 1), 1, np.float32)}))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(batcher.submit({"x": np.full((1, 1), 2, np.float32)}))
        done = await asyncio.wait_for(asyncio.gather(running, waiting, return_exceptions=True), 5)
        still_stuck = not model.gate.is_set()
        model.gate.set()
        after = await batcher.submit({"x": np.full((1, 1), 3, np.float32)}, timeout_s=5)
        await batcher.close()
        assert still_stuck, "both answered while the run was still stuck"
        return [*done, after]

    first, second, after = asyncio.run(main())
    assert isinstance(first, DeadlineExceeded) and "still running" in first.message
    assert isinstance(second, DeadlineExceeded) and "did not start" in second.message
    assert isinstance(after, Answer) and after.outputs["y"].tolist() == [[3.0]]
    assert model.calls == [1.0, 3.0], "the expired request never ran; the next one waited"
