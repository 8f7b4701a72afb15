"""Registry API: models, versions, aliases — on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modelworks.client import Client
from modelworks.errors import Conflict, NotFound, ValidationFailed
from tests.models import linear_onnx


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return linear_onnx(tmp_path / "m.onnx")


def test_model_crud(client: Client, database_url: str) -> None:
    m = client.create_model(
        "spindle-wear", task="tabular-regression", description="d", tags={"line": "3"}
    )
    assert m["name"] == "spindle-wear"
    assert m["latest_version"] is None
    assert [x["name"] for x in client.list_models()] == ["spindle-wear"]
    patched = client.update_model("spindle-wear", description="tool wear from spindle load")
    assert patched["description"] == "tool wear from spindle load"
    assert patched["tags"] == {"line": "3"}
    client.delete_model("spindle-wear")
    assert client.list_models() == []
    with pytest.raises(NotFound):
        client.get_model("spindle-wear")


@pytest.mark.parametrize("bad", ["../x", "A B", "x" * 200, "", "-lead", "a/b", "ok..no", "Upper"])
def test_invalid_model_names_are_refused_with_the_rule(
    http: httpx.Client, bad: str, database_url: str
) -> None:
    r = http.post("/api/v1/models", json={"name": bad})
    assert r.status_code == 422
    body = r.json()["error"]
    assert body["code"] == "validation_failed"
    assert "lowercase letters" in body["message"] or "at most" in body["message"]


def test_duplicate_model_is_409_and_names_the_fix(client: Client, database_url: str) -> None:
    client.create_model("coolant-temp")
    with pytest.raises(Conflict) as exc:
        client.create_model("coolant-temp")
    assert "modelworks models push coolant-temp" in exc.value.message


def test_unknown_task_is_refused(client: Client) -> None:
    with pytest.raises(ValidationFailed, match="unknown task"):
        client.create_model("t1", task="telepathy")


def test_versions_are_numbered_and_immutable(
    client: Client, tmp_path: Path, database_url: str
) -> None:
    client.create_model("m")
    v1 = client.push("m", linear_onnx(tmp_path / "a.onnx", seed=1), description="first")
    v2 = client.push("m", linear_onnx(tmp_path / "b.onnx", seed=2))
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["digest"] != v2["digest"]
    assert v1["description"] == "first"
    assert v1["created_by"].startswith("mw_")
    assert v1["lineage"]["source"] == "upload"
    got = client.get_version("m", 1)
    assert got["digest"] == v1["digest"]
    assert got["signature"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [v["version"] for v in client.list_versions("m")] == [1, 2]
    with pytest.raises(NotFound, match="no version 3"):
        client.get_version("m", 3)
    m = client.get_model("m")
    assert m["latest_version"] == 2 and m["versions"] == 2


def test_aliases_set_move_delete(client: Client, tmp_path: Path, database_url: str) -> None:
    client.create_model("m")
    client.push("m", linear_onnx(tmp_path / "a.onnx", seed=1))
    client.push("m", linear_onnx(tmp_path / "b.onnx", seed=2))
    assert client.set_alias("m", "production", 1)["version"] == 1
    assert client.get_model("m")["aliases"] == {"production": 1}
    client.set_alias("m", "production", 2)  # promotion
    client.set_alias("m", "staging", 1)
    assert client.get_model("m")["aliases"] == {"production": 2, "staging": 1}
    assert client.get_version("m", 2)["aliases"] == ["production"]
    client.delete_alias("m", "staging")
    assert client.get_model("m")["aliases"] == {"production": 2}
    with pytest.raises(NotFound):
        client.delete_alias("m", "staging")
    with pytest.raises(NotFound, match="no version 9"):
        client.set_alias("m", "production", 9)
    with pytest.raises(ValidationFailed):
        client.set_alias("m", "123", 1)  # digits read as a version number


def test_unknown_model_version_alias_are_404(http: httpx.Client, database_url: str) -> None:
    assert http.get("/api/v1/models/nope").status_code == 404
    assert http.get("/api/v1/models/nope/versions/1").status_code == 404
    assert (
        http.put("/api/v1/models/nope/aliases/production", json={"version": 1}).status_code == 404
    )
    assert http.delete("/api/v1/models/nope").status_code == 404
    r = http.get("/api/v1/models/nope")
    assert "modelworks models list" in r.json()["error"]["message"]


def test_deleting_a_model_frees_its_blobs(
    client: Client,
    services,
    onnx_file: Path,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    client.create_model("a")
    client.create_model("b")
    va = client.push("a", onnx_file)
    client.push("b", onnx_file)  # same bytes: one blob, shared
    assert services.store.exists(va["digest"])
    client.delete_model("a")
    assert services.store.exists(va["digest"]), "still used by model b"
    client.delete_model("b")
    assert not services.store.exists(va["digest"])


def test_audit_records_management_actions(client: Client, services, onnx_file: Path) -> None:  # type: ignore[no-untyped-def]
    client.create_model("m")
    client.push("m", onnx_file)
    client.set_alias("m", "production", 1)
    actions = [e.action for e in services.audit.list()]
    assert {"model.create", "version.upload", "alias.set"} <= set(actions)
