"""Open Inference Protocol v2 over REST (KServe / Triton), JSON tensors.

Errors here are `{"error": "<message>"}` and success is exactly 200, as tritonclient expects.
A model name may carry a selector: `name` (alias `production`, else the latest version),
`name:3` (version 3) or `name:staging` (alias); `/versions/{v}` takes a number or an alias.
"""

from __future__ import annotations

import json
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelworks import __version__
from modelworks.api.auth import require
from modelworks.api.health import database_ok
from modelworks.api.services import Services, services
from modelworks.auth.keys import Principal
from modelworks.db.tables import Model, ModelVersion
from modelworks.errors import BadRequest, InvalidInput, ModelworksError, PayloadTooLarge
from modelworks.registry import parse_model_ref
from modelworks.tensors import check_against_signature, from_json, to_json

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
EXTENSIONS: list[str] = []


def _resolve(
    request: Request, p: Principal, model: str, version: str | None
) -> tuple[Model, ModelVersion]:
    name, selector = parse_model_ref(model)
    if version is not None:
        if selector is not None:
            raise BadRequest("give the version either in the model name or in /versions/, not both")
        selector = version
    return services(request).registry.resolve(p.project_id, name, selector)


def _reject_constant(token: str) -> Any:
    raise InvalidInput(f"{token} is not a valid JSON number; send finite numbers only")


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


@router.get("")
def server_metadata(_p: Principal = Depends(require("infer"))) -> dict[str, Any]:
    return {"name": "modelworks", "version": __version__, "extensions": EXTENSIONS}


def _metadata(m: Model, v: ModelVersion, versions: list[int]) -> dict[str, Any]:
    sig = v.signature
    return {
        "name": m.name,
        "versions": [str(x) for x in versions],
        "platform": f"onnxruntime_{v.format}" if v.format == "onnx" else v.format,
        "inputs": sig.get("inputs", []),
        "outputs": sig.get("outputs", []),
    }


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
def model_metadata(
    model: str,
    request: Request,
    version: str | None = None,
    p: Principal = Depends(require("infer")),
) -> dict[str, Any]:
    m, v = _resolve(request, p, model, version)
    versions = [x.version for x in services(request).registry.list_versions(p.project_id, m.name)]
    return _metadata(m, v, versions)


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
def model_ready(
    model: str,
    request: Request,
    version: str | None = None,
    p: Principal = Depends(require("infer")),
) -> Response:
    svc = services(request)
    m, v = _resolve(request, p, model, version)
    try:
        svc.pool.get(v.digest, v.format, v.signature)
    except ModelworksError as exc:
        return JSONResponse({"name": m.name, "ready": False, "error": exc.message}, status_code=503)
    return JSONResponse({"name": m.name, "ready": True})


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(
    model: str,
    request: Request,
    version: str | None = None,
    p: Principal = Depends(require("infer")),
) -> Response:
    svc: Services = services(request)
    m, v = await to_thread.run_sync(_resolve, request, p, model, version)
    if any(k.lower() == "inference-header-content-length" for k in request.headers):
        raise BadRequest(
            "the binary tensor extension is not supported yet; send JSON tensors "
            "(tritonclient: set_data_from_numpy(x, binary_data=False) and "
            "InferRequestedOutput(name, binary_data=False))"
        )
    body = await read_body(request, svc.settings.max_request_bytes)
    try:
        req = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise BadRequest("the request needs a non-empty 'inputs' list")
    feeds = {}
    for item in req["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each input needs a 'name', 'shape', 'datatype' and 'data'")
        name = item["name"]
        if name in feeds:
            raise InvalidInput(f"input {name!r} is given twice")
        feeds[name] = from_json(
            name,
            item.get("datatype"),
            item.get("shape"),
            item.get("data"),
            svc.settings.max_tensor_elements,
        )
    check_against_signature(v.signature, feeds)
    known = [o["name"] for o in v.signature.get("outputs", [])]
    wanted: list[str] | None = None
    if isinstance(req.get("outputs"), list) and req["outputs"]:
        wanted = []
        for out in req["outputs"]:
            oname = out.get("name") if isinstance(out, dict) else None
            if oname not in known:
                raise InvalidInput(f"unknown output {oname!r}; the model's outputs are {known}")
            wanted.append(str(oname))
    runtime = await to_thread.run_sync(svc.pool.get, v.digest, v.format, v.signature)
    try:
        results = await to_thread.run_sync(lambda: runtime.predict(feeds, wanted))
    except Exception as exc:
        raise InvalidInput(
            f"the model could not run on this input ({type(exc).__name__}); "
            "check shapes and value ranges against the model's signature"
        ) from None
    response: dict[str, Any] = {"model_name": m.name, "model_version": str(v.version)}
    if isinstance(req.get("id"), str):
        response["id"] = req["id"]
    response["outputs"] = [
        {"name": n, "datatype": _datatype(arr), "shape": list(arr.shape), "data": to_json(arr)}
        for n, arr in results.items()
    ]
    return JSONResponse(response)


def _datatype(arr: Any) -> str:
    from modelworks.tensors import datatype_of

    dt = datatype_of(arr)
    return "FP32" if dt == "FP16" else dt
