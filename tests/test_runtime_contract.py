"""The runtime contract: a runtime loads from local paths and a device, with no knowledge of
the registry, the store or serving, and returns its outputs and its statistics apart."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelworks.runtimes as runtimes
from modelworks.errors import ServiceUnavailable
from modelworks.runtimes import Artifact, Result, load, parse_device, register
from tests.models import linear_onnx, linear_reference

RUNTIMES = Path(runtimes.__file__).parent
# what a runtime may not know of: the registry, the store, serving, the web layer, auth, jobs
FORBIDDEN = ("modelworks.registry", "modelworks.store", "modelworks.serving", "modelworks.api")
FORBIDDEN += ("modelworks.auth", "modelworks.jobs", "modelworks.db")


def test_runtimes_import_nothing_of_the_registry_store_or_serving() -> None:
    for path in sorted(RUNTIMES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"


def test_an_onnx_file_loads_from_its_path_on_the_cpu(tmp_path: Path) -> None:
    path = linear_onnx(tmp_path / "linear.onnx")
    model = load(Artifact("onnx", path), device="cpu")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = model.predict({"x": x})
    assert isinstance(result, Result)
    np.testing.assert_allclose(result.outputs["y"], linear_reference(x), rtol=1e-5)
    assert result.counts == {}  # no statistics mixed into the outputs


def test_devices(tmp_path: Path) -> None:
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("auto") == ("auto", 0)
    for bad in ("gpu", "cuda:x", "cpu:1", ""):
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            parse_device(bad)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ServiceUnavailable, match="no CUDA provider"):
            load(Artifact("onnx", linear_onnx(tmp_path / "m.onnx")), device="cuda:0")


def test_runtimes_are_found_by_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no runtime for format 'gguf'; known: onnx"):
        load(Artifact("gguf", tmp_path / "m.gguf"))

    class Doubler:
        def __init__(self, artifact: Artifact, device: str, threads: int) -> None:
            self.signature: dict[str, Any] = {}
            self.device = device

        def predict(self, feeds: Any, outputs: Any = None, run_options: Any = None) -> Result:
            x = feeds["x"]
            return Result({"y": x * 2}, {"tokens": np.ones(len(x), np.int64)})

    monkeypatch.setitem(runtimes.RUNTIMES, "doubler", Doubler)  # restored after the test
    register("doubler", Doubler)
    model = load(Artifact("doubler", tmp_path / "unused"), device="cpu")
    result = model.predict({"x": np.ones(3)})
    assert isinstance(result, Result)
    assert result.outputs["y"].tolist() == [2.0, 2.0, 2.0]
    assert result.counts["tokens"].tolist() == [1, 1, 1]
