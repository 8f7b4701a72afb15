"""The serving engine every protocol adapter calls: model reference -> target -> batch.

Resolving `name[:selector]` hits the database, so results are cached for a short time and
dropped at once when this process changes the model (aliases, versions, deletes); other
replicas see a change within `RESOLVE_TTL_S`.

The cost of a request is bounded before work starts (SECURITY.md rule 11): an answer the
signature already makes larger than the response budget is refused before anything runs, the
request's rows are charged to the key's quotas, and only then is the model loaded and run.
What the signature cannot tell (shapes chosen by the input) is measured after the run, off
the event loop, against the same budget.

Loads run in threads, at most LOADS_PER_PROJECT at once per project; the requests waiting for
one hold no thread. So one tenant touching many cold models cannot take the threads every
other request needs (database lookups, synchronous routes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from anyio import CapacityLimiter, to_thread

from modelworks import memory
from modelworks.auth.keys import Principal
from modelworks.cache import RefreshingCache
from modelworks.context import note, reserve
from modelworks.errors import InvalidInput, ModelworksError, ServiceUnavailable
from modelworks.registry import Registry, parse_model_ref
from modelworks.serving.batcher import ModelStats, too_large
from modelworks.serving.pool import ModelPool
from modelworks.serving.target import Target, output_bytes

# ONNX Runtime's exception classes (onnxruntime.capi.onnxruntime_pybind11_state), by name
ORT_ERRORS = "onnxruntime.capi.onnxruntime_pybind11_state"
_NODE_FAILED = re.compile(
    r"Non-zero status code returned while running (?P<op>\w+) node\. Name:'(?P<node>[^']*)' "
    r"Status Message: (?P<why>.*)",
    re.S,
)
# a node failing because of the device or its provider, not the values it was given
_DEVICE_FAULTS = ("CUDA", "CUBLAS", "CUDNN", "cuBLAS", "cuDNN", "TensorRT", "MIGraphX", "ROCm")
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE_AT = re.compile(r"^\S+\.(?:h|hpp|cc|cpp|cu|cuh):\d+ \w+ ")  # "file.h:59 Function "
_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]*")  # no server path reaches a client
RUNTIME_TEXT_LIMIT = 300
RESOLVE_TTL_S = 2.0
REFRESH_S = 1.0  # how long others keep an expired entry while one caller refreshes it
LOADS_PER_PROJECT = 2


@dataclass
class Prediction:
    target: Target
    outputs: dict[str, np.ndarray]
    items: int
    tokens: int


class Engine:
    def __init__(self, registry: Registry, pool: ModelPool) -> None:
        self.registry = registry
        self.pool = pool
        # (project, name, selector) -> target; an expired entry is refreshed by one caller
        self._cache: RefreshingCache[tuple[int, str, str | None], Target] = RefreshingCache(
            REFRESH_S
        )
        registry.listeners.append(self.invalidate)
        # model version id -> its statistics (Triton's); they outlive an eviction and reload
        self.stats: dict[int, ModelStats] = {}
        self._load_slots: dict[int, CapacityLimiter] = {}  # by project id

    def invalidate(self, project_id: int, name: str) -> None:
        self._cache.drop(lambda k: k[0] == project_id and k[1] == name)

    def resolve(
        self, principal: Principal, ref: str, version: str | None = None, *, cached: bool = True
    ) -> Target:
        """`name`, `name:3`, `name:alias`, or a name plus a separate version/alias, as the key
        sees it: a model outside its allowlist is as missing as one that does not exist."""
        project_id = principal.project_id
        name, selector = parse_model_ref(ref)
        principal.check_model(name)
        if version is not None:
            if selector is not None:
                raise InvalidInput(
                    "give the version either in the model name or separately, not both"
                )
            selector = version
        key = (project_id, str(name), selector)
        hit = self._cache.get(key) if cached else None
        if hit is not None:
            note(model=f"{hit.model}:{hit.version}")
            return hit
        try:
            m, v = self.registry.resolve(project_id, name, selector)
        except Exception:
            self._cache.pop(key)
            raise
        onnx = (v.artifacts or {}).get("onnx") or {}
        target = Target(
            project_id=project_id,
            model=m.name,
            task=m.task,
            version=v.version,
            version_id=v.id,
            format=v.format,
            digest=onnx.get("digest", v.digest),
            source_digest=v.digest,
            signature=v.signature,
            serving=m.serving or {},
            status=v.status,
            status_reason=v.status_reason,
            size=int(onnx.get("size", v.size)),
        )
        self._cache.put(key, target, RESOLVE_TTL_S)
        note(model=f"{target.model}:{target.version}")
        return target

    async def resolve_async(
        self, principal: Principal, ref: str, version: str | None = None
    ) -> Target:
        # a plain name is its own cache key: look here, and only go to a thread on a miss
        plain = ":" not in ref and version is None
        hit = self._cache.get((principal.project_id, ref, None)) if plain else None
        if hit is not None:
            principal.check_model(hit.model)
            note(model=f"{hit.model}:{hit.version}")
            return hit
        lookup = partial(self.resolve, principal, ref, version, cached=not plain)
        return await to_thread.run_sync(lookup)

    async def load(self, target: Target) -> Any:
        if target.status == "converting":
            raise ServiceUnavailable(
                f"model {target.model}:{target.version} is being converted to ONNX for serving; "
                "retry in a few seconds",
                details={"retry_after": 5},
            )
        loaded = self.pool.loaded(target)
        if loaded is not None:  # the common case: no thread hop
            return loaded
        slots = self._load_slots.get(target.project_id)
        if slots is None:
            slots = self._load_slots[target.project_id] = CapacityLimiter(LOADS_PER_PROJECT)
        return await to_thread.run_sync(self.pool.get, target, limiter=slots)

    async def predict(
        self,
        target: Target,
        feeds: dict[str, np.ndarray],
        timeout_s: float | None = None,
        wanted: list[str] | None = None,
    ) -> Prediction:
        """Run `feeds`; `wanted` names the outputs the answer will hold (None: every one)."""
        note(model=f"{target.model}:{target.version}")
        first = next(iter(feeds.values()))
        items = int(first.shape[0]) if first.ndim else 1
        self._check_answer_size(target, items, wanted)
        await reserve(items=items)
        runtime = await self.load(target)
        stats = self.stats.get(target.version_id)
        if stats is None:
            stats = self.stats.setdefault(target.version_id, ModelStats())
        batcher = self.pool.batcher(target, runtime, stats)
        try:
            answer = await batcher.submit(feeds, timeout_s, wanted)
        except ModelworksError:
            raise
        except MemoryError:  # the process's data limit refused an allocation (as the app's)
            memory.trim()
            raise ServiceUnavailable(memory.refusal_message(), details={"retry_after": 1}) from None
        except Exception as exc:
            refusal = input_fault(exc)
            if refusal is None:  # ours or the runtime's: logged where 500s are answered
                _name_model(exc, target)
                raise
            raise refusal from None
        counted = answer.counts.get("tokens")
        tokens = int(counted.sum()) if counted is not None else 0
        note(items=items, tokens=tokens, compute_ms=answer.compute_ms)
        return Prediction(target, answer.outputs, items, tokens)

    def _check_answer_size(self, target: Target, rows: int, wanted: list[str] | None) -> None:
        """413 before anything runs when the outputs the signature fixes already exceed the
        response budget for this many rows; only the outputs asked for count."""
        limit = self.pool.max_response_bytes
        signature = target.signature
        if wanted is not None:
            names = set(wanted)
            signature = {"outputs": [s for s in signature.get("outputs", []) if s["name"] in names]}
        if limit > 0 and (size := output_bytes(signature, rows)) > limit:
            raise too_large(size, limit)


def input_fault(exc: BaseException) -> InvalidInput | None:
    """The 400 for a model run that failed because of its input; None when the fault is the
    server's or its runtime's (then the caller lets it become a logged 500).

    The rule (ONNX Runtime raises one class per status code):

    - `InvalidArgument`: the input is refused, by ONNX Runtime's own checks (datatype, rank,
      dimensions) or by a kernel reading its values (`Gather` of an index out of range,
      `Expand` to an impossible shape): 400.
    - `Fail` or `RuntimeException` raised while a node ran ("Non-zero status code returned
      while running Reshape node"): the graph was loaded and checked when its session was
      made, and the feeds passed the signature, so a kernel failing now fails on the shapes
      or values it was given (`Reshape` of a wrong element count, operands that do not
      broadcast, `Concat` of mismatched dimensions): 400, with the kernel's own words. Unless
      the message names the device (CUDA, cuDNN, TensorRT...): a device fault is ours.
    - Everything else is ours or the runtime's, 500: ONNX Runtime's `EPFail`, `EngineError`,
      `NotImplemented`, `DeviceReset`, `NoSuchFile`, `InvalidGraph`, ..., a `Fail` outside a
      node (the terminate flag, session state), and every other Python exception
      (`TypeError`, `KeyError`, `AttributeError`, `ValueError` from our code, numpy, a
      tokenizer or ONNX Runtime's Python layer: the input reached them only after passing
      the signature check, the text checks and the protocol's own).

    Text models refuse text their tokenizer cannot take before it runs (`as_text`: bytes that
    are not UTF-8, lone surrogates), as InvalidInput; the ONNX run after it follows the rule
    above. Memory refusals are 413 (the runtime's) or 503 (the engine's, for a MemoryError),
    never the input's fault either.
    """
    cls = type(exc)
    if cls.__module__ != ORT_ERRORS:
        return None
    text = str(exc)
    if cls.__name__ == "InvalidArgument":
        node = _NODE_FAILED.search(text)
        why = _runtime_words(node["why"] if node else text)
        where = f"; its {node['op']} node refused it" if node else ""
        return InvalidInput(
            f"the model cannot take this input{where}: {why}; "
            "check names, datatypes, shapes and value ranges against the model's signature"
        )
    node = _NODE_FAILED.search(text)
    if cls.__name__ not in ("Fail", "RuntimeException") or node is None:
        return None
    if any(device in text for device in _DEVICE_FAULTS):
        return None
    return InvalidInput(
        f"the model's {node['op']} node failed on this input: {_runtime_words(node['why'])}; "
        "check shapes and value ranges against the model's signature"
    )


def _runtime_words(text: str) -> str:
    """ONNX Runtime's message without its source locations and function signatures."""
    text = _ORT_PREFIX.split(text)[-1].strip()
    if " was false. " in text:  # ORT_ENFORCE: "file:line signature condition was false. why"
        text = text.rsplit(" was false. ", 1)[1]
    text = _PATH.sub("<path>", _SOURCE_AT.sub("", text)).strip()
    text = " ".join(text.split()).rstrip(". ")
    if len(text) > RUNTIME_TEXT_LIMIT:
        text = text[: RUNTIME_TEXT_LIMIT - 3] + "..."
    return text or "no reason given"


def _name_model(exc: BaseException, target: Target) -> None:
    """Name the model in the traceback the server logs (once: a batch's requests share it)."""
    line = f"while model {target.model}:{target.version} ran a batch"
    if line not in getattr(exc, "__notes__", ()):
        exc.add_note(line)
