"""SECURITY.md class 11, past ONNX Runtime's arena: what a run takes that the arena does not hold.

The capped arena (test_21) holds tensors, but the characters of a string tensor are ordinary heap
memory, and kernels such as `Unique` keep working memory of their own. Two small models showed
it: a 96-byte `Tile` of one string input, and `Range -> Cast -> Unique`, each answering 200 while
the process grew hundreds of megabytes past the cap. `modelworks serve` bounds the process's data
memory with the kernel (RLIMIT_DATA, `modelworks.memory`): such a run answers 413 naming
`MODELWORKS_PROCESS_MEMORY_MB`, the server goes on answering, and the memory comes back.

Real `modelworks serve` processes, as a user starts them: one with the derived ceiling (the
default), one with a ceiling set by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from modelworks import memory
from modelworks.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.socket
MIB = 1024 * 1024
SETTING = "MODELWORKS_PROCESS_MEMORY_MB"


class Server:
    def __init__(self, home: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "MODELWORKS_HOME": str(home), **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelworks", "serve", "--no-auth", "--port", str(self.port)],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def data_limit(self) -> int:
        """The server's soft data limit, read from the kernel (0: unlimited)."""
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max data size"):
                soft = line.split()[3]
                return 0 if soft == "unlimited" else int(soft)
        raise AssertionError("no data limit line in /proc/PID/limits")

    def resident(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def push(self, name: str, path: Path) -> None:
        made = self.http.post("/api/v1/models", json={"name": name})
        assert made.status_code == 201, made.text
        with path.open("rb") as f:
            r = self.http.post(f"/api/v1/models/{name}/versions", files={"file": (path.name, f)})
        assert r.status_code == 201, r.text

    def infer(self, name: str, inputs: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post(f"/v2/models/{name}/infer", json={"inputs": inputs})

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.communicate(timeout=20)


def save(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], **kw: Any) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, **kw)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def tile_onnx(path: Path) -> Path:
    """y = the shape of the string `s` repeated `r` times: a few bytes in, gigabytes of text."""
    return save(
        path,
        [helper.make_node("Tile", ["s", "r"], ["t"]), helper.make_node("Shape", ["t"], ["y"])],
        [
            helper.make_tensor_value_info("s", TensorProto.STRING, [1]),
            helper.make_tensor_value_info("r", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1])],
    )


def unique_onnx(path: Path) -> Path:
    """y = how many distinct values 0..n-1 has: Unique's hash table is not in the arena."""
    return save(
        path,
        [
            helper.make_node("Squeeze", ["n"], ["m"]),
            helper.make_node("Range", ["zero", "m", "one"], ["r"]),
            helper.make_node("Cast", ["r"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Unique", ["f"], ["u"], sorted=1),
            helper.make_node("Shape", ["u"], ["y"]),
        ],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1])],
        initializer=[
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
        ],
    )


