from __future__ import annotations

from pathlib import Path

import numpy as np

from modelworks.client import Client
from tests.models import linear_onnx, linear_reference


def test_upload_alias_infer(client: Client, tmp_path: Path, database_url: str) -> None:
    client.create_model("press-line", task="tensor")
    v = client.push("press-line", linear_onnx(tmp_path / "m.onnx"))
    assert v["version"] == 1
    client.set_alias("press-line", "production", 1)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = client.infer("press-line", {"x": x})
    np.testing.assert_allclose(out["y"], linear_reference(x), rtol=1e-5)
