"""TensorFlow Serving REST API, for callers that speak it over plain HTTP (curl, requests).

    GET  /v1/models/{m}/versions/{n} | /v1/models/{m}/labels/{l}          model status
    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata                 signature
    POST /v1/models/{m}[/versions/{n}|/labels/{l}]:predict|:classify|:regress

`GET /v1/models/{m}` (status of the serving version) is the OpenAI retrieve route, whose body
carries `model_version_status` too. Status is the pool's real state (`v2.readiness`): a version
whose runtime cannot load it is `END` with the reason, answered 200 as TF-Serving answers
(the shared `GET /v1/models/{m}` answers such a version 503, see `openai.retrieve_model`).
A version is an integer (anything else is a 400); a label is a Modelworks alias. Without
either, the `production` alias serves, else the latest version. Errors are
`{"error": "<message>"}`. `signature_name` may be left out or be `serving_default` (or "",
TF-Serving's default); for `:classify` and `:regress` it may also be
`tensorflow/serving/classify` or `tensorflow/serving/regress`.

The bodies (`:predict`'s row and columnar formats, the examples and results of `:classify` and
`:regress`, `{"b64": ...}` strings, `NaN`/`Infinity` tokens in inputs and outputs) are decoded and
encoded by `tfserving_codec`, whose docstring describes them. Only these routes take the tokens:
the other protocols' JSON is strict.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from anyio import to_thread
from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from modelworks.api.auth import require
from modelworks.api.limits import loads
from modelworks.api.protocols import TFSERVING, ProtocolRouter
from modelworks.api.protocols.tfserving_codec import (
    TF_DTYPES,
    check_task,
    encode_call,
    example_feeds,
    method,
    predict_feeds,
)
from modelworks.api.protocols.v2 import read_body, readiness
from modelworks.api.responses import AnswerBudget
from modelworks.api.services import Services, services
from modelworks.auth.keys import Principal
from modelworks.errors import BadRequest, NotFound, ValidationFailed
from modelworks.serving.target import Target
from modelworks.tensors import check_against_signature

router = ProtocolRouter(TFSERVING, tags=["tensorflow serving"])

VERBS = ("predict", "classify", "regress")
DEFAULT_SIGNATURE = "serving_default"
INT64_MAX = 2**63 - 1
_INT64 = re.compile(r"-?(0|[1-9][0-9]{0,18})")
OFFLOAD_BYTES = 256 * 1024  # decode/encode bodies this big in a worker thread
ANSWER_ADVICE = "send fewer instances per request"


# routes -------------------------------------------------------------------------------------
@router.get("/v1/models/{model}/versions/{version}")
async def version_status(
    model: str, version: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    return _json(await _status(request, await _resolve(request, p, model, version=version)))


@router.get("/v1/models/{model}/labels/{label}")
async def label_status(
    model: str, label: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    return _json(await _status(request, await _resolve(request, p, model, label=label)))


@router.get("/v1/models/{model}/metadata")
async def model_metadata(
    model: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    return _json(_metadata(await _resolve(request, p, model)))


@router.get("/v1/models/{model}/versions/{version}/metadata")
async def version_metadata(
    model: str, version: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    return _json(_metadata(await _resolve(request, p, model, version=version)))


@router.get("/v1/models/{model}/labels/{label}/metadata")
async def label_metadata(
    model: str, label: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    return _json(_metadata(await _resolve(request, p, model, label=label)))


@router.post("/v1/models/{model_verb}")
async def call_model(
    model_verb: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    """`name:predict`, `name:classify` or `name:regress`."""
    model, verb = _split_verb(model_verb)
    return await _call(request, p, verb, model)


@router.post("/v1/models/{model}/versions/{version_verb}")
async def call_version(
    model: str, version_verb: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    """`N:predict`, `N:classify` or `N:regress`."""
    version, verb = _split_verb(version_verb)
    return await _call(request, p, verb, model, version=version)


@router.post("/v1/models/{model}/labels/{label_verb}")
async def call_label(
    model: str, label_verb: str, request: Request, p: Principal = Depends(require("infer"))
) -> Response:
    """`label:predict`, `label:classify` or `label:regress`."""
    label, verb = _split_verb(label_verb)
    return await _call(request, p, verb, model, label=label)


# resolving ----------------------------------------------------------------------------------
def _split_verb(segment: str) -> tuple[str, str]:
    head, sep, verb = segment.rpartition(":")
    if not sep or verb not in VERBS:
        shown = f"':{verb}'" if sep else "no ':method' suffix"
        raise NotFound(
            f"unknown method ({shown}); POST /v1/models/NAME[/versions/N|/labels/LABEL] "
            "must end in :predict, :classify or :regress"
        )
    return head, verb


def _version_number(text: str) -> int:
    """An int64, as TF-Serving parses the version in the path, written plainly: `int()` would
    also read ' 1', '+1', '01', '1_0' or a full-width '1' as 1. Anything else is a 400."""
    if _INT64.fullmatch(text):
        number = int(text)
        if -INT64_MAX - 1 <= number <= INT64_MAX:
            return number
    raise BadRequest(
        f"Malformed request: version {text!r} is not an integer; "
        "use /labels/{label} to name an alias"
    )


async def _resolve(
    request: Request,
    p: Principal,
    model: str,
    version: str | None = None,
    label: str | None = None,
) -> Target:
    if not model:
        raise BadRequest("Missing model name in the request path")
    selector: str | None = None
    if version is not None:
        number = _version_number(version)
        if number < 1:
            raise NotFound(f"model {model!r} has no version {number}")
        selector = str(number)
    elif label is not None:
        if not label or (label.isascii() and label.isdigit()):
            raise NotFound(
                f"model {model!r} has no label {label!r}; labels are aliases, which are never "
                f"all digits (for a version number use /versions/{label})"
            )
        selector = label
    svc = services(request)
    try:
        return await svc.serving.resolve_async(p, model, selector)
    except ValidationFailed as exc:  # a malformed name: TF-Serving has no 422
        raise BadRequest(exc.message) from None


async def _status(request: Request, t: Target) -> dict[str, Any]:
    """TF-Serving's status of one version, as `readiness` finds it (loading it if needed)."""
    state, reason = await readiness(services(request), t)
    return {"model_version_status": [status_entry(t, state, reason)]}


