"""Open Inference Protocol v2 over REST (KServe / Triton): JSON tensors and the binary
tensor extension (what tritonclient sends by default).

Errors here are `{"error": "<message>"}` and success is exactly 200, as tritonclient expects.
A model name may carry a selector: `name` (alias `production`, else the latest version),
`name:3` (version 3) or `name:staging` (alias); `/versions/{v}` takes a number or an alias.
Triton's statistics extension (`/v2/models[/{m}[/versions/{v}]]/stats`) reports the counts
each model version's batcher keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from anyio import to_thread
from fastapi import Depends
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelworks import __version__
from modelworks.api.auth import require
from modelworks.api.health import database_ok
from modelworks.api.limits import loads
from modelworks.api.protocols import V2, ProtocolRouter
from modelworks.api.responses import AnswerBudget, binary_size, flat_json
from modelworks.api.services import Services, services
from modelworks.auth.keys import Principal
from modelworks.errors import BadRequest, InvalidInput, ModelworksError, PayloadTooLarge
from modelworks.serving.batcher import Duration, ModelStats
from modelworks.serving.target import Target
from modelworks.tensors import (
    check_against_signature,
    datatype_of,
    from_binary,
    from_json,
    to_binary,
)

router = ProtocolRouter(V2, prefix="/v2", tags=["open inference protocol v2"])
EXTENSIONS: list[str] = ["binary_tensor_data", "statistics"]
STAT_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
COMPUTE = ("compute_input", "compute_infer", "compute_output")
ANSWER_ADVICE = (
    'ask for the outputs in binary (parameters: {"binary_data_output": true}, the binary '
    "tensor extension), for fewer outputs, or send fewer rows"
)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body exceeds {limit} bytes; send smaller batches", details={"limit": limit}
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"request body exceeds {limit} bytes; send smaller batches",
                details={"limit": limit},
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/health/live")
async def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
def server_ready(request: Request) -> JSONResponse:
    if database_ok(request):
        return JSONResponse({"ready": True})
    return JSONResponse({"error": "database unreachable", "ready": False}, status_code=503)


# HEAD too, as /livez and /readyz: probes often use it (kept out of the schema)
router.add_api_route("/health/live", server_live, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/health/ready", server_ready, methods=["HEAD"], include_in_schema=False)


@router.get("")
def server_metadata(_p: Principal = Depends(require("infer"))) -> dict[str, Any]:
    return {"name": "modelworks", "version": __version__, "extensions": EXTENSIONS}


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def _model_stats(svc: Services, name: str, version: int, version_id: int) -> dict[str, Any]:
    """One entry of Triton's statistics extension; zeros for a version not served yet."""
    s = svc.serving.stats.get(version_id) or ModelStats()
    inference = {k: _duration(getattr(s, k)) for k in STAT_KINDS}
    inference["cache_hit"] = inference["cache_miss"] = {"count": 0, "ns": 0}  # no cache
    return {
        "name": name,
        "version": str(version),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": inference,
        "batch_stats": [
            {"batch_size": size, **{k: _duration(getattr(b, k)) for k in COMPUTE}}
            for size, b in sorted(s.batches.items())
        ],
        "memory_usage": [],
    }


@router.get("/models/stats")
async def all_model_stats(
    request: Request, p: Principal = Depends(require("infer"))
) -> dict[str, Any]:
    """Triton's statistics of every version of every model the key can see."""
    svc = services(request)
    models = await to_thread.run_sync(svc.registry.list_models, p.project_id)
    return {
        "model_stats": [
            _model_stats(svc, m.name, v.version, v.id)
            for m in models
            if p.allows_model(m.name)
            for v in sorted(m.versions, key=lambda v: v.version)
        ]
    }


@router.get("/models/{model}/stats")
@router.get("/models/{model}/versions/{version}/stats")
async def model_stats(
    model: str,
    request: Request,
    version: str | None = None,
    p: Principal = Depends(require("infer")),
) -> dict[str, Any]:
    """One version's statistics, or, for a bare model name, every version's (as Triton)."""
    svc = services(request)
    t = await svc.serving.resolve_async(p, model, version)
    if version is not None or ":" in model:
        return {"model_stats": [_model_stats(svc, t.model, t.version, t.version_id)]}
    versions = await to_thread.run_sync(svc.registry.list_versions, p.project_id, t.model)
    return {
        "model_stats": [
            _model_stats(svc, t.model, v.version, v.id)
            for v in sorted(versions, key=lambda v: v.version)
        ]
    }


def _metadata(t: Target, versions: list[int]) -> dict[str, Any]:
    return {
        "name": t.model,
        "versions": [str(x) for x in versions],
        "platform": "onnxruntime_onnx" if t.format == "onnx" else f"modelworks_{t.format}",
        "inputs": t.signature.get("inputs", []),
        "outputs": t.signature.get("outputs", []),
    }


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
def model_metadata(
    model: str,
    request: Request,
    version: str | None = None,
    p: Principal = Depends(require("infer")),
) -> dict[str, Any]:
    svc = services(request)
    t = svc.serving.resolve(p, model, version)
    versions = [x.version for x in svc.registry.list_versions(p.project_id, t.model)]
    return _metadata(t, versions)


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(
    model: str,
    request: Request,
    version: str | None = None,
    p: Principal = Depends(require("infer")),
) -> Response:
    """200 `{"ready": true}`, or 503 with `ready: false` and the reason (see `readiness`)."""
    svc = services(request)
    t = await svc.serving.resolve_async(p, model, version)
    state, reason = await readiness(svc, t)
    if state != "ready":
        return JSONResponse({"name": t.model, "ready": False, "error": reason}, status_code=503)
    return JSONResponse({"name": t.model, "ready": True})


