"""The `modelworks` command line, run through typer's CliRunner against a live server."""

from __future__ import annotations

import gc
import json
import re
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from modelworks.cli import app
from tests.conftest import LiveServer, free_port
from tests.models import linear_onnx, linear_reference

pytestmark = pytest.mark.socket

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# the caller's environment must not leak into the commands under test
CLEAN_ENV: dict[str, str | None] = {
    "MODELWORKS_URL": None,
    "MODELWORKS_API_KEY": None,
    "MODELWORKS_DEBUG": None,
    "MODELWORKS_HOME": None,
    "MODELWORKS_DATABASE_URL": None,
    "MODELWORKS_AUTH": None,
    "MODELWORKS_HOST": None,
    "MODELWORKS_PORT": None,
}


def plain(text: str) -> str:
    return ANSI.sub("", text)


class Cli:
    """Runs `modelworks …` in-process with --url/--api-key for the live server."""

    def __init__(self, server: LiveServer, key: str) -> None:
        self.runner = CliRunner()
        self.url = server.url
        self.key = key

    def raw(
        self, *args: str, env: dict[str, str | None] | None = None, input: str | None = None
    ) -> Result:
        return self.runner.invoke(app, list(args), env={**CLEAN_ENV, **(env or {})}, input=input)

    def __call__(self, *args: str, key: str | None = None, input: str | None = None) -> Result:
        return self.raw(*args, "--url", self.url, "--api-key", key or self.key, input=input)

    def ok(self, *args: str, key: str | None = None) -> Result:
        result = self(*args, key=key)
        assert result.exit_code == 0, (
            args,
            result.exit_code,
            result.stdout,
            result.stderr,
            result.exception,
        )
        return result

    def json(self, *args: str, key: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", key=key).stdout)


def assert_one_line_error(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, (
        result.exit_code,
        result.stdout,
        result.stderr,
        result.exception,
    )
    stderr = plain(result.stderr).strip()
    assert "Traceback" not in result.output
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error:"), stderr
    assert result.stdout == ""
    return stderr


@pytest.fixture
def cli(live_server: LiveServer, admin_key: str) -> Cli:
    return Cli(live_server, admin_key)


def test_models_lifecycle(cli: Cli, tmp_path: Path) -> None:
    model_file = linear_onnx(tmp_path / "linear.onnx")

    result = cli.ok("models", "create", "press-line", "--description", "line 4 press")
    assert "press-line" in result.stdout

    rows = cli.json("models", "list")
    assert [r["name"] for r in rows] == ["press-line"]
    assert rows[0]["description"] == "line 4 press"
    assert rows[0]["latest_version"] is None

    result = cli.ok("models", "push", "press-line", str(model_file))
    assert "version 1" in plain(result.stdout)
    version = cli.json("models", "push", "press-line", str(model_file))
    assert version["version"] == 2
    assert version["format"] == "onnx"
    assert version["digest"].startswith("sha256:")

    shown = cli.json("models", "show", "press-line")
    assert shown["name"] == "press-line"
    assert [v["version"] for v in shown["version_list"]] == [1, 2]
    assert shown["version_list"][0]["signature"]["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert shown["aliases"] == {}

    # the table views work too and name what they show
    assert "press-line" in plain(cli.ok("models", "list").stdout)
    assert "x FP32" in plain(cli.ok("models", "show", "press-line").stdout)

    result = cli.ok("models", "alias", "press-line", "production", "1")
    assert "version 1" in plain(result.stdout)
    assert cli.json("models", "show", "press-line")["aliases"] == {"production": 1}
    assert cli.json("models", "list")[0]["aliases"] == {"production": 1}

    cli.ok("models", "alias", "press-line", "production", "--delete")
    assert cli.json("models", "show", "press-line")["aliases"] == {}

    # deleting asks first; "no" keeps the model
    result = cli("models", "delete", "press-line", input="n\n")
    assert result.exit_code == 1
    assert [r["name"] for r in cli.json("models", "list")] == ["press-line"]

    cli.ok("models", "delete", "press-line", "--yes")
    assert cli.json("models", "list") == []
    message = assert_one_line_error(cli("models", "show", "press-line"))
    assert "press-line" in message and "not found" in message


def test_push_creates_a_missing_model(cli: Cli, tmp_path: Path) -> None:
    model_file = linear_onnx(tmp_path / "linear.onnx")
    result = cli.ok("models", "push", "fresh", str(model_file))
    assert "version 1" in plain(result.stdout)
    assert "created model" in plain(result.stderr)
    shown = cli.json("models", "show", "fresh")
    assert shown["task"] == "tensor"
    assert [v["version"] for v in shown["version_list"]] == [1]

    # --no-create refuses instead
    result = cli("models", "push", "other", str(model_file), "--no-create")
    message = assert_one_line_error(result)
    assert "other" in message
    assert [r["name"] for r in cli.json("models", "list")] == ["fresh"]


def test_push_missing_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli("models", "push", "fresh", str(tmp_path / "nope.onnx"))
    assert result.exit_code == 2
    assert "nope.onnx" in plain(result.stderr)


def test_infer(cli: Cli, tmp_path: Path) -> None:
    cli.ok("models", "push", "press-line", str(linear_onnx(tmp_path / "linear.onnx")))
    out = cli.json("infer", "press-line", "-i", "x=[[1,2,3,4]]")
    assert set(out) == {"y"}
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(out["y"], dtype=np.float32), linear_reference(x), rtol=1e-5, atol=1e-6
    )

    out = cli.json("infer", "press-line:1", "--input", "x=[[1,2,3,4],[5,6,7,8]]")
    x2 = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(
        np.asarray(out["y"], dtype=np.float32), linear_reference(x2), rtol=1e-5, atol=1e-6
    )

    table = plain(cli.ok("infer", "press-line", "-i", "x=[[1,2,3,4]]").stdout)
    assert "y" in table and "[1, 2]" in table

    # a wrong shape is the server's 400, shown as one line naming the input
    message = assert_one_line_error(cli("infer", "press-line", "-i", "x=[[1,2,3]]"))
    assert "'x'" in message


def test_env_vars_configure_url_and_key(cli: Cli, live_server: LiveServer, admin_key: str) -> None:
    env: dict[str, str | None] = {
        "MODELWORKS_URL": live_server.url,
        "MODELWORKS_API_KEY": admin_key,
    }
    result = cli.raw("models", "create", "from-env", env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    result = cli.raw("models", "list", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    assert [r["name"] for r in json.loads(result.stdout)] == ["from-env"]

    # no key at all: the server's 401 explains how to send one
    result = cli.raw("models", "list", env={"MODELWORKS_URL": live_server.url})
    message = assert_one_line_error(result)
    assert "MODELWORKS_API_KEY" in message or "API key" in message


def test_keys_create_list_revoke(cli: Cli, tmp_path: Path) -> None:
    cli.ok("models", "push", "press-line", str(linear_onnx(tmp_path / "linear.onnx")))

    created = cli.json("keys", "create", "--role", "invoker", "--name", "edge-box")
    secret = created["key"]
    assert isinstance(secret, str) and secret.startswith("mw_")
    assert created["role"] == "invoker"
    key_id = created["id"]

    listed = cli.json("keys", "list")
    mine = [k for k in listed if k["id"] == key_id]
    assert len(mine) == 1
    assert mine[0]["name"] == "edge-box"
    assert mine[0]["revoked_at"] is None
    assert secret not in json.dumps(listed)  # the secret is shown once, never listed

    assert mine[0]["last_used_at"] is None
    assert "never" in _row_of(cli, key_id)

    # the invoker key may infer, and may not manage models
    cli.ok("infer", "press-line", "-i", "x=[[1,2,3,4]]", key=secret)
    assert_one_line_error(cli("models", "create", "not-allowed", key=secret))
    used = next(k for k in cli.json("keys", "list") if k["id"] == key_id)["last_used_at"]
    assert used is not None, "the key's use shows at once, before it is written"
    assert used[:19] in _row_of(cli, key_id)
    assert f"last used {used[:19]}" in plain(cli.ok("keys", "show", str(key_id)).stdout)

    result = cli.ok("keys", "revoke", str(key_id))
    assert str(key_id) in plain(result.stdout)
    revoked = next(k for k in cli.json("keys", "list") if k["id"] == key_id)
    assert revoked["revoked_at"] is not None

    message = assert_one_line_error(cli("infer", "press-line", "-i", "x=[[1,2,3,4]]", key=secret))
    assert "revoked" in message

    # revoking a key that does not exist
    assert "999999" in assert_one_line_error(cli("keys", "revoke", "999999"))


def _row_of(cli: Cli, key_id: int) -> str:
    """The line of `keys list`'s table (in a terminal wide enough for it) that shows a key."""
    args = ("keys", "list", "--url", cli.url, "--api-key", cli.key)
    result = cli.raw(*args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line.split("│") for line in plain(result.stdout).splitlines()]
    return next("│".join(row) for row in rows if row[1:2] and row[1].strip() == str(key_id))


def test_unknown_model_is_one_line_exit_1(cli: Cli) -> None:
    for args in (
        ("models", "show", "ghost"),
        ("infer", "ghost", "-i", "x=[[1,2,3,4]]"),
        ("models", "delete", "ghost", "--yes"),
        ("models", "alias", "ghost", "production", "1"),
    ):
        message = assert_one_line_error(cli(*args))
        assert "ghost" in message, (args, message)


def test_unreachable_server(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (("models", "list"), ("infer", "m", "-i", "x=[[1]]"), ("keys", "list")):
        result = cli.raw(*args, "--url", url, "--api-key", "mw_whatever")
        message = assert_one_line_error(result)
        assert url in message
        assert "modelworks serve" in message
        assert "MODELWORKS_URL" in message


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("models", "show"), id="show-without-name"),
        pytest.param(("models", "push", "m"), id="push-without-file"),
        pytest.param(("infer", "m"), id="infer-without-input"),
        pytest.param(("models", "alias", "m", "production"), id="alias-without-version-or-delete"),
        pytest.param(
            ("models", "alias", "m", "production", "1", "--delete"), id="alias-version-and-delete"
        ),
        pytest.param(("keys", "revoke", "abc"), id="key-id-not-a-number"),
        pytest.param(("models", "frobnicate"), id="unknown-command"),
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli.raw(*args, "--url", cli.url, "--api-key", cli.key)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert plain(result.stderr).strip()


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        pytest.param("x[[1,2,3,4]]", "NAME=JSON", id="no-equals"),
        pytest.param("=[[1,2,3,4]]", "NAME=JSON", id="no-name"),
        pytest.param("x=[[1,2,", "not valid JSON", id="bad-json"),
    ],
)
def test_bad_input_syntax_exits_2(cli: Cli, spec: str, hint: str) -> None:
    result = cli("infer", "press-line", "-i", spec)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert hint in plain(result.stderr)


def test_db_upgrade(tmp_path: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "fresh-home"
    home.mkdir()
    result = runner.invoke(app, ["db", "upgrade", "--home", str(home)], env=CLEAN_ENV)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    head = newest_revision()
    assert f"revision {head}" in plain(result.stdout)
    assert (home / "modelworks.db").is_file()
    # running it again is harmless and reports the same revision
    again = runner.invoke(app, ["db", "upgrade", "--home", str(home)], env=CLEAN_ENV)
    assert again.exit_code == 0, again.stderr
    assert f"revision {head}" in plain(again.stdout)


def newest_revision() -> str:
    """The head of the shipped migration scripts, read with alembic itself."""
    from alembic.script import ScriptDirectory

    from modelworks.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def test_serve_refuses_public_bind_without_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    started: list[Any] = []
    # were the guard missing, record the attempt instead of blocking on a real server
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **kw: started.append((a, kw)))
    home = tmp_path / "serve-home"
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--host",
            "0.0.0.0",
            "--no-auth",
            "--home",
            str(home),
            "--port",
            str(free_port()),
        ],
        env=CLEAN_ENV,
    )
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert started == []
    message = plain(result.stderr)
    assert "0.0.0.0" in message and "auth" in message
    assert "Traceback" not in result.output
    assert not (home / "modelworks.db").exists()  # refused before touching anything

    # the env var route to "no auth" is refused the same way
    result = CliRunner().invoke(
        app,
        ["serve", "--host", "0.0.0.0", "--home", str(home)],
        env={**CLEAN_ENV, "MODELWORKS_AUTH": "false"},
    )
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert started == []


