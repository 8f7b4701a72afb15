"""The plain baseline for benchmarks/serving.py: a minimal FastAPI app serving the same ONNX
files one request at a time (no batching, no auth, no registry, no metrics).

    BASELINE_TABULAR_ONNX=tabular.onnx BASELINE_EMBED_ONNX=minilm.onnx \
    BASELINE_EMBED_FOLDER=unpacked/minilm/ \
        uvicorn benchmarks.baseline_app:app --workers 2

Routes: `POST /v2/models/{name}/infer` (OIP-like JSON, the tabular model, first input only)
and `POST /v1/embeddings` (OpenAI-like: tokenizers + ONNX Runtime + mean pooling + L2
normalisation, as all-MiniLM-L6-v2 is configured). Handlers are `async def` and run the model
inline, so each worker process does exactly one request at a time; run one worker per core.
`BASELINE_THREADS` sets ONNX Runtime intra-op threads per worker (default 1).

`floor` is the same tabular route as a bare ASGI callable (no framework, orjson, no auth,
metering, metrics or batching): about the least Python can do per request, so its requests/s
is a ceiling for any server written in it (`uvicorn benchmarks.baseline_app:floor`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

THREADS = int(os.environ.get("BASELINE_THREADS", "1"))


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    max_len = 256
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        max_len = int(json.loads(st.read_text()).get("max_seq_length") or max_len)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0)
    return tok


TABULAR = (
    session(os.environ["BASELINE_TABULAR_ONNX"]) if "BASELINE_TABULAR_ONNX" in os.environ else None
)
EMBED = session(os.environ["BASELINE_EMBED_ONNX"]) if "BASELINE_EMBED_ONNX" in os.environ else None
TOKENIZER = tokenizer(Path(os.environ["BASELINE_EMBED_FOLDER"])) if EMBED is not None else None
EMBED_INPUTS = {i.name for i in EMBED.get_inputs()} if EMBED is not None else set()

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"tabular": TABULAR is not None, "embed": EMBED is not None}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> JSONResponse:
    assert TABULAR is not None
    req = json.loads(await request.body())
    spec = req["inputs"][0]
    x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
    inp = TABULAR.get_inputs()[0].name
    outs = TABULAR.run(None, {inp: x})
    return JSONResponse(
        {
            "model_name": name,
            "outputs": [
                {
                    "name": o.name,
                    "datatype": "FP32",
                    "shape": list(y.shape),
                    "data": y.ravel().tolist(),
                }
                for o, y in zip(TABULAR.get_outputs(), outs, strict=True)
            ],
        }
    )


@app.post("/v1/embeddings")
async def embeddings(request: Request) -> JSONResponse:
    assert EMBED is not None and TOKENIZER is not None
    req = json.loads(await request.body())
    texts = [req["input"]] if isinstance(req["input"], str) else list(req["input"])
    enc = TOKENIZER.encode_batch(texts)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": mask,
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }
    hidden = EMBED.run(None, {k: v for k, v in feeds.items() if k in EMBED_INPUTS})[0]
    m = mask[..., None].astype(hidden.dtype)
    emb = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    tokens = int(mask.sum())
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": row.tolist()}
                for i, row in enumerate(emb.astype(np.float32))
            ],
            "model": req.get("model", ""),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def floor(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Bare ASGI: `GET /health` and the tabular `POST /v2/models/{name}/infer`, nothing else."""
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        out = b'{"tabular": true}'
    else:
        assert TABULAR is not None
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        spec = orjson.loads(body)["inputs"][0]
        x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
        (y,) = TABULAR.run(None, {TABULAR.get_inputs()[0].name: x})
        name = scope["path"].split("/")[3]
        out = orjson.dumps(
            {
                "model_name": name,
                "outputs": [
                    {
                        "name": "logits",
                        "datatype": "FP32",
                        "shape": list(y.shape),
                        "data": y.ravel(),
                    }
                ],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})
