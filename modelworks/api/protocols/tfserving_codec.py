"""TensorFlow Serving JSON codec: turns the bodies of `:predict`, `:classify` and `:regress`
into numpy feeds for a model's inputs, and the model's outputs back into TF-Serving response
bodies. Pure functions of the body, the resolved `Target` and the outputs; the routes in
`tfserving` resolve the model, read the body, check `signature_name` and run the model.

Input tensors are decoded by the one JSON decoder in `modelworks.tensors` (its rules are in
that docstring), with TF-Serving's wire format, `TF_JSON`: floats may be `NaN`, `Infinity` and
`-Infinity` tokens both ways, as in TensorFlow Serving (a missing sensor value is data; a
model's output can overflow); a finite number too big for the input's dtype (1e39 for
DT_FLOAT) is still refused, as TF-Serving refuses lossy decimals. Binary strings are
`{"b64": "..."}` both ways: BYTES outputs that are not UTF-8 (or whose name ends in `_bytes`,
as in TF-Serving) come back in that form. BYTES inputs reach the model as the bytes sent, and
must be UTF-8 text.

`:predict` takes the row format (`{"instances": [...]}` -> `{"predictions": [...]}`; with one
input each instance is that input's row, with several each is an object `{input: row}`) or the
columnar format (`{"inputs": tensor | {input: tensor}}` -> `{"outputs": tensor | {output: ...}}`).

`:regress` serves `tabular-regression` models with one output of one value per row
(`{"results": [v, ...]}`); `:classify` serves `tabular-classification` (and
`text-classification`) models with one float score output `[-1, K]`
(`{"results": [[[label, score], ...], ...]}`; the labels are the signature's `labels`, else
"0".."K-1", or "" for a single score column, as TF-Serving answers for a bare score).
Each example (after `context` features are added to it; a feature may not be in both) feeds one
row of the model's single input, in one of two forms:

    {"f0": v0, "f1": v1, ..., "f{n-1}": v(n-1)}    the row's n columns in order (each value a
                                                   number, or a one-element list)
    {"<input name>": row}                          the whole row, as a :predict instance

e.g. for input `x` FP32 [-1, 4]: `{"f0": 1, "f1": 2, "f2": 3, "f3": 4}` or `{"x": [1, 2, 3, 4]}`.
Anything else, and any other task, is a 400 that says to use `:predict`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson

from modelworks.api.responses import AnswerBudget, Encoder
from modelworks.errors import BadRequest, InvalidInput, TaskMismatch
from modelworks.serving.target import Target
from modelworks.serving.tasks import (
    CLASSIFY_TASKS,
    REGRESS_TASKS,
    class_labels,
    class_scores,
    column_feeds,
    column_inputs,
    describe_inputs,
    regression_output,
    regression_values,
    row_feeds,
    row_input,
    score_output,
)
from modelworks.tensors import (
    JsonRules,
    element_count,
    flatten_as,
    from_nested_json,
    is_b64,
    json_shape,
    ragged,
)

TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "BF16": "DT_BFLOAT16",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}
# TF-Serving's JSON: {"b64": ...} strings and NaN/Infinity tokens, DT_* names in messages
TF_JSON = JsonRules(b64_strings=True, non_finite=True, type_names=TF_DTYPES)
_FEATURE = re.compile(r"f(0|[1-9][0-9]*)")


# decoding -----------------------------------------------------------------------------------
def method(verb: str) -> str:
    return f"tensorflow/serving/{verb}"


def _specs(t: Target, names: list[str]) -> dict[str, dict[str, Any]]:
    specs = {i["name"]: i for i in t.signature.get("inputs", [])}
    for name in names:
        if name not in specs:
            raise InvalidInput(f"unknown input {name!r}; the model expects {describe_inputs(t)}")
    return specs


def predict_feeds(t: Target, req: dict[str, Any], limit: int) -> tuple[dict[str, np.ndarray], str]:
    if "instances" in req and "inputs" in req:
        raise BadRequest(
            "send either 'instances' (row format) or 'inputs' (columnar format), not both"
        )
    n_inputs = len(t.signature.get("inputs", []))
    if "instances" in req:
        instances = req["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list, one element per batch row")
        named = [isinstance(x, dict) and not is_b64(x) for x in instances]
        if not any(named):
            if n_inputs != 1:
                raise InvalidInput(
                    f"the model has {n_inputs} inputs ({describe_inputs(t)}); send each instance "
                    "as an object {input name: value}"
                )
            name = t.signature["inputs"][0]["name"]
            return {name: tensor(name, _specs(t, [name])[name], instances, limit)}, "rows"
        if not all(named):
            raise BadRequest("'instances' mixes objects and plain values; use one form")
        keys = list(instances[0])
        for i, inst in enumerate(instances):
            if set(inst) != set(keys):
                raise InvalidInput(
                    f"instance {i} has inputs {sorted(inst)} but instance 0 has {sorted(keys)}; "
                    "every instance needs the same inputs"
                )
        specs = _specs(t, keys)
        return {
            k: tensor(k, specs[k], [inst[k] for inst in instances], limit) for k in keys
        }, "rows"
    if "inputs" in req:
        inputs = req["inputs"]
        if isinstance(inputs, dict) and not is_b64(inputs):
            if not inputs:
                raise BadRequest("'inputs' is an empty object; name each input's tensor")
            specs = _specs(t, list(inputs))
            return {k: tensor(k, specs[k], v, limit) for k, v in inputs.items()}, "columns"
        if n_inputs != 1:
            raise InvalidInput(
                f"the model has {n_inputs} inputs ({describe_inputs(t)}); send 'inputs' as an "
                "object {input name: tensor}"
            )
        name = t.signature["inputs"][0]["name"]
        return {name: tensor(name, _specs(t, [name])[name], inputs, limit)}, "columns"
    raise BadRequest(
        "Missing 'instances' (row format) or 'inputs' (columnar format) in the request body"
    )


def tensor(name: str, spec: dict[str, Any], data: Any, limit: int) -> np.ndarray:
    """One input's tensor from its JSON (a `:predict` instance list or columnar value)."""
    return from_nested_json(name, spec.get("datatype"), data, limit, TF_JSON)


