"""What each task takes and gives, apart from any protocol: the decode from task values (texts,
rows of numbers) to a model's feeds, and the encode from its outputs to task values
(embeddings, class scores with their labels, regression values).

A protocol handler reads its wire format into task values, calls these, and writes the answer
in its wire format; a new protocol maps onto the tasks here rather than re-implementing them.
Errors name the task and the model, not a protocol: a handler that wants to add its own advice
(TF-Serving's "use :predict") catches and re-raises.

    embeddings              texts -> {"text": [n]}   -> [n, d] float32 (`embeddings`)
    text-classification     texts -> {"text": [n]}   -> [n, K] scores, labels (`class_scores`)
    tabular-classification  rows  -> {input: [n, w]} -> [n, K] scores, labels
    tabular-regression      rows  -> {input: [n, w]} -> [n] values (`regression_values`)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelworks.errors import InvalidInput, TaskMismatch
from modelworks.serving.target import TEXT_TASKS, Target
from modelworks.tensors import JsonRules, element_count, json_array, ragged

CLASSIFY_TASKS = (
    "tabular-classification",
    "text-classification",
    "image-classification",
    "sequence-classification",
)
REGRESS_TASKS = ("tabular-regression", "sequence-regression")
FLOAT_TYPES = ("FP16", "FP32", "FP64")
SCORE_NAMES = ("probabilities", "probability", "scores")
LOGITS = "_logits"  # text classifiers' raw scores, beside their softmax `probabilities`


def describe_outputs(t: Target) -> str:
    return ", ".join(f"{o['name']}: {o['datatype']} {o['shape']}" for o in _outputs(t))


def describe_inputs(t: Target) -> str:
    return ", ".join(
        f"{i['name']}: {i['datatype']} {i['shape']}" for i in t.signature.get("inputs", [])
    )


def _outputs(t: Target) -> list[dict[str, Any]]:
    return list(t.signature.get("outputs", []))


# text ---------------------------------------------------------------------------------------
def text_feeds(texts: list[str]) -> dict[str, np.ndarray]:
    """The feeds of a text model (embeddings, text-classification): one string per row."""
    return {"text": np.array(texts, dtype=np.object_)}


def check_text_task(t: Target, tasks: tuple[str, ...] = TEXT_TASKS) -> None:
    if t.task not in tasks:
        raise InvalidInput(
            f"model {t.model!r} has task {t.task!r}, not {' or '.join(map(repr, tasks))}"
        )


# embeddings -------------------------------------------------------------------------------
def embedding_size(t: Target) -> int:
    """The number of dimensions an embeddings model gives."""
    return int(t.signature.get("dimensions") or _outputs(t)[0]["shape"][-1])


def check_dimensions(t: Target, dims: Any) -> int | None:
    """`dims` as a request asks for it (None: all of them), checked against the model."""
    full = embedding_size(t)
    if dims is None:
        return None
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= full:
        raise InvalidInput(
            f"'dimensions' must be an integer from 1 to {full} for model {t.model!r}"
        )
    return dims


def embeddings(outputs: dict[str, np.ndarray], dims: int | None = None) -> np.ndarray:
    """[n, d] little-endian float32 embeddings, cut to their first `dims` dimensions and
    renormalised when asked (as OpenAI's `dimensions` does)."""
    emb = outputs["embedding"]
    if dims is not None and dims < emb.shape[1]:
        emb = truncate(emb, dims)
    return np.ascontiguousarray(emb, dtype="<f4")


def truncate(emb: np.ndarray, dims: int) -> np.ndarray:
    """Keep the first `dims` dimensions and renormalise each row."""
    cut = emb[:, :dims]
    return np.asarray(cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12))


# classification ---------------------------------------------------------------------------
def score_output(t: Target) -> str:
    """The output that holds a classifier's scores: its only float output of shape [-1, K],
    or among several, the one named like scores (`probabilities`, `probability`, `scores`)."""
    found = [
        o
        for o in _outputs(t)
        if o.get("datatype") in FLOAT_TYPES
        and isinstance(o.get("shape"), list)
        and len(o["shape"]) == 2
    ]
    if len(found) > 1:
        found = [o for o in found if o.get("name") in SCORE_NAMES][:1]
    if len(found) != 1:
        raise TaskMismatch(
            f"model {t.model!r} has no single float score output of shape [-1, K] "
            f"(its outputs are {describe_outputs(t)})"
        )
    return str(found[0]["name"])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-np.logaddexp(0.0, -z)))  # no overflow for large |z|


# transformers' ClassificationFunction, from what the classifier gives: a probability over
# labels (the score output), one per label from its logits, or the logits themselves
SCORING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "softmax": lambda scores: scores,
    "sigmoid": lambda logits: sigmoid(logits.astype(np.float64)),
    "none": lambda logits: logits,
}


def class_scores(
    t: Target, outputs: dict[str, np.ndarray], batch: int, function: str = "softmax"
) -> np.ndarray:
    """[batch, K] scores of a classifier: its score output, or with `function` `sigmoid` or
    `none`, computed from its logits (text classifiers give them as `_logits`)."""
    if function == "softmax":
        name = score_output(t)
    elif LOGITS in outputs:
        name = LOGITS
    else:
        raise InvalidInput(
            f"model {t.model!r} gives probabilities, not logits: only 'softmax' scoring applies"
        )
    return SCORING[function](rows_of(t, name, outputs[name], batch))


def class_labels(t: Target, k: int) -> list[str] | None:
    """The labels of a classifier's K scores, in order (the signature's `labels`); None when
    the model names none (each protocol has its own default names)."""
    labels = t.signature.get("labels")
    if isinstance(labels, list) and len(labels) == k:
        return [str(x) for x in labels]
    return None


