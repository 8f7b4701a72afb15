"""The dynamic batcher: correct fan-out, real batching under concurrency, back-pressure."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.errors import DeadlineExceeded, ModelworksError, ServiceUnavailable
from modelworks.runtimes.onnx import OnnxModel
from modelworks.serving.batcher import Batcher, BatchSettings
from tests.models import linear_onnx, linear_reference

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}


@pytest.fixture
def model(tmp_path: Path) -> OnnxModel:
    return OnnxModel(linear_onnx(tmp_path / "m.onnx"), SIGNATURE, threads=1)


class Gated:
    """The real model behind a gate, so a test can hold a batch in flight."""

    def __init__(self, inner: OnnxModel) -> None:
        self.inner = inner
        self.signature = inner.signature
        self.gate = threading.Event()
        self.calls: list[int] = []

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any = None,
    ) -> Any:
        self.gate.wait(10)
        self.calls.append(int(feeds["x"].shape[0]))
        return self.inner.predict(feeds, outputs, run_options)


def test_concurrent_requests_are_batched_and_fanned_out(model: OnnxModel) -> None:
    gated = Gated(model)
    batcher = Batcher(gated, BatchSettings(max_batch_size=64, max_delay_ms=0), name="m")
    xs = [np.full((1 + i % 3, 4), i, dtype=np.float32) for i in range(40)]

    async def main() -> list[dict[str, np.ndarray]]:
        tasks = [asyncio.create_task(batcher.submit({"x": x})) for x in xs]
        await asyncio.sleep(0.05)  # all queued behind the first, gated, run
        gated.gate.set()
        results = await asyncio.gather(*tasks)
        await batcher.close()
        return results

    results = asyncio.run(main())
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_allclose(r.outputs["y"], linear_reference(x), rtol=1e-5)
    assert len(gated.calls) < len(xs), "requests should share runs"
    assert max(gated.calls) > 3
    assert sum(gated.calls) == sum(x.shape[0] for x in xs)


def test_max_batch_size_is_respected(model: OnnxModel) -> None:
    gated = Gated(model)
    batcher = Batcher(gated, BatchSettings(max_batch_size=4, max_delay_ms=0), name="m")

    async def main() -> None:
        tasks = [
            asyncio.create_task(batcher.submit({"x": np.ones((1, 4), np.float32)}))
            for _ in range(12)
        ]
        await asyncio.sleep(0.05)
        gated.gate.set()
        await asyncio.gather(*tasks)
        await batcher.close()

    asyncio.run(main())
    assert max(gated.calls) <= 4


def test_full_queue_answers_503_with_retry_after(model: OnnxModel) -> None:
    gated = Gated(model)
    batcher = Batcher(gated, BatchSettings(max_queue=2, max_delay_ms=0), name="m")

    async def main() -> None:
        x = {"x": np.ones((1, 4), np.float32)}
        first = asyncio.create_task(batcher.submit(x))
        await asyncio.sleep(0.05)  # the worker holds the first item
        queued = [asyncio.create_task(batcher.submit(x)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ServiceUnavailable) as exc:
            await batcher.submit(x)
        assert exc.value.details["retry_after"] == 1
        gated.gate.set()
        await asyncio.gather(first, *queued)
        await batcher.close()

    asyncio.run(main())


def test_request_past_its_deadline_is_dropped(model: OnnxModel) -> None:
    gated = Gated(model)
    batcher = Batcher(gated, BatchSettings(max_delay_ms=0), name="m")

    async def main() -> None:
        x = {"x": np.ones((1, 4), np.float32)}
        first = asyncio.create_task(batcher.submit(x))
        await asyncio.sleep(0.05)
        late = asyncio.create_task(batcher.submit(x, timeout_s=0.01))
        await asyncio.sleep(0.1)
        gated.gate.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late
        await batcher.close()

    asyncio.run(main())
    assert gated.calls == [1], "the expired request never ran"


def test_a_variable_batch_dim_makes_a_model_batchable(tmp_path: Path) -> None:
    # the signature read at upload marks dim 0 as -1, so requests can be stacked
    from modelworks.registry.formats import inspect_onnx

    path = linear_onnx(tmp_path / "m.onnx")
    m = OnnxModel(path, inspect_onnx(path), threads=1)
    b = Batcher(m, BatchSettings(), name="m")
    assert b.batchable


def test_503_reaches_the_client(http: httpx.Client, services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from modelworks.errors import ServiceUnavailable as SU

    files = {"file": ("m.onnx", linear_onnx(tmp_path / "m.onnx").read_bytes())}
    http.post("/api/v1/models", json={"name": "m"})
    assert http.post("/api/v1/models/m/versions", files=files).status_code == 201

    async def full(*_a: Any, **_k: Any) -> Any:
        raise SU("model 'm:1' is at capacity; retry shortly", details={"retry_after": 1})

    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert http.post("/v2/models/m/infer", json=body).status_code == 200
    (entry,) = services.pool.entries()
    entry.batcher.submit = full
    r = http.post("/v2/models/m/infer", json=body)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "capacity" in r.json()["error"]


class Holding(Gated):
    """Gated, and keeps the stop switch each run was given."""

    def __init__(self, inner: OnnxModel) -> None:
        super().__init__(inner)
        self.options: list[Any] = []

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any = None,
    ) -> Any:
        self.options.append(run_options)
        return super().predict(feeds, outputs, run_options)


def test_a_run_every_client_left_is_stopped_at_once(model: OnnxModel) -> None:
    held = Holding(model)
    batcher = Batcher(held, BatchSettings(timeout_s=30), name="m")

    async def main() -> bool:
        x = {"x": np.ones((1, 4), np.float32)}
        tasks = [asyncio.create_task(batcher.submit(x)) for _ in range(2)]
        while not held.options:  # the run is in the worker thread
            await asyncio.sleep(0.001)
        tasks[0].cancel()
        await asyncio.sleep(0.01)
        alone = held.options[0].terminate  # one client still waits: the run goes on
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopped = held.options[0].terminate
        held.gate.set()
        after = await batcher.submit(x)  # the next run gets a switch of its own
        await batcher.close()
        assert after.outputs["y"].shape == (1, 2)
        return not alone and stopped

    assert asyncio.run(main()), "stopped only once both clients left, long before the deadline"
    assert not held.options[-1].terminate


def test_no_thread_for_a_run_is_503_and_the_batcher_goes_on(
    model: OnnxModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = Batcher(model, BatchSettings(), name="m")
    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def main() -> dict[str, np.ndarray]:
        x = {"x": np.ones((1, 4), np.float32)}
        monkeypatch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(ServiceUnavailable) as exc:
            await batcher.submit(x)
        assert exc.value.details["retry_after"] == 1 and "thread" in exc.value.message
        monkeypatch.setattr(threading.Thread, "start", start)
        return await asyncio.wait_for(batcher.submit(x), 5)

    result = asyncio.run(main())
    expected = linear_reference(np.ones((1, 4), np.float32))
    np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-5)


class TwoOutputs:
    """A stand-in runtime with a wide and a narrow output per row."""

    def __init__(self) -> None:
        self.signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any = None,
    ) -> dict[str, np.ndarray]:
        x = feeds["x"]
        return {"wide": np.repeat(x, 1024, axis=1), "narrow": x[:, :1].copy()}


def test_the_answer_budget_counts_only_the_outputs_asked_for() -> None:
    batcher = Batcher(TwoOutputs(), BatchSettings(max_result_bytes=4096), name="m")  # type: ignore[arg-type]
    x = {"x": np.ones((2, 4), np.float32)}

    async def main() -> tuple[dict[str, np.ndarray], BaseException | None]:
        narrow = (await batcher.submit(x, wanted=["narrow"])).outputs
        try:
            await batcher.submit(x)
        except ModelworksError as exc:
            return narrow, exc
        return narrow, None

    narrow, refused = asyncio.run(main())
    assert narrow["narrow"].shape == (2, 1)
    assert refused is not None and refused.status == 413


class GatedIndex:
    """A `Gather` of three values behind a gate: an index out of range fails its run."""

    def __init__(self, tmp_path: Path) -> None:
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Gather", ["data", "i"], ["y"], axis=0)],
            "gather",
            [helper.make_tensor_value_info("i", TensorProto.INT64, [-1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1])],
            initializer=[helper.make_tensor("data", TensorProto.FLOAT, [3], [10, 20, 30])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path = tmp_path / "gather.onnx"
        onnx.save_model(model, str(path))
        signature = {"inputs": [{"name": "i", "datatype": "INT64", "shape": [-1]}]}
        self.inner = OnnxModel(path, signature)
        self.signature = signature
        self.gate = threading.Event()
        self.runs: list[int] = []

    def predict(
        self, feeds: dict[str, np.ndarray], outputs: Any = None, run_options: Any = None
    ) -> Any:
        self.gate.wait(10)
        self.runs.append(int(feeds["i"].shape[0]))
        return self.inner.predict(feeds, outputs, run_options)


def test_a_bad_request_fails_alone_not_the_batch_it_shared(tmp_path: Path) -> None:
    """Requests batched with one whose values the model rejects still get their answers:
    the batch is run again one request at a time, and only the bad one fails."""
    model = GatedIndex(tmp_path)
    batcher = Batcher(model, BatchSettings(max_batch_size=64), name="m")  # type: ignore[arg-type]

    async def main() -> list[Any]:
        first = asyncio.create_task(batcher.submit({"i": np.array([0])}))
        await asyncio.sleep(0.05)  # the first run holds the gate; the next three queue
        rest = [
            asyncio.create_task(batcher.submit({"i": np.array(idx)})) for idx in ([1], [7], [2, 0])
        ]
        await asyncio.sleep(0.05)
        model.gate.set()
        done = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.close()
        return done

    first, good, bad, also_good = asyncio.run(main())
    assert model.runs[:2] == [1, 4], "the three queued requests shared one run"
    assert first.outputs["y"].tolist() == [10.0]
    assert good.outputs["y"].tolist() == [20.0]
    assert also_good.outputs["y"].tolist() == [30.0, 10.0]
    assert isinstance(bad, Exception) and "idx=7" in str(bad)
