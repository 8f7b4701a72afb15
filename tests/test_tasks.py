"""serving/tasks.py, the per-task decode and encode every protocol maps onto: checked on its
own, with no protocol and no HTTP."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from modelworks.errors import InvalidInput, PayloadTooLarge, TaskMismatch
from modelworks.serving import tasks
from modelworks.serving.target import Target
from modelworks.tensors import JsonRules


def target(task: str, inputs: list[Any] | None = None, outputs: list[Any] | None = None,
           **signature: Any) -> Target:  # fmt: skip
    sig = {"inputs": inputs or [], "outputs": outputs or [], **signature}
    return Target(1, "m", task, 1, 1, "onnx", "", "", sig, {}, "ready", "", 0)


def spec(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def test_the_module_is_protocol_free() -> None:
    code = (
        "import sys, modelworks.serving.tasks; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('modelworks.api')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_texts_and_dimensions() -> None:
    feeds = tasks.text_feeds(["a", "b"])
    assert feeds["text"].dtype == object and list(feeds["text"]) == ["a", "b"]
    t = target("embeddings", outputs=[spec("embedding", "FP32", [-1, 8])])
    assert tasks.check_dimensions(t, None) is None and tasks.check_dimensions(t, 4) == 4
    for bad in (0, 9, True, 2.0):
        with pytest.raises(InvalidInput, match="from 1 to 8 for model 'm'"):
            tasks.check_dimensions(t, bad)
    assert tasks.embedding_size(target("embeddings", dimensions=384)) == 384


def test_embeddings_are_cut_and_renormalised() -> None:
    emb = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], dtype=np.float64)
    whole = tasks.embeddings({"embedding": emb})
    assert whole.dtype == np.dtype("<f4") and whole.flags.c_contiguous
    cut = tasks.embeddings({"embedding": emb}, 2)
    assert cut.shape == (2, 2) and np.allclose(cut[0], [0.6, 0.8])
    assert np.all(np.isfinite(cut[1]))  # a zero row does not divide by zero


def test_score_output_and_scoring() -> None:
    t = target(
        "text-classification",
        outputs=[spec("label", "INT64", [-1]), spec("probabilities", "FP32", [-1, 2]),
                 spec("other", "FP32", [-1, 2])],
    )  # fmt: skip
    assert tasks.score_output(t) == "probabilities"
    probs = np.array([[0.2, 0.8]], dtype=np.float16)
    logits = np.array([[-1000.0, 1000.0]], dtype=np.float32)
    out = {"probabilities": probs, "_logits": logits}
    soft = tasks.class_scores(t, out, 1)
    assert soft.dtype == np.float32  # float16 widened
    assert np.allclose(tasks.class_scores(t, out, 1, "sigmoid"), [[0.0, 1.0]])
    assert np.array_equal(tasks.class_scores(t, out, 1, "none"), logits)
    with pytest.raises(InvalidInput, match="only 'softmax'"):
        tasks.class_scores(t, {"probabilities": probs}, 1, "sigmoid")
    with pytest.raises(TaskMismatch, match="not one row per input row"):
        tasks.class_scores(t, out, 3)
    none = target("tabular-classification", outputs=[spec("y", "INT64", [-1])])
    with pytest.raises(TaskMismatch) as info:
        tasks.score_output(none)
    assert info.value.status == 400 and info.value.code == "task_mismatch"


def test_labels_and_top_labels() -> None:
    t = target("text-classification", labels=["a", "b", "c"])
    assert tasks.class_labels(t, 3) == ["a", "b", "c"] and tasks.class_labels(t, 2) is None
    top = tasks.top_labels(np.array([0.2, 0.5, 0.5]), ["a", "b", "c"], 2)
    assert [x["label"] for x in top] == ["b", "c"]  # ties keep label order


@pytest.mark.parametrize(
    ("outputs", "ok"),
    [
        ([spec("y", "FP32", [-1, 1])], True),
        ([spec("y", "FP32", [-1])], True),
        ([spec("y", "FP32", [-1, 2])], False),
        ([spec("y", "BYTES", [-1])], False),
        ([spec("y", "FP32", [-1]), spec("z", "FP32", [-1])], False),
    ],
)
def test_regression(outputs: list[Any], ok: bool) -> None:
    t = target("tabular-regression", outputs=outputs)
    if not ok:
        with pytest.raises(TaskMismatch):
            tasks.regression_output(t)
        return
    values = tasks.regression_values(t, {"y": np.array([[1.0], [2.0]], dtype=np.float32)}, 2)
    assert values.tolist() == [1.0, 2.0]


def test_rows_feed_one_batched_input() -> None:
    t = target("tabular-classification", inputs=[spec("x", "FP32", [-1, 4])])
    row = tasks.row_input(t)
    feeds = tasks.row_feeds(row, [[1, 2, 3, 4], [5, 6, 7, 8]], 1000, JsonRules())
    assert feeds["x"].shape == (2, 4) and feeds["x"].dtype == np.float32
    with pytest.raises(
        InvalidInput, match="example 1 has 3 values; input 'x' needs 4 per row: hint"
    ):
        tasks.row_feeds(row, [[1, 2, 3, 4], [1, 2, 3]], 1000, JsonRules(), "hint", "example")
    with pytest.raises(PayloadTooLarge):
        tasks.row_feeds(row, [[1, 2, 3, 4]] * 10, 8, JsonRules())  # past the element limit
    free = tasks.row_input(target("t", inputs=[spec("x", "FP32", [-1, -1])]))
    assert tasks.row_feeds(free, [[1, 2], [3, 4]], 100, JsonRules())["x"].shape == (2, 2)
    with pytest.raises(InvalidInput):
        tasks.row_feeds(free, [[1, 2], [3]], 100, JsonRules())
    for bad in ([spec("a", "FP32", [-1]), spec("b", "FP32", [-1])], [spec("a", "FP32", [])]):
        with pytest.raises(TaskMismatch):
            tasks.row_input(target("t", inputs=bad))


def test_named_columns() -> None:
    inputs = [spec("line", "BYTES", [-1]), spec("temp", "FP32", [-1])]
    assert tasks.column_inputs(target("t", inputs=inputs)) == inputs
    assert tasks.column_inputs(target("t", inputs=[spec("x", "FP32", [-1, 4])])) is None
    feeds = tasks.column_feeds(
        inputs, [{"line": "A", "temp": 1.5}, {"line": "B", "temp": [2.0]}], 100, JsonRules()
    )
    assert feeds["temp"].tolist() == [1.5, 2.0] and list(feeds["line"]) == [b"A", b"B"]
    with pytest.raises(InvalidInput, match=r"row 0 lacks \['temp'\]"):
        tasks.column_feeds(inputs, [{"line": "A"}], 100, JsonRules())
    with pytest.raises(InvalidInput, match="unknown columns"):
        tasks.column_feeds(inputs, [{"line": "A", "temp": 1, "x": 2}], 100, JsonRules())