def tile_inputs(text: str, repeats: int) -> list[dict[str, Any]]:
    return [
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": [text]},
        {"name": "r", "shape": [1], "datatype": "INT64", "data": [repeats]},
    ]


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default, derived ceiling (small model and run budgets keep it low)."""
    s = Server(
        tmp_path_factory.mktemp("derived"),
        MODELWORKS_MEMORY_BUDGET_MB="64",
        MODELWORKS_INFERENCE_MEMORY_MB="64",
    )
    yield s
    s.stop()


def test_serve_sets_a_data_ceiling_by_default(derived: Server) -> None:
    limit = derived.data_limit()
    assert limit > 0, "modelworks serve left its data memory unbounded"
    # what it holds, plus 128 MiB of budgets, plus headroom: a few GiB, not the machine
    cores = os.cpu_count() or 1
    assert limit < 1024 * MIB + 128 * MIB + memory.HEADROOM + cores * memory.HEADROOM_PER_CORE


def test_string_tiling_past_the_ceiling_answers_413_and_the_server_goes_on(
    derived: Server, tmp_path: Path
) -> None:
    derived.push("tile", tile_onnx(tmp_path / "tile.onnx"))
    ok = derived.infer("tile", tile_inputs("x" * 1000, 3))
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == [3]

    before = derived.resident()
    # one 1 MiB string repeated past the whole ceiling: a 1 MiB request asking for gigabytes
    repeats = derived.data_limit() // MIB + 512
    r = derived.infer("tile", tile_inputs("x" * MIB, repeats))
    assert r.status_code == 413, r.text[:500]
    assert SETTING in r.json()["error"]

    assert httpx.get(f"{derived.url}/livez").status_code == 200
    again = derived.infer("tile", tile_inputs("y" * 1000, 5))
    assert again.status_code == 200, again.text
    assert again.json()["outputs"][0]["data"] == [5]
    # the failed run's heap went back to the system, not kept at its peak
    assert derived.resident() < before + 256 * MIB


def test_kernel_working_memory_past_the_ceiling_answers_413(tmp_path: Path) -> None:
    """The arena would take the run's tensors (2 GiB cap); Unique's own hash table and the
    tensors together pass a 1 GiB ceiling set by hand."""
    s = Server(
        tmp_path / "home",
        MODELWORKS_MEMORY_BUDGET_MB="64",
        MODELWORKS_INFERENCE_MEMORY_MB="2048",
        MODELWORKS_PROCESS_MEMORY_MB="1024",
    )
    try:
        assert s.data_limit() == 1024 * MIB
        s.push("uniq", unique_onnx(tmp_path / "uniq.onnx"))
        small = s.infer("uniq", [{"name": "n", "shape": [1], "datatype": "INT64", "data": [1000]}])
        assert small.status_code == 200, small.text
        assert small.json()["outputs"][0]["data"] == [1000]
        big = s.infer(
            "uniq", [{"name": "n", "shape": [1], "datatype": "INT64", "data": [15_000_000]}]
        )
        assert big.status_code == 413, big.text[:500]
        assert SETTING in big.json()["error"]
        assert httpx.get(f"{s.url}/livez").status_code == 200
        small = s.infer("uniq", [{"name": "n", "shape": [1], "datatype": "INT64", "data": [77]}])
        assert small.json()["outputs"][0]["data"] == [77]
    finally:
        s.stop()


def test_ceiling_is_derived_from_the_memory_settings() -> None:
    base = {"memory_budget_mb": 100, "inference_memory_mb": 50}
    held = memory.data_bytes()
    assert held > 0
    derived = memory.ceiling(Settings(**base, process_memory_mb=-1))
    cores = os.cpu_count() or 1
    extra = 150 * MIB + memory.HEADROOM + cores * memory.HEADROOM_PER_CORE
    assert held + extra <= derived < held + extra + 64 * MIB
    assert memory.ceiling(Settings(**base, process_memory_mb=300)) == 300 * MIB
    assert memory.ceiling(Settings(**base, process_memory_mb=0)) == 0
    # CUDA maps memory of its own: no derived ceiling, a chosen one still holds
    assert memory.ceiling(Settings(**base, process_memory_mb=-1), cuda=True) == 0
    assert memory.ceiling(Settings(**base, process_memory_mb=300), cuda=True) == 300 * MIB
    # nothing bounded to derive from
    assert memory.ceiling(Settings(memory_budget_mb=0, process_memory_mb=-1)) == 0


def test_children_lift_the_servers_ceiling() -> None:
    """An export or job child starts with the server's soft limit and gives it back."""
    code = (
        "import resource; from modelworks import memory; "
        "memory.apply(512 * 1024 * 1024); assert memory.current() == 512 * 1024 * 1024; "
        "memory.lift(); s, h = resource.getrlimit(resource.RLIMIT_DATA); assert s == h"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_refused_allocation_in_python_answers_503(
    http: httpx.Client, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the ceiling, Python's own allocations raise MemoryError: that request answers 503
    with Retry-After naming the setting, not a 500."""

    def starved(*_a: Any, **_k: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(services.registry, "list_models", starved)
    r = http.get("/api/v1/models")
    assert r.status_code == 503, r.text
    assert SETTING in r.json()["error"]["message"]
    assert r.headers["Retry-After"] == "1"