# classify / regress ---------------------------------------------------------------------------
@contextmanager
def _predict_instead(verb: str) -> Iterator[None]:
    """A model whose outputs or inputs the verb cannot use: say that :predict can."""
    try:
        yield
    except TaskMismatch as exc:
        raise TaskMismatch(f"{exc.message}; :{verb} cannot serve it, use :predict") from None


def check_task(t: Target, verb: str) -> None:
    task_list = CLASSIFY_TASKS if verb == "classify" else REGRESS_TASKS
    if t.task not in task_list:
        raise BadRequest(
            f"model {t.model!r} has task {t.task!r}, which does not support :{verb} "
            f"(it serves {' and '.join(task_list)} models); use :predict for this model"
        )
    with _predict_instead(verb):
        if verb == "classify":
            score_output(t)
        else:
            regression_output(t)


def example_feeds(t: Target, req: dict[str, Any], limit: int, verb: str) -> dict[str, np.ndarray]:
    """The feeds of `:classify` or `:regress` examples: one row of the model's input each,
    or, for a model with one input per column, one value of each input (`{column: value}`)."""
    columns = column_inputs(t)
    examples = req.get("examples")
    if not isinstance(examples, list) or not examples:
        raise BadRequest("'examples' must be a non-empty list of objects {feature: value}")
    context = req.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise BadRequest("'context' must be an object {feature: value}")
    if columns is not None and len(columns) > 1:
        named = [_with_context(example, context, i) for i, example in enumerate(examples)]
        return column_feeds(columns, named, limit, TF_JSON, what="example")
    with _predict_instead(verb):
        spec = row_input(t)
    name, width = spec.name, spec.width
    hint = (
        f"send each example as {{'f0': .., ..., 'f{width - 1}': ..}} (the input's {width} "
        f"columns in order) or as {{{name!r}: row}}"
        if width is not None
        else f"send each example as {{'f0': .., 'f1': .., ...}} or as {{{name!r}: row}}"
    )
    rows = [
        _example_row(name, _with_context(example, context, i), i, limit, hint)
        for i, example in enumerate(examples)
    ]
    return row_feeds(spec, rows, limit, TF_JSON, hint, what="example")


def _with_context(example: Any, context: dict[str, Any], i: int) -> dict[str, Any]:
    if not isinstance(example, dict):
        raise BadRequest(f"example {i} is not an object {{feature: value}}")
    both = sorted(set(example) & set(context))
    if both:
        raise InvalidInput(
            f"feature {both[0]!r} is in both 'context' and example {i}; give it once"
        )
    return {**context, **example}


