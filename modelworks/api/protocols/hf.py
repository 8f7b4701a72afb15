"""Hugging Face inference-API task calls: `POST /models/{name}` with `{"inputs": ...}`.

`huggingface_hub.InferenceClient(model="http://host:8000/models/NAME", token=KEY)` works for
`feature_extraction` (embeddings models) and `text_classification`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelworks.api.auth import require
from modelworks.api.protocols.openai import load_json, parse_texts, truncate
from modelworks.api.protocols.v2 import read_body
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.errors import InvalidInput

router = APIRouter(tags=["hugging face"])


@router.post("/models/{model}")
async def task_call(
    model: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    svc = services(request)
    req = load_json(await read_body(request, svc.settings.max_request_bytes))
    single = isinstance(req.get("inputs"), str)
    texts = parse_texts(req.get("inputs"), field="inputs")
    raw = req.get("parameters")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    t = await svc.serving.resolve_async(p, model)
    if t.task not in ("embeddings", "text-classification"):
        raise InvalidInput(
            f"model {t.model!r} has task {t.task!r}; Hugging Face task calls serve 'embeddings' "
            "(feature extraction) and 'text-classification' models — use /v2 for tensors"
        )
    pred = await svc.serving.predict(t, {"text": np.array(texts, dtype=np.object_)})
    if t.task == "embeddings":
        emb = pred.outputs["embedding"]
        dims = params.get("dimensions")
        if dims is not None:
            full = emb.shape[1]
            if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= full:
                raise InvalidInput(f"'dimensions' must be an integer from 1 to {full}")
            emb = await to_thread.run_sync(truncate, emb, dims)
        rows = emb.astype(np.float32).tolist()
        return JSONResponse(rows[0] if single else rows)
    if t.task == "text-classification":
        probs = pred.outputs["probabilities"]
        labels = list(t.signature.get("labels") or [f"LABEL_{i}" for i in range(probs.shape[1])])
        top_k = params.get("top_k")
        k = (
            top_k
            if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0
            else len(labels)
        )
        result: list[Any] = []
        for row in probs:
            order = np.argsort(-row)[:k]
            result.append([{"label": labels[i], "score": float(row[i])} for i in order])
        return JSONResponse(result)
    raise InvalidInput(f"model {t.model!r} has task {t.task!r}")
