"""Hugging Face inference-API task calls: `POST /models/{name}` with `{"inputs": ...}`.

`huggingface_hub.InferenceClient(model="http://host:8000/models/NAME", token=KEY)` works for
`feature_extraction` (embeddings models) and `text_classification` (with `top_k` and
`function_to_apply`: softmax, sigmoid or none, as transformers' pipeline applies them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from anyio import to_thread
from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from modelworks.api.auth import require
from modelworks.api.protocols import HF, ProtocolRouter
from modelworks.api.protocols.openai import load_json, parse_texts
from modelworks.api.protocols.v2 import read_body
from modelworks.api.responses import AnswerBudget, dumps, numpy_json
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.errors import InvalidInput
from modelworks.serving.tasks import (
    SCORING,
    check_dimensions,
    class_labels,
    class_scores,
    embeddings,
    text_feeds,
    top_labels,
)

router = ProtocolRouter(HF, tags=["hugging face"])
ANSWER_ADVICE = "send fewer inputs per request, or a smaller 'parameters.top_k'"


def score_function(params: dict[str, Any]) -> str:
    """`parameters.function_to_apply` as transformers' pipeline reads it (any case)."""
    name = params.get("function_to_apply")
    if name is None:
        return "softmax"
    if not isinstance(name, str) or name.lower() not in SCORING:
        raise InvalidInput(
            f"'parameters.function_to_apply' must be one of {', '.join(map(repr, SCORING))}"
        )
    return name.lower()


def top_k(params: dict[str, Any]) -> int | None:
    k = params.get("top_k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InvalidInput("'parameters.top_k' must be a positive integer")
    return k


@router.post("/models/{model}")
async def task_call(
    model: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    svc = services(request)
    budget = AnswerBudget(svc.settings.max_response_bytes, ANSWER_ADVICE)
    req = load_json(await read_body(request, svc.settings.max_request_bytes))
    single = isinstance(req.get("inputs"), str)
    texts = parse_texts(req.get("inputs"), field="inputs")
    params = req.get("parameters")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object, e.g. {\"top_k\": 2}")
    t = await svc.serving.resolve_async(p, model)
    if t.task not in ("embeddings", "text-classification"):
        raise InvalidInput(
            f"model {t.model!r} has task {t.task!r}; Hugging Face task calls serve 'embeddings' "
            "(feature extraction) and 'text-classification' models — use /v2 for tensors"
        )
    if t.task == "embeddings":
        dims = check_dimensions(t, params.get("dimensions"))
        pred = await svc.serving.predict(t, text_feeds(texts))
        if dims is None:
            emb = embeddings(pred.outputs)
        else:
            emb = await to_thread.run_sync(embeddings, pred.outputs, dims)
        rows = budget.array(emb[0] if single else emb, numpy_json)
        return Response(budget.body(rows), media_type="application/json")
    scoring, k = score_function(params), top_k(params)
    pred = await svc.serving.predict(t, text_feeds(texts))
    scores = class_scores(t, pred.outputs, len(texts), scoring)
    # transformers' names for labels a model does not name
    labels = class_labels(t, scores.shape[1]) or [f"LABEL_{i}" for i in range(scores.shape[1])]
    result = [_top_labels(budget, row, labels, k) for row in scores]
    return Response(budget.body(result), media_type="application/json")


def _top_labels(
    budget: AnswerBudget, row: np.ndarray, labels: list[str], k: int | None
) -> orjson.Fragment:
    """One text's labels, best first, as transformers' pipeline lists them."""
    text = dumps(top_labels(row, labels, k))
    budget.take(len(text))
    return orjson.Fragment(text)
