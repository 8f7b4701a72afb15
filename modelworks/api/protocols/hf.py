"""Hugging Face inference-API task calls: `POST /models/{name}` with `{"inputs": ...}`.

`huggingface_hub.InferenceClient(model="http://host:8000/models/NAME", token=KEY)` works for
`feature_extraction` (embeddings models) and `text_classification` (with `top_k` and
`function_to_apply`: softmax, sigmoid or none, as transformers' pipeline applies them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from anyio import to_thread
from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from modelworks.api.auth import require
from modelworks.api.protocols import HF, ProtocolRouter
from modelworks.api.protocols.openai import load_json, parse_texts, truncate
from modelworks.api.protocols.v2 import read_body
from modelworks.api.responses import AnswerBudget, dumps, numpy_json
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.errors import InvalidInput

router = ProtocolRouter(HF, tags=["hugging face"])
ANSWER_ADVICE = "send fewer inputs per request, or a smaller 'parameters.top_k'"


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-np.logaddexp(0.0, -z)))  # no overflow for large |z|


# transformers' ClassificationFunction, from what the classifier returns: a probability over
# labels (its softmax), one per label, or the logits
SCORES: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
    "softmax": lambda out: out["probabilities"],
    "sigmoid": lambda out: sigmoid(out["_logits"].astype(np.float64)),
    "none": lambda out: out["_logits"],
}


def score_function(params: dict[str, Any]) -> str:
    """`parameters.function_to_apply` as transformers' pipeline reads it (any case)."""
    name = params.get("function_to_apply")
    if name is None:
        return "softmax"
    if not isinstance(name, str) or name.lower() not in SCORES:
        raise InvalidInput(
            f"'parameters.function_to_apply' must be one of {', '.join(map(repr, SCORES))}"
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
        pred = await svc.serving.predict(t, {"text": np.array(texts, dtype=np.object_)})
        emb = pred.outputs["embedding"]
        dims = params.get("dimensions")
        if dims is not None:
            full = emb.shape[1]
            if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= full:
                raise InvalidInput(f"'dimensions' must be an integer from 1 to {full}")
            emb = await to_thread.run_sync(truncate, emb, dims)
        rows = budget.array(np.asarray(emb[0] if single else emb, dtype=np.float32), numpy_json)
        return Response(budget.body(rows), media_type="application/json")
    scoring, k = score_function(params), top_k(params)
    pred = await svc.serving.predict(t, {"text": np.array(texts, dtype=np.object_)})
    scores = SCORES[scoring](pred.outputs)
    labels = list(t.signature.get("labels") or [f"LABEL_{i}" for i in range(scores.shape[1])])
    result = [_top_labels(budget, row, labels, k) for row in scores]
    return Response(budget.body(result), media_type="application/json")


def _top_labels(
    budget: AnswerBudget, row: np.ndarray, labels: list[Any], k: int | None
) -> orjson.Fragment:
    """One text's labels, best first, as transformers' pipeline lists them."""
    order = np.argsort(-row, kind="stable")[:k]
    best = [{"label": labels[i], "score": float(row[i])} for i in order]
    text = dumps(best)
    budget.take(len(text))
    return orjson.Fragment(text)
