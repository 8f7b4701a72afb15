"""The memory budget holds: the least recently used model goes first, and a model unloaded
(past the budget, or deleted) is garbage, its session and batcher with it, under the settings
`modelworks serve` runs with (the heap frozen after each load)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelworks.api.services import Services
from modelworks.auth.keys import Principal
from modelworks.client import Client
from modelworks.db import upgrade
from modelworks.errors import ModelworksError
from modelworks.serving.pool import settle_heap
from modelworks.serving.target import Target
from modelworks.settings import Settings
from tests.models import linear_onnx

ROW = {"x": [[1, 2, 3, 4]]}
MIB = 1024 * 1024
ONE_MODEL_MB = 40  # the pool counts each small test model as ~32 MiB
TWO_MODELS_MB = 70


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    s = Settings(
        home=tmp_path / "home",
        allowed_hosts="testserver",
        memory_budget_mb=getattr(request, "param", ONE_MODEL_MB),
    )
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def served(services: Services) -> Iterator[Services]:
    """The services as `modelworks serve` sets them up (modelworks/cli.py `_start`): the heap
    frozen once before serving, and again after each load."""
    services.pool.settle_heap = True
    settle_heap()
    yield services
    gc.unfreeze()  # later tests collect as usual


def gather_onnx(path: Path, seed: int = 0) -> Path:
    """y = D[i]: an index past D's 4 elements fails in the runtime, once the request runs."""
    data = numpy_helper.from_array(np.arange(4, dtype=np.float32) + seed, "D")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["D", "i"], ["y"])],
        "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        initializer=[data],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def targets(client: Client, services: Services, tmp_path: Path, *names: str) -> list[Target]:
    for seed, name in enumerate(names):
        client.create_model(name)
        client.push(name, gather_onnx(tmp_path / f"{name}.onnx", seed=seed))
    admin = Principal(key_id=None, prefix="", project_id=services.default_project_id, role="admin")
    return [services.serving.resolve(admin, name) for name in names]


def index(i: int) -> dict[str, np.ndarray]:
    return {"i": np.array([i], np.int64)}


def loaded(services: Services) -> list[str]:
    return sorted(e.target.model for e in services.pool.entries() if e.model is not None)


@pytest.mark.parametrize("settings", [TWO_MODELS_MB], indirect=True)
def test_the_least_recently_used_model_goes_first(client: Client, services: Services) -> None:
    assert services.pool.budget == TWO_MODELS_MB * MIB
    for seed, name in enumerate("abc"):
        client.create_model(name)
        client.push(name, linear_onnx(services.settings.home / f"{name}.onnx", seed=seed))
    client.infer("a", ROW)
    client.infer("b", ROW)
    assert loaded(services) == ["a", "b"], "two models fit the budget"
    client.infer("a", ROW)  # `a` is now used more recently than `b`

    client.infer("c", ROW)

    assert loaded(services) == ["a", "c"], "the least recently used, b, was unloaded"


@pytest.mark.parametrize("settings", [TWO_MODELS_MB], indirect=True)
def test_a_model_unloaded_under_a_failing_request_is_garbage(
    client: Client, served: Services, tmp_path: Path
) -> None:
    """A request on `a` is in flight while `b` loads (the heap is frozen with it) and `c`
    loads and unloads `a`; the request fails afterwards, and its traceback's cycle holds the
    frames that hold `a`."""
    a, b, c = targets(client, served, tmp_path, "a", "b", "c")
    engine, pool = served.serving, served.pool

    async def scenario() -> weakref.ref[Any]:
        assert (await engine.predict(a, index(1))).outputs["y"].tolist() == [1.0]
        session = weakref.ref(pool.loaded(a).session)  # type: ignore[union-attr]
        failing = asyncio.create_task(engine.predict(a, index(99)))
        await asyncio.sleep(0.05)  # it waits on its batch
        # loads on the loop, so `a`'s request is still waiting when the heap freezes
        pool.get(b)
        assert loaded(served) == ["a", "b"]
        pool.get(c)
        assert loaded(served) == ["b", "c"]
        with pytest.raises(ModelworksError):
            await failing
        return session

    session = asyncio.run(scenario())
    gc.collect()
    assert session() is None, "the unloaded model's session is still alive"
    assert pool.status(a) == ("unloaded", "")


def test_a_request_that_reaches_the_pool_after_the_unload_keeps_nothing(
    client: Client, served: Services, tmp_path: Path
) -> None:
    """What `Engine.predict` does, with `b` loading in another request between its two
    steps: get `a`'s model, then its batcher."""
    a, b = targets(client, served, tmp_path, "a", "b")
    pool = served.pool
    model = pool.get(a)
    pool.get(b)  # unloads `a`
    batcher = pool.batcher(a, model)
    answer = asyncio.run(batcher.submit(index(2)))
    assert answer.outputs["y"].tolist() == [2.0], "the request is still served"
    session = weakref.ref(model.session)  # type: ignore[attr-defined]
    kept = weakref.ref(batcher)
    del model, batcher, answer

    gc.collect()

    assert session() is None and kept() is None, "the pool kept `a` after unloading it"
    assert pool.status(a) == ("unloaded", "")
    assert loaded(served) == ["b"]


@pytest.mark.parametrize("settings", [0], indirect=True)
def test_a_deleted_model_frees_its_session_and_batcher(
    client: Client, served: Services, tmp_path: Path
) -> None:
    gone, kept = targets(client, served, tmp_path, "gone", "kept")
    engine, pool = served.serving, served.pool

    async def scenario() -> tuple[weakref.ref[Any], weakref.ref[Any]]:
        await engine.predict(gone, index(0))
        (entry,) = pool.entries()
        refs = weakref.ref(entry.model.session), weakref.ref(entry.batcher)  # type: ignore[union-attr]
        del entry
        failing = asyncio.create_task(engine.predict(gone, index(99)))
        await asyncio.sleep(0.05)
        pool.get(kept)  # freezes the heap with a request on `gone` in flight
        client.delete_model("gone")
        with pytest.raises(ModelworksError):
            await failing
        return refs

    session, batcher = asyncio.run(scenario())
    gc.collect()
    assert session() is None, "the deleted model's session is still alive"
    assert batcher() is None, "the deleted model's batcher is still alive"
    assert loaded(served) == ["kept"]
    # its thread ends now, not after idling WORKER_IDLE_S (30 s)
    for thread in [t for t in threading.enumerate() if t.name == "batcher:gone:1"]:
        thread.join(10)
        assert not thread.is_alive(), "the deleted model's batcher thread still waits for work"
