"""The README's access-control tour, command by command, against a live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelworks.cli import app
from tests.conftest import LiveServer
from tests.models import linear_onnx


def test_access_control_tour(
    live_server: LiveServer, admin_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("MODELWORKS_URL", live_server.url)

    def run(*args: str, key: str) -> str:
        monkeypatch.setenv("MODELWORKS_API_KEY", key)
        r = runner.invoke(app, list(args))
        assert r.exit_code == 0, (args, r.output)
        return r.stdout

    run(
        "projects",
        "create",
        "plant-b",
        "--rate-limit",
        "20",
        "--burst",
        "40",
        "--quota-requests",
        "50000",
        key=admin_key,
    )
    owner = json.loads(
        run(
            "keys",
            "create",
            "--project",
            "plant-b",
            "--role",
            "owner",
            "--name",
            "plant-b team",
            "--json",
            key=admin_key,
        )
    )
    assert owner["project"] == "plant-b" and owner["role"] == "owner"
    linear_onnx(tmp_path / "press_wear.onnx", n_out=1)
    run(
        "models",
        "push",
        "press-wear",
        str(tmp_path / "press_wear.onnx"),
        "--task",
        "tabular-regression",
        key=owner["key"],
    )
    invoker = json.loads(
        run(
            "keys",
            "create",
            "--role",
            "invoker",
            "--models",
            "press-wear",
            "--rate-limit",
            "5",
            "--quota-items",
            "10000",
            "--name",
            "line 3 HMI",
            "--json",
            key=owner["key"],
        )
    )
    assert invoker["models"] == ["press-wear"] and invoker["quota"] == {"items": 10000}
    out = json.loads(
        run("infer", "press-wear", "-i", "x=[[1,2,3,4],[4,3,2,1]]", "--json", key=invoker["key"])
    )
    assert len(out["y"]) == 2
    rows = json.loads(run("usage", "--group-by", "day,key,model", "--json", key=owner["key"]))
    (row,) = [r for r in rows if r["key"] == invoker["id"]]
    assert (row["model"], row["requests"], row["items"]) == ("press-wear", 1, 2)
    monkeypatch.setenv("COLUMNS", "200")
    table = run("usage", "--group-by", "day,key,model", key=owner["key"])
    assert "press-wear" in table and "█" in table
    events = json.loads(run("audit", "--limit", "20", "--json", key=owner["key"]))
    assert {"version.upload", "key.create"} <= {e["action"] for e in events}
    # the admin's default project does not see plant-b's model
    listed = json.loads(run("models", "list", "--json", key=admin_key))
    assert "press-wear" not in [m["name"] for m in listed]
