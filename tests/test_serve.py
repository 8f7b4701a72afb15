"""`modelworks serve` as a new user runs it: a real process, the README's requests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.socket
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


class Served:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODELWORKS_HOME": str(home)}
        env.pop("MODELWORKS_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelworks", "serve", "--demo", "--port", str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=20)
        return out, err


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "mwhome"


def _readme_curl_body() -> dict:  # type: ignore[type-arg]
    m = re.search(r"-d '(\{.*?\})'", README)
    assert m, "README has no curl -d body"
    return json.loads(m.group(1))


def _readme_expected_output() -> dict:  # type: ignore[type-arg]
    m = re.search(r"```json\n(.*?)\n```", README, re.S)
    assert m
    return json.loads(m.group(1))


def _cli(args: list[str], url: str, key: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELWORKS_URL": url, "MODELWORKS_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "modelworks", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def served(home: Path) -> Iterator[Served]:
    s = Served(home)
    yield s
    if s.proc.poll() is None:
        s.stop()


def test_first_start_prints_key_once_and_readme_curl_works(
    served: Served, home: Path, tmp_path: Path
) -> None:
    assert served.proc.stdout is not None
    key = served.proc.stdout.readline().strip()
    assert re.fullmatch(r"mw_[A-Za-z0-9_-]{32,}", key)
    r = httpx.post(
        f"{served.url}/v2/models/pump-failure/infer",
        json=_readme_curl_body(),
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200
    expected = _readme_expected_output()
    got = r.json()
    assert got["model_name"] == expected["model_name"]
    assert got["outputs"][0]["data"] == pytest.approx(expected["outputs"][0]["data"], rel=1e-6)
    served.stop()
    # a restart keeps the data and prints no new key
    again = Served(home)
    try:
        r = httpx.get(
            f"{again.url}/api/v1/models/pump-failure", headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200 and r.json()["latest_version"] == 1
    finally:
        out2, _ = again.stop()
    assert "mw_" not in out2


def test_readme_tour(served: Served, tmp_path: Path) -> None:
    assert served.proc.stdout is not None
    key = served.proc.stdout.readline().strip()
    run = lambda *a: _cli(list(a), served.url, key, tmp_path)  # noqa: E731
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pump_failure_onnx.py"), "pump-v2.onnx"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    r = run(
        "models", "push", "pump-failure", "pump-v2.onnx", "--description", "retrained on March data"
    )
    assert r.returncode == 0, r.stderr
    assert "version 2" in r.stdout
    r = run("models", "show", "pump-failure")
    assert r.returncode == 0 and "sensors" in r.stdout
    r = run("models", "list", "--json")
    assert json.loads(r.stdout)[0]["latest_version"] == 2
    r = run("infer", "pump-failure:2", "-i", "sensors=[[0.9,0.8,0.2,0.7]]", "--json")
    assert json.loads(r.stdout)["failure_probability"][0][0] == pytest.approx(0.9089, abs=1e-4)
    r = run("infer", "pump-failure", "-i", "sensors=[[0.9,0.8,0.2,0.7]]", "--json")
    assert json.loads(r.stdout)["failure_probability"][0][0] == pytest.approx(0.9241, abs=1e-4)
    assert run("models", "alias", "pump-failure", "production", "2").returncode == 0
    r = run("infer", "pump-failure", "-i", "sensors=[[0.9,0.8,0.2,0.7]]", "--json")
    assert json.loads(r.stdout)["failure_probability"][0][0] == pytest.approx(0.9089, abs=1e-4)


def test_keys_bootstrap_recovers_a_lost_admin_key(
    served: Served, home: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "MODELWORKS_HOME": str(home)}
    r = subprocess.run(
        [sys.executable, "-m", "modelworks", "keys", "bootstrap"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert (
        httpx.get(
            f"{served.url}/api/v1/keys", headers={"Authorization": f"Bearer {key}"}
        ).status_code
        == 200
    )


def test_public_bind_without_auth_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "MODELWORKS_HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "modelworks", "serve", "--host", "0.0.0.0", "--no-auth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "refusing" in r.stderr and "Traceback" not in r.stderr