def _example_row(name: str, features: dict[str, Any], i: int, limit: int, hint: str) -> list[Any]:
    if set(features) == {name}:
        value = features[name]
        shape = json_shape(value)
        element_count(name, shape, limit)
        return flatten_as(value, shape, lambda: ragged(name))
    if features and all(isinstance(k, str) and _FEATURE.fullmatch(k) for k in features):
        n = len(features)
        if set(features) != {f"f{j}" for j in range(n)}:
            raise InvalidInput(
                f"example {i} has features {sorted(features, key=lambda k: int(k[1:]))}; "
                f"feature names must run f0, f1, ... without gaps: {hint}"
            )
        row = []
        for j in range(n):
            value = features[f"f{j}"]
            if isinstance(value, list):
                if len(value) != 1 or isinstance(value[0], list):
                    raise InvalidInput(
                        f"example {i}: feature 'f{j}' must be one value (or a one-element list)"
                    )
                value = value[0]
            row.append(value)
        return row
    shown = sorted(features)[:6]
    raise InvalidInput(f"example {i} has features {shown}, which do not map onto the model: {hint}")


def _regress_results(
    t: Target, outputs: dict[str, np.ndarray], batch: int, budget: AnswerBudget
) -> orjson.Fragment:
    with _predict_instead("regress"):
        values = regression_values(t, outputs, batch)
    return budget.array(values, tf_json(regression_output(t)))


def _classify_results(
    t: Target, outputs: dict[str, np.ndarray], batch: int, budget: AnswerBudget
) -> list[orjson.Fragment]:
    with _predict_instead("classify"):
        scores = class_scores(t, outputs, batch)
    k = scores.shape[1]
    # a bare score column is labelled "", as TF-Serving answers; else "0".."K-1"
    labels = class_labels(t, k) or ([""] if k == 1 else [str(j) for j in range(k)])
    return [budget.array(row, _labelled(labels)) for row in scores]


# encoding -----------------------------------------------------------------------------------
def tf_json(name: str) -> Encoder:
    """Nested lists as TF-Serving writes them (see `to_json`; NaN and Infinity as tokens)."""
    return lambda part, _start: _dumps(to_json(name, part))


def _labelled(labels: list[str]) -> Encoder:
    """`[[label, score], ...]` for a part of one row of scores."""
    return lambda part, start: _dumps(
        [[labels[start + j], s] for j, s in enumerate(to_json("", part))]
    )


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, separators=(",", ":")).encode()


def encode_call(
    verb: str,
    t: Target,
    shape: tuple[int, str],
    outputs: dict[str, np.ndarray],
    budget: AnswerBudget,
) -> bytes:
    """The answer's body, its arrays encoded a slice at a time against `budget`."""
    batch, form = shape
    if verb == "regress":
        body: dict[str, Any] = {"results": _regress_results(t, outputs, batch, budget)}
    elif verb == "classify":
        body = {"results": _classify_results(t, outputs, batch, budget)}
    else:
        names = _output_names(t, outputs)
        if form == "columns":
            if len(names) == 1:
                body = {"outputs": budget.array(outputs[names[0]], tf_json(names[0]))}
            else:
                body = {"outputs": {n: budget.array(outputs[n], tf_json(n)) for n in names}}
        else:
            for n in names:
                arr = outputs[n]
                if arr.ndim == 0 or arr.shape[0] != batch:
                    raise BadRequest(
                        f"output {n!r} has shape {list(arr.shape)}, not one row per instance "
                        f"({batch}); send the columnar format ('inputs') to read it"
                    )
            if len(names) == 1:
                body = {"predictions": budget.array(outputs[names[0]], tf_json(names[0]))}
            else:
                cols = {n: budget.rows(outputs[n], tf_json(n)) for n in names}
                body = {"predictions": [{n: cols[n][i] for n in names} for i in range(batch)]}
    return budget.body(body)


def _output_names(t: Target, outputs: dict[str, np.ndarray]) -> list[str]:
    declared = [o["name"] for o in t.signature.get("outputs", []) if o.get("name") in outputs]
    return declared + [n for n in outputs if n not in declared and not n.startswith("_")]


def _text(value: Any, as_b64: bool) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode()
    if not as_b64:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode("ascii")}


def to_json(name: str, arr: np.ndarray) -> Any:
    """Nested JSON for one output tensor; bytes become text or {"b64": ...}."""
    if arr.dtype.kind in "OSU":
        as_b64 = name.endswith("_bytes")
        out = np.empty(arr.shape, dtype=np.object_)
        flat = out.reshape(-1)
        for i, x in enumerate(arr.reshape(-1)):
            flat[i] = _text(x, as_b64)
        return out.tolist()
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    return arr.tolist()
