"""Resident memory across model evictions: does an unloaded model give its memory back?

    .venv/bin/python benchmarks/evictions_rss.py [--cycles 20] [--weights-mb 64]

Serves two models whose weights take --weights-mb each, with a memory budget that fits one
and the heap settled after each load, as `modelworks serve` runs. Each cycle loads the model
not loaded, which evicts the other, while a request on the other is in flight; that request
then fails (a bad index), as one sometimes does under real traffic. Prints the process's
resident set size (RSS) before the cycles (both models loaded once), after them, its peak,
and after / before. Target: a ratio near 1.0; each model kept alive past its eviction would
add about --weights-mb per cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.auth.keys import Principal
from modelworks.client import AsyncClient
from modelworks.db import upgrade
from modelworks.serving.pool import settle_heap
from modelworks.serving.target import Target
from modelworks.settings import Settings

MIB = 1024 * 1024


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS now, VmHWM the peak), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gather_onnx(path: Path, weights_mb: int, seed: int) -> Path:
    """y = D[i] over `weights_mb` MiB of float weights: an index past D fails at run time."""
    data = np.random.default_rng(seed).random(weights_mb * MIB // 4, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["D", "i"], ["y"])],
        "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        initializer=[numpy_helper.from_array(data, "D")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


async def serve(home: Path, weights_mb: int) -> tuple[Services, list[Target]]:
    # the pool counts a model as 1.5 x its size + 32 MiB: the budget fits one model, not two
    budget_mb = int(weights_mb * 1.5 + 32) + weights_mb // 2
    settings = Settings(home=home, auth=False, allowed_hosts="*", memory_budget_mb=budget_mb)
    upgrade(settings.resolved_database_url)
    services = Services.build(settings)
    transport = httpx.ASGITransport(app=create_app(settings, services))
    async with AsyncClient("http://bench", transport=transport) as client:
        for seed, name in enumerate(("left", "right")):
            await client.create_model(name)
            path = gather_onnx(home / f"{name}.onnx", weights_mb, seed)
            await client.push(name, path)
            path.unlink()
    admin = Principal(key_id=None, prefix="", project_id=services.default_project_id, role="admin")
    targets = [services.serving.resolve(admin, name) for name in ("left", "right")]
    services.pool.settle_heap = True  # as modelworks/cli.py `_start` does
    settle_heap()
    return services, targets


async def cycle(services: Services, evicted: Target, loaded: Target) -> None:
    engine = services.serving
    await engine.predict(evicted, {"i": np.array([0], np.int64)})
    failing = asyncio.create_task(engine.predict(evicted, {"i": np.array([-(2**40)], np.int64)}))
    await asyncio.sleep(0.01)  # it waits on its batch
    services.pool.get(loaded)  # on the loop: the request is still in flight when it evicts
    try:
        await failing
    except Exception:
        return  # the failure is the point
    raise RuntimeError("a request with an index past the weights was answered")


async def run(home: Path, weights_mb: int, cycles: int) -> tuple[float, float]:
    services, targets = await serve(home, weights_mb)
    try:
        for i in range(2):  # both models loaded once: their code paths and arenas are warm
            await cycle(services, targets[i], targets[1 - i])
        gc.collect()
        before = status_mb("VmRSS")
        for i in range(cycles):
            await cycle(services, targets[i % 2], targets[1 - i % 2])
        gc.collect()
        return before, status_mb("VmRSS")
    finally:
        services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--weights-mb", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before, after = asyncio.run(run(Path(tmp), args.weights_mb, args.cycles))
    print(f"{args.cycles} evictions of a model with {args.weights_mb} MiB of weights")
    print(f"RSS before: {before:.0f} MiB")
    print(f"RSS after:  {after:.0f} MiB")
    print(f"RSS peak:   {status_mb('VmHWM'):.0f} MiB")
    print(f"after / before: {after / before:.2f}")


if __name__ == "__main__":
    main()
