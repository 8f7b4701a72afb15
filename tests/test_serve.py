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


@pytest.fixture(scope="module")
def first_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """One first start for the module (it exports MiniLM to ONNX, which takes a while):
    (home, the admin key it printed, the output of the rest of the run)."""
    home = tmp_path_factory.mktemp("mwhome")
    s = Served(home)
    assert s.proc.stdout is not None
    key = s.proc.stdout.readline().strip()
    out, _err = s.stop()
    yield home, key, out


@pytest.fixture
def home(first_start: tuple[Path, str, str]) -> Path:
    return first_start[0]


@pytest.fixture
def key(first_start: tuple[Path, str, str]) -> str:
    return first_start[1]


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
    first_start: tuple[Path, str, str], served: Served
) -> None:
    _home, key, rest = first_start
    assert re.fullmatch(r"mw_[A-Za-z0-9_-]{32,}", key)
    assert "mw_" not in rest, "the key is printed once"
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
    # the restart kept the data and printed no new key
    assert served.proc.stdout is not None
    out, _ = served.stop()
    assert "mw_" not in out


def test_readme_tour(served: Served, key: str, tmp_path: Path) -> None:
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
    listed = {m["name"]: m for m in json.loads(r.stdout)}
    assert listed["pump-failure"]["latest_version"] == 2
    r = run("infer", "pump-failure:2", "-i", "sensors=[[0.9,0.8,0.2,0.7]]", "--json")
    assert json.loads(r.stdout)["failure_probability"][0][0] == pytest.approx(0.9089, abs=1e-4)
    r = run("infer", "pump-failure", "-i", "sensors=[[0.9,0.8,0.2,0.7]]", "--json")
    assert json.loads(r.stdout)["failure_probability"][0][0] == pytest.approx(0.9241, abs=1e-4)
    assert run("models", "alias", "pump-failure", "production", "2").returncode == 0
    r = run("infer", "pump-failure", "-i", "sensors=[[0.9,0.8,0.2,0.7]]", "--json")
    assert json.loads(r.stdout)["failure_probability"][0][0] == pytest.approx(0.9089, abs=1e-4)
    # put the demo back for the other tests of this module
    assert run("models", "alias", "pump-failure", "production", "1").returncode == 0


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


def test_demo_minilm_answers_the_openai_client(served: Served, key: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0)
    try:
        r = client.embeddings.create(model="minilm", input="The conveyor motor overheats.")
    finally:
        client.close()
    assert len(r.data[0].embedding) == 384
    assert r.usage.prompt_tokens > 0
