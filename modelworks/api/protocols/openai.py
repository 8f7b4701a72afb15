"""OpenAI-compatible routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/embeddings`.

The `openai` client with its defaults works: it asks for base64 embeddings unless told
otherwise, and reads errors as `{"error": {"message", "type", "code"}}`. `GET /v1/models/{id}`
is shared with TF-Serving's status route, so its body carries both key sets, and says whether
the model serves (see `retrieve_model`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from anyio import to_thread
from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from modelworks.api.auth import require
from modelworks.api.limits import loads
from modelworks.api.protocols import OPENAI, ProtocolRouter
from modelworks.api.protocols.tfserving import status_entry
from modelworks.api.protocols.v2 import read_body, readiness
from modelworks.api.responses import AnswerBudget, numpy_json
from modelworks.api.services import services
from modelworks.auth.keys import Principal
from modelworks.errors import (
    CODE_HEADER,
    BadRequest,
    InvalidInput,
    PayloadTooLarge,
    ServiceUnavailable,
)
from modelworks.serving import tasks

router = ProtocolRouter(OPENAI, tags=["openai"])
MAX_INPUTS = 2048
MAX_INPUT_BYTES = 64 * 1024
ANSWER_ADVICE = (
    "ask for encoding_format 'base64', for fewer 'dimensions', or send fewer inputs per request"
)
LANGCHAIN_HINT = " (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))"


def _created(m: Any) -> int:
    return int(m.created_at.timestamp())


@router.get("/v1/models")
def list_models(request: Request, p: Principal = Depends(require("infer"))) -> dict[str, Any]:
    """Every model the key can see that has a version, ready or not: a listing says what
    exists (a model missing from it would look deleted, not broken), and finding out whether
    each serves would load every one of them. `GET /v1/models/{id}` tells readiness."""
    svc = services(request)
    models = svc.registry.list_models(p.project_id)
    return {
        "object": "list",
        "data": [
            {
                "id": m.name,
                "object": "model",
                "created": _created(m),
                "owned_by": "modelworks",
                "task": m.task,
            }
            for m in models
            if m.versions and p.allows_model(m.name)
        ],
    }


@router.get("/v1/models/{model}")
async def retrieve_model(
    model: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    """The model object, with TF-Serving's `model_version_status` and KServe V1's `name` and
    `ready` beside OpenAI's keys (this path is all three protocols' status route), from the
    pool's real state (`v2.readiness`, which loads the serving version if needed).

    OpenAI's model object has no readiness field, so a serving version whose runtime cannot
    load it (a damaged artifact, a failed export) is a 503 naming the reason: the `openai`
    client raises it (with `x-should-retry: false`: retrying does not mend an artifact), KServe
    V1 callers read 503 as not ready, and TF-Serving callers still find `END` and the reason in
    `model_version_status`. A version still being converted answers 200 with `ready: false`
    and `LOADING`: it will serve by itself, and the model object is right as it is."""
    svc = services(request)
    t = await svc.serving.resolve_async(p, model)
    m = await to_thread.run_sync(svc.registry.get_model, p.project_id, t.model)
    state, reason = await readiness(svc, t)
    body: dict[str, Any] = {
        "id": t.model,
        "object": "model",
        "created": _created(m),
        "owned_by": "modelworks",
        "task": t.task,
        "name": t.model,
        "ready": state == "ready",
        "model_version_status": [status_entry(t, state, reason)],
    }
    if state != "failed":
        return _json(body)
    body["error"] = {
        "message": f"model {t.model}:{t.version} is not ready: {reason}",
        "type": "server_error",
        "param": None,
        "code": ServiceUnavailable.code,
    }
    headers = {"x-should-retry": "false", CODE_HEADER: ServiceUnavailable.code}
    return _json(body, status=503, headers=headers)


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    # ASCII escapes: a reason that echoes a lone surrogate still encodes
    content = json.dumps(body, separators=(",", ":"))
    return Response(content, status, headers, media_type="application/json")


def holds_token_ids(value: Any) -> bool:
    """`[int]` or `[[int]]`: token ids of some other model's vocabulary (tiktoken's, as
    LangChain sends by default), which no model here can read."""
    if not isinstance(value, list) or not value:
        return False
    rows = value if all(isinstance(v, list) for v in value) else [value]
    return all(rows) and all(
        isinstance(t, int) and not isinstance(t, bool) for row in rows for t in row
    )


def parse_texts(value: Any, field: str = "input", token_hint: str = "") -> list[str]:
    """A string or a list of strings, within the limits (named in the error)."""
    if holds_token_ids(value):
        raise InvalidInput(
            f"'{field}' holds token ids; this server tokenizes text itself: send strings"
            + token_hint
        )
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidInput(f"'{field}' must be a string or a list of strings")
    if not texts:
        raise InvalidInput(f"'{field}' is empty; send at least one string")
    if len(texts) > MAX_INPUTS:
        raise InvalidInput(f"'{field}' has {len(texts)} items; at most {MAX_INPUTS} per request")
    for i, t in enumerate(texts):
        try:
            size = len(t.encode())
        except UnicodeEncodeError:  # "\ud800" is valid JSON but no text
            raise InvalidInput(
                f"'{field}'[{i}] is not valid Unicode text (a lone surrogate); send UTF-8 text"
            ) from None
        if size > MAX_INPUT_BYTES:
            raise PayloadTooLarge(
                f"'{field}'[{i}] is longer than {MAX_INPUT_BYTES} bytes; split the text",
                details={"limit": MAX_INPUT_BYTES},
            )
    return texts


def load_json(body: bytes) -> dict[str, Any]:
    data = loads(body)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


@router.post("/v1/embeddings")
async def embeddings(request: Request, p: Principal = Depends(require("infer"))) -> Response:
    svc = services(request)
    req = load_json(await read_body(request, svc.settings.max_request_bytes))
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' is required: the name of an embeddings model (GET /v1/models)")
    texts = parse_texts(req.get("input"), token_hint=LANGCHAIN_HINT)
    fmt = req.get("encoding_format", "float") or "float"
    if fmt not in ("float", "base64"):
        raise InvalidInput("'encoding_format' must be 'float' or 'base64'")
    t = await svc.serving.resolve_async(p, model)
    tasks.check_text_task(t, ("embeddings",))
    dims = tasks.check_dimensions(t, req.get("dimensions"))
    pred = await svc.serving.predict(t, tasks.text_feeds(texts))
    if dims is None:
        emb = tasks.embeddings(pred.outputs)
    else:  # renormalising is numpy work: off the event loop
        emb = await to_thread.run_sync(tasks.embeddings, pred.outputs, dims)
    budget = AnswerBudget(svc.settings.max_response_bytes, ANSWER_ADVICE)
    data = [
        {"object": "embedding", "index": i, "embedding": _row(budget, row, fmt)}
        for i, row in enumerate(emb)
    ]
    answer = {
        "object": "list",
        "data": data,
        "model": t.model,
        "usage": {"prompt_tokens": pred.tokens, "total_tokens": pred.tokens},
    }
    return Response(budget.body(answer), media_type="application/json")


def _row(budget: AnswerBudget, row: np.ndarray, fmt: str) -> Any:
    """One embedding as the client asked for it, counted against the answer's budget."""
    if fmt == "base64":
        budget.take(4 * -(-row.nbytes // 3))
        return base64.b64encode(row.tobytes()).decode()
    return budget.array(row, numpy_json)
