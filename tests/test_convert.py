"""`modelworks convert`: scikit-learn -> ONNX on the client, then served like any ONNX model."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge
from typer.testing import CliRunner

from modelworks.cli import app
from modelworks.client import Client


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(np.int64)
    return x, y


def test_classifier_converts_and_serves_the_same_probabilities(
    client: Client, tmp_path: Path
) -> None:
    x, y = _data()
    model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    joblib.dump(model, tmp_path / "rf.joblib")
    r = CliRunner().invoke(
        app,
        [
            "convert",
            str(tmp_path / "rf.joblib"),
            str(tmp_path / "rf.onnx"),
            "--features",
            "5",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    client.create_model("bearing-fault", task="tabular-classification")
    v = client.push("bearing-fault", tmp_path / "rf.onnx")
    outputs = {o["name"] for o in v["signature"]["outputs"]}
    assert outputs == {"label", "probabilities"}
    got = client.infer("bearing-fault", {"input": x[:8]})
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(x[:8]), atol=1e-5)
    np.testing.assert_array_equal(got["label"], model.predict(x[:8]))


def test_regressor_converts(client: Client, tmp_path: Path) -> None:
    x, _ = _data()
    y = x @ np.arange(5, dtype=np.float32)
    model = Ridge().fit(x, y)
    joblib.dump(model, tmp_path / "ridge.pkl")
    r = CliRunner().invoke(
        app, ["convert", str(tmp_path / "ridge.pkl"), str(tmp_path / "r.onnx"), "-f", "5"]
    )
    assert r.exit_code == 0, r.output
    client.create_model("spindle-load", task="tabular-regression")
    client.push("spindle-load", tmp_path / "r.onnx")
    got = client.infer("spindle-load", {"input": x[:4]})
    np.testing.assert_allclose(got["variable"].reshape(-1), model.predict(x[:4]), rtol=1e-4)


def test_convert_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    r = CliRunner().invoke(
        app, ["convert", str(tmp_path / "junk.pkl"), str(tmp_path / "o.onnx"), "-f", "3"]
    )
    assert r.exit_code == 1
    assert "Traceback" not in r.output