async def readiness(svc: Services, t: Target) -> tuple[str, str]:
    """Whether version `t` serves, from the pool's real state, for every protocol's readiness
    or status route: ('ready', its warm-up note), ('loading', why) while it is being converted
    for serving, or ('failed', why) when its runtime cannot load it (a damaged artifact, a
    failed export). Loads (and warms up) the version if needed, so ready means the next call
    will not wait, and a version never loaded is not reported ready on trust."""
    try:
        await svc.serving.load(t)
    except ModelworksError as exc:
        if t.status == "converting":
            return "loading", exc.message
        state, reason = svc.pool.status(t)
        return "failed", reason if state == "failed" and reason else exc.message
    return "ready", svc.pool.status(t)[1]


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(
    model: str,
    request: Request,
    version: str | None = None,
    p: Principal = Depends(require("infer")),
) -> Response:
    svc: Services = services(request)
    t = await svc.serving.resolve_async(p, model, version)
    body = await read_body(request, svc.settings.max_request_bytes)
    req, feeds = decode_request(request, body, svc.settings.max_tensor_elements)
    check_against_signature(t.signature, feeds)
    wanted, binary = requested_outputs(req, [o["name"] for o in t.signature.get("outputs", [])])
    results = (await svc.serving.predict(t, feeds)).outputs
    budget = AnswerBudget(svc.settings.max_response_bytes, ANSWER_ADVICE)
    head: dict[str, Any] = {"model_name": t.model, "model_version": str(t.version)}
    if isinstance(req.get("id"), str):
        head["id"] = req["id"]
    outputs = []
    blobs = []
    for name in wanted:
        arr = results[name]
        out: dict[str, Any] = {"name": name, "datatype": _datatype(arr), "shape": list(arr.shape)}
        if binary[name] or arr.dtype == np.float16:  # FP16 has no exact JSON form here
            budget.take(binary_size(arr))
            blob = to_binary(arr)
            out["datatype"] = datatype_of(arr)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = budget.array(arr.reshape(-1), flat_json(name))
        outputs.append(out)
    head["outputs"] = outputs
    header = budget.body(head, tail=sum(map(len, blobs)))
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def decode_request(
    request: Request, body: bytes, max_elements: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split JSON header and binary tail (if any) and decode every input tensor."""
    header_len = request.headers.get("inference-header-content-length")
    if header_len is not None:
        if not header_len.strip().isdigit():
            raise BadRequest("Inference-Header-Content-Length must be a non-negative integer")
        n = int(header_len)
        if n == 0:
            raise BadRequest(
                "raw binary requests (Inference-Header-Content-Length: 0) are not "
                "supported; send a JSON header before the binary data"
            )
        if n > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {n} but the body has only {len(body)} bytes"
            )
        head, tail = body[:n], memoryview(body)[n:]
    else:
        head, tail = body, memoryview(b"")
    req = loads(head)
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise BadRequest("the request needs a non-empty 'inputs' list")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for item in req["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each input needs a 'name', 'shape', 'datatype' and 'data'")
        name = item["name"]
        if name in feeds:
            raise InvalidInput(f"input {name!r} is given twice")
        params = item.get("parameters") if isinstance(item.get("parameters"), dict) else {}
        size = params.get("binary_data_size") if params else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(tail):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(tail) - offset} bytes left)"
                )
            blob = bytes(tail[offset : offset + size])
            offset += size
            feeds[name] = from_binary(
                name, item.get("datatype"), item.get("shape"), blob, max_elements
            )
        else:
            feeds[name] = from_json(
                name, item.get("datatype"), item.get("shape"), item.get("data"), max_elements
            )
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} bytes of binary data follow the last input")
    return req, feeds


def requested_outputs(req: dict[str, Any], known: list[str]) -> tuple[list[str], dict[str, bool]]:
    """Which outputs to return, and which of them as binary: each named output once (a name
    repeated would repeat its data in the answer), at most as many as the model has."""
    params = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
    default_binary = bool(params.get("binary_data_output", False)) if params else False
    requested = req.get("outputs")
    if requested is None or requested == []:
        return known, dict.fromkeys(known, default_binary)
    if not isinstance(requested, list):
        raise BadRequest(
            f"'outputs' must be a list of objects {{\"name\": ...}}; the model's outputs are "
            f"{known}"
        )
    if len(requested) > len(known):
        raise InvalidInput(
            f"'outputs' names {len(requested)} outputs but the model has {len(known)}; name "
            f"each output at most once (the model's outputs are {known})"
        )
    binary: dict[str, bool] = {}
    for out in requested:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in known:
            raise InvalidInput(f"unknown output {name!r}; the model's outputs are {known}")
        if name in binary:
            raise InvalidInput(
                f"output {name!r} is requested twice; name each output once "
                f"(the model's outputs are {known})"
            )
        oparams = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
        binary[str(name)] = (
            bool(oparams.get("binary_data", default_binary)) if oparams else default_binary
        )
    return list(binary), binary


def _datatype(arr: Any) -> str:
    dt = datatype_of(arr)
    return "FP32" if dt == "FP16" else dt