def top_labels(row: np.ndarray, labels: list[str], k: int | None) -> list[dict[str, Any]]:
    """One row's labels with their scores, best first (stable), at most `k`."""
    order = np.argsort(-row, kind="stable")[:k]
    return [{"label": labels[i], "score": float(row[i])} for i in order]


# regression -------------------------------------------------------------------------------
def regression_output(t: Target) -> str:
    """The output of a regressor: exactly one numeric output with one value per row."""
    outs = _outputs(t)
    spec = outs[0] if len(outs) == 1 else None
    shape = spec.get("shape") if spec else None
    if (
        spec is None
        or spec.get("datatype") in ("BYTES", "BOOL")
        or (
            isinstance(shape, list)
            and (not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] not in (1, -1)))
        )
    ):
        raise TaskMismatch(
            f"model {t.model!r} has no single numeric output with one value per row "
            f"(its outputs are {describe_outputs(t)})"
        )
    return str(spec["name"])


def regression_values(t: Target, outputs: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """[batch] predicted values of a regressor."""
    name = regression_output(t)
    values = rows_of(t, name, outputs[name], batch)
    if values.shape[1] != 1:
        raise TaskMismatch(
            f"model {t.model!r} returned {values.shape[1]} values per row in {name!r}, not one"
        )
    return values[:, 0]


def rows_of(t: Target, name: str, arr: np.ndarray, batch: int) -> np.ndarray:
    """Output `name` as [batch, -1], float16 widened to float32."""
    if arr.ndim == 0 or arr.shape[0] != batch:
        raise TaskMismatch(
            f"model {t.model!r} returned {name!r} with shape {list(arr.shape)}, not one row "
            f"per input row ({batch})"
        )
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    return arr.reshape(batch, -1)


# tabular rows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RowInput:
    """The single batched input that rows of a tabular model feed."""

    name: str
    datatype: str | None
    row_shape: list[int]
    width: int | None  # values per row; None when the row's one dimension is free


def row_input(t: Target) -> RowInput:
    """The input rows feed: the model's only input, with a batch dimension and rows of a known
    size (or one free dimension)."""
    inputs = t.signature.get("inputs", [])
    shape = inputs[0].get("shape") if len(inputs) == 1 else None
    if not isinstance(shape, list) or not shape:
        raise TaskMismatch(
            f"model {t.model!r} has inputs {describe_inputs(t)}; rows feed one batched input, "
            "so it needs a single input with a batch dimension"
        )
    spec = inputs[0]
    name = str(spec["name"])
    row_shape = [int(d) for d in shape[1:]]
    width = math.prod(row_shape) if all(d >= 0 for d in row_shape) else None
    if width is None and len(row_shape) != 1:
        raise TaskMismatch(f"input {name!r} has shape {shape} with unknown row dimensions")
    return RowInput(name, spec.get("datatype"), row_shape, width)


def row_feeds(
    spec: RowInput,
    rows: list[list[Any]],
    limit: int,
    rules: JsonRules,
    hint: str = "",
    what: str = "row",
) -> dict[str, np.ndarray]:
    """The feeds of rows of values (each row the input's values in order, as JSON numbers or
    strings under `rules`): one [n, *row_shape] tensor. `hint` ends the errors (how the
    caller's format spells a row), which call a row `what`."""
    flat: list[Any] = []
    row_len: int | None = None
    for i, row in enumerate(rows):
        if spec.width is not None and len(row) != spec.width:
            raise InvalidInput(
                f"{what} {i} has {len(row)} values; input {spec.name!r} needs {spec.width} "
                f"per row{': ' + hint if hint else ''}"
            )
        if row_len is not None and len(row) != row_len:
            raise ragged(spec.name)
        row_len = len(row)
        flat.extend(row)
        element_count(spec.name, [len(flat)], limit)
    full = [len(rows), *(spec.row_shape if spec.width is not None else [row_len or 0])]
    element_count(spec.name, full, limit)
    return {spec.name: json_array(spec.name, spec.datatype, flat, full, rules)}


# named columns ----------------------------------------------------------------------------
def column_inputs(t: Target) -> list[dict[str, Any]] | None:
    """The inputs of a model that takes one input per column (each of shape [-1], as the
    tabular recipes export them), else None."""
    inputs = list(t.signature.get("inputs", []))
    if inputs and all(isinstance(i.get("shape"), list) and len(i["shape"]) == 1 for i in inputs):
        return inputs
    return None


def column_feeds(
    inputs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    limit: int,
    rules: JsonRules,
    what: str = "row",
) -> dict[str, np.ndarray]:
    """The feeds of rows given as `{column: value}` for a model with one input per column:
    one [n] tensor per column. A missing or unknown column is an error naming the columns."""
    names = [str(i["name"]) for i in inputs]
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, row in enumerate(rows):
        missing = [n for n in names if n not in row]
        unknown = sorted(k for k in row if k not in columns)
        if missing or unknown:
            problem = f"lacks {missing[:6]}" if missing else f"has unknown columns {unknown[:6]}"
            raise InvalidInput(f"{what} {i} {problem}; the model's columns are {names}")
        for n in names:
            value = row[n]
            if isinstance(value, list):
                if len(value) != 1 or isinstance(value[0], list):
                    raise InvalidInput(f"{what} {i}: column {n!r} must be one value")
                value = value[0]
            columns[n].append(value)
        element_count(names[0], [(i + 1) * len(names)], limit)
    return {
        str(spec["name"]): json_array(
            str(spec["name"]), spec.get("datatype"), columns[str(spec["name"])], [len(rows)], rules
        )
        for spec in inputs
    }