def status_entry(t: Target, state: str, reason: str) -> dict[str, Any]:
    """One `model_version_status` entry: AVAILABLE when the version serves; LOADING while it
    is being converted; END with error_code UNKNOWN and the reason when its runtime cannot load
    it, as TF-Serving reports a servable whose load failed (no canonical code fits every cause
    better: a damaged artifact, a failed export, no memory left for it)."""
    tf_state, code, message = "AVAILABLE", "OK", ""
    if state == "loading":
        tf_state = "LOADING"
    elif state == "failed":
        tf_state, code, message = "END", "UNKNOWN", reason
    return {
        "version": str(t.version),
        "state": tf_state,
        "status": {"error_code": code, "error_message": message},
    }


def _tensor_info(spec: dict[str, Any]) -> dict[str, Any]:
    shape = spec.get("shape")
    dims = shape if isinstance(shape, list) else None
    return {
        "dtype": TF_DTYPES.get(str(spec.get("datatype")), "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in dims] if dims is not None else [],
            "unknown_rank": dims is None,
        },
        "name": spec.get("name", ""),
    }


def _metadata(t: Target) -> dict[str, Any]:
    sig = t.signature
    return {
        "model_spec": {"name": t.model, "signature_name": "", "version": str(t.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    DEFAULT_SIGNATURE: {
                        "inputs": {s["name"]: _tensor_info(s) for s in sig.get("inputs", [])},
                        "outputs": {s["name"]: _tensor_info(s) for s in sig.get("outputs", [])},
                        "method_name": "tensorflow/serving/predict",
                        "defaults": {},
                    }
                }
            }
        },
    }


# calls --------------------------------------------------------------------------------------
async def _call(
    request: Request,
    p: Principal,
    verb: str,
    model: str,
    version: str | None = None,
    label: str | None = None,
) -> Response:
    t = await _resolve(request, p, model, version=version, label=label)
    svc = services(request)
    body = await read_body(request, svc.settings.max_request_bytes)
    big = len(body) > OFFLOAD_BYTES
    if big:
        feeds, shape = await to_thread.run_sync(_decode_call, verb, t, body, svc)
    else:
        feeds, shape = _decode_call(verb, t, body, svc)
    outputs = (await svc.serving.predict(t, feeds)).outputs
    budget = AnswerBudget(svc.settings.max_response_bytes, ANSWER_ADVICE)
    if big or sum(a.size for a in outputs.values()) > OFFLOAD_BYTES // 8:
        payload = await to_thread.run_sync(encode_call, verb, t, shape, outputs, budget)
    else:
        payload = encode_call(verb, t, shape, outputs, budget)
    return Response(payload, media_type="application/json")


def _decode_call(
    verb: str, t: Target, body: bytes, svc: Services
) -> tuple[dict[str, np.ndarray], tuple[int, str]]:
    """Feeds for the model, plus (batch size, "rows" | "columns" | "examples")."""
    req = _load(body)
    name = req.get("signature_name")
    allowed = (
        ("", DEFAULT_SIGNATURE) if verb == "predict" else ("", DEFAULT_SIGNATURE, method(verb))
    )
    if name is not None and name not in allowed:
        raise BadRequest(
            f"unknown signature_name {name!r}; this model has one signature, "
            f"{DEFAULT_SIGNATURE!r} (leave signature_name out to use it)"
        )
    limit = svc.settings.max_tensor_elements
    if verb == "predict":
        feeds, form = predict_feeds(t, req, limit)
    else:
        check_task(t, verb)
        feeds, form = example_feeds(t, req, limit, verb), "examples"
    check_against_signature(t.signature, feeds)
    first = next(iter(feeds.values()))
    return feeds, (int(first.shape[0]) if first.ndim else 1, form)


def _load(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise BadRequest("JSON Parse error: The document is empty")
    req = loads(body, allow_nan=True)  # NaN/±Infinity are data here, as in TF-Serving
    if not isinstance(req, dict):
        raise BadRequest("the request body must be a JSON object")
    return req


def _json(body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body, allow_nan=True, separators=(",", ":")), media_type="application/json"
    )