def test_version(tmp_path: Path) -> None:
    from modelworks import __version__

    result = CliRunner().invoke(app, ["version"], env=CLEAN_ENV)
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_cli_closes_its_connections(cli: Cli, tmp_path: Path) -> None:
    """A command leaves no open socket behind (it must close the SDK client it made)."""
    cli.ok("models", "push", "press-line", str(linear_onnx(tmp_path / "linear.onnx")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = cli.runner.invoke(
            app, ["models", "list", "--url", cli.url, "--api-key", cli.key], env=CLEAN_ENV
        )
        result2 = cli.runner.invoke(
            app,
            ["infer", "press-line", "-i", "x=[[1,2,3,4]]", "--url", cli.url, "--api-key", cli.key],
            env=CLEAN_ENV,
        )
        gc.collect()
    assert result.exit_code == 0 and result2.exit_code == 0
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
    # a client kept alive unclosed warns of nothing: it holds its connection to the server
    # type(), not isinstance: isinstance reads `__class__`, which some modules' objects
    # answer with a deprecation warning (torch.distributed's, once torch is imported)
    still_open = [
        o
        for o in gc.get_objects()
        if type(o) is httpx.Client and not o.is_closed and str(o.base_url).startswith(cli.url)
    ]
    assert still_open == [], "a command left its client open"
