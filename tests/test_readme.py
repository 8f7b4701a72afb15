"""The README runs as printed: every shell and Python block, in order, against a live
`modelworks serve --demo`, the way a new user pastes them (as Datasette tests its docs).

Conventions the README follows so that this works, all invisible on a rendered page:
- `<!-- readme: skip (reason) -->` on the line before a block: not run, and the reason says why.
- `<!-- readme: output -->` before a `json` block: what the block above it prints.
- `mw_…` stands for the key printed last (the admin key `make serve` printed, then any key a
  block created), as a user copies it.
- `127.0.0.1:8000` is the test server's address.
Shell blocks share one environment (an `export` carries into later blocks) and one folder;
each Python block runs in a fresh interpreter, as if pasted into a new `python`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
KEY = re.compile(r"mw_[A-Za-z0-9_-]{43}")
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)
DIRECTIVE = re.compile(r"<!--\s*readme:\s*(?P<what>skip|output)\b(?P<why>.*?)-->\s*$")
RUN = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    line: int
    lang: str  # "sh", "python", or the fence's own language for blocks that do not run
    code: str
    skip: str | None = None  # the reason, for blocks marked skip
    output: bool = False  # expected output of the block before


def blocks(text: str) -> list[Block]:
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        d = DIRECTIVE.search(before)
        indent = m["indent"]
        code = "".join(
            ln[len(indent) :] if ln.startswith(indent) else ln
            for ln in m["body"].splitlines(keepends=True)
        )
        found.append(
            Block(
                line=line,
                lang=RUN.get(m["lang"], m["lang"]),
                code=code,
                skip=d["why"].strip(" ():—-") if d and d["what"] == "skip" else None,
                output=bool(d and d["what"] == "output"),
            )
        )
    return found


def test_readme_conventions() -> None:
    """Every runnable block either runs or says why not; outputs follow a block that runs."""
    found = blocks(README.read_text())
    assert len([b for b in found if b.lang in ("sh", "python")]) >= 12
    for i, b in enumerate(found):
        if b.skip is not None:
            assert b.skip, f"README line {b.line}: say why the block is skipped"
        if b.output:
            assert b.lang == "json" and i > 0 and found[i - 1].lang in ("sh", "python"), b.line


def same(got: Any, want: Any) -> bool:
    """JSON equality, with floats equal to 6 significant digits (what the README prints)."""
    if isinstance(want, float) and isinstance(got, int | float):
        return abs(got - want) <= 1e-6 * max(1.0, abs(want))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    return bool(got == want)


@dataclass
class Server:
    url: str
    key: str
    home: Path
    log: list[str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`modelworks serve --demo` as `make serve` starts it, in a fresh home."""
    home = tmp_path_factory.mktemp("user")
    port = free_port()
    env = user_env(home)
    proc = subprocess.Popen(
        [str(BIN / "modelworks"), "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        key = wait_ready(url, log, proc)
        yield Server(url=url, key=key, home=home / ".modelworks", log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()


def user_env(home: Path) -> dict[str, str]:
    """A new user's shell: the venv first on PATH, a HOME of its own, no Modelworks settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELWORKS_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", COLUMNS="100")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_ready(url: str, log: list[str], proc: subprocess.Popen[str]) -> str:
    """The printed admin key, once both demo models answer (minilm is exported on first start)."""
    deadline = time.monotonic() + 240
    key = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "modelworks serve exited:\n" + "".join(log)
        key = key or next((m[0] for ln in log if (m := KEY.search(ln))), None)
        if key:
            try:
                r = httpx.get(
                    f"{url}/v2/models/minilm/ready", headers={"Authorization": f"Bearer {key}"}
                )
                if r.status_code == 200 and r.json().get("ready"):
                    return key
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    raise AssertionError("the demo did not become ready:\n" + "".join(log))


@pytest.mark.socket
def test_readme_runs_as_printed(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "clone"  # a clone's root: the examples are where the README says
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    env = user_env(Path(server.home).parent)
    env["MODELWORKS_API_KEY"] = server.key  # what the first `export` line sets anyway
    env["MODELWORKS_URL"] = server.url  # the CLI's and SDK's default, on the test's port
    address = server.url.removeprefix("http://")
    last_key = server.key
    last_out = ""
    ran = 0
    for block in blocks(README.read_text()):
        if block.skip is not None or block.lang not in ("sh", "python", "json"):
            continue
        if block.output:
            assert same(json.loads(last_out), json.loads(block.code)), (
                f"README line {block.line}: the block above printed\n{last_out}\n"
                f"but the README shows\n{block.code}"
            )
            continue
        code = block.code.replace("127.0.0.1:8000", address).replace("mw_…", last_key)
        envfile = tmp_path / "env"
        if block.lang == "sh":
            argv = ["bash", "-c", f"set -euo pipefail\n{code}\nenv -0 > {envfile}"]
        else:
            argv = [str(BIN / "python"), "-c", code]
        r = subprocess.run(
            argv, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
        )
        assert r.returncode == 0, (
            f"README line {block.line} ({block.lang}) failed with exit code {r.returncode}:\n"
            f"{block.code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
        )
        if block.lang == "sh":
            env = dict(
                item.split("=", 1) for item in envfile.read_text().split("\0") if "=" in item
            )
        last_out = r.stdout
        keys = KEY.findall(r.stdout)
        last_key = keys[-1] if keys else last_key
        ran += 1
    assert ran >= 12


def test_first_install_shows_what_it_installs() -> None:
    """`make serve`'s first install says what it installs and how long, and pip shows its
    progress (it ran --quiet: two silent minutes); it installs the clients the README uses."""
    r = subprocess.run(
        ["make", "-n", "-B", ".venv/.serve"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    (install,) = [ln for ln in r.stdout.splitlines() if "pip install" in ln and "-e " in ln]
    assert "--quiet" not in install and " -q" not in install
    assert "clients" in install
    assert re.search(r"echo .*minutes", r.stdout), r.stdout
