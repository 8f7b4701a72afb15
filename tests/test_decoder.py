"""One JSON-to-tensor decoder for the OIP and TF-Serving: the same rules (the stricter of the
two where they used to differ), only the wire formats apart ({"b64": ...} strings and NaN /
Infinity tokens are TF-Serving's)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.api.protocols.tfserving_codec import tensor
from modelworks.client import Client
from modelworks.errors import InvalidInput, PayloadTooLarge
from modelworks.tensors import from_json
from tests.models import linear_onnx

LIMIT = 1000


def oip(datatype: str, shape: list[int], data: Any) -> np.ndarray:
    return from_json("x", datatype, shape, data, LIMIT)


def tf(datatype: str, data: Any) -> np.ndarray:
    return tensor("x", {"name": "x", "datatype": datatype, "shape": [-1]}, data, LIMIT)


def decoders(datatype: str, data: Any) -> dict[str, Callable[[], np.ndarray]]:
    """Each way one nested value reaches the decoder: OIP nested, OIP flat, TF-Serving."""
    shape = list(np.shape(data)) if data != [] else [0]
    flat = np.asarray(data, dtype=object).reshape(-1).tolist()
    return {
        "oip-nested": lambda: oip(datatype, shape, data),
        "oip-flat": lambda: oip(datatype, shape, flat),
        "tfserving": lambda: tf(datatype, data),
    }


VALID: dict[str, tuple[str, Any, np.ndarray]] = {
    "fp32": ("FP32", [[1, 2.5], [-3e38, 0.0]], np.array([[1, 2.5], [-3e38, 0]], np.float32)),
    "fp64-big": ("FP64", [[1e300, -1e-300]], np.array([[1e300, -1e-300]])),
    "int8-range": ("INT8", [[-128, 127]], np.array([[-128, 127]], np.int8)),
    "uint64-top": ("UINT64", [2**64 - 1, 0], np.array([2**64 - 1, 0], np.uint64)),
    "int64": ("INT64", [[[1], [2]], [[3], [4]]], np.arange(1, 5, dtype=np.int64).reshape(2, 2, 1)),
    "bool": ("BOOL", [[True, False]], np.array([[True, False]])),
    "bytes": ("BYTES", [["héllo", ""]], np.array([["héllo".encode(), b""]], dtype=object)),
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_every_protocol_decodes_the_same_array(case: str) -> None:
    datatype, data, expected = VALID[case]
    for how, decode in decoders(datatype, data).items():
        arr = decode()
        assert arr.dtype == expected.dtype, (how, arr.dtype)
        assert arr.shape == expected.shape, how
        assert arr.tolist() == expected.tolist(), how


REFUSED: dict[str, tuple[str, Any, str]] = {
    # OIP used to truncate these to 1 and -2
    "fraction-for-int": ("INT64", [[1.5, 2]], "element 0 is 1.5; INT64 values must be integers"),
    "exponent-for-int": ("INT32", [[1e3]], "INT32 values must be integers"),
    "int-past-range": ("UINT8", [[1, 300]], "300 does not fit UINT8"),
    "negative-unsigned": ("UINT32", [[-1]], "-1 does not fit UINT32"),
    "int-past-int64": ("INT64", [[2**63]], f"{2**63} does not fit INT64"),
    "float-past-fp32": ("FP32", [[1e39]], "1e+39 does not fit FP32"),
    "float-past-fp16": ("FP16", [[70000.0]], "does not fit FP16"),
    "int-past-float64": ("FP64", [[10**400]], "does not fit FP64"),
    "bool-as-number": ("FP32", [[True, 1.0]], "element 0 is true; FP32 values must be numbers"),
    "number-as-bool": ("BOOL", [[1, 0]], "element 0 is 1; BOOL values must be true or false"),
    "string-as-number": ("FP32", [["1.0"]], 'the string "1.0"; FP32 values must be numbers'),
    "null-element": ("INT64", [[None]], "element 0 is null"),
    "number-as-bytes": ("BYTES", [[3]], "element 0 is 3; BYTES values must be strings"),
    "lone-surrogate": ("BYTES", [["ok", "\ud800"]], "BYTES element 1 of input 'x' is not valid"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_every_protocol_refuses_the_same_values(case: str) -> None:
    datatype, data, message = REFUSED[case]
    for how, decode in decoders(datatype, data).items():
        with pytest.raises(InvalidInput) as caught:
            decode()
        shown = caught.value.message.replace("DT_FLOAT", "FP32").replace("DT_", "")
        for tf_name, oip_name in (("HALF", "FP16"), ("DOUBLE", "FP64"), ("STRING", "BYTES")):
            shown = shown.replace(tf_name, oip_name)
        assert "'x'" in shown, (how, shown)
        assert message in shown, (how, shown)


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        pytest.param([2, 2], [[1.0, 2.0, 3.0], [4.0]], id="ragged-rows-with-the-right-count"),
        pytest.param([2, 2], [[1.0], [2.0], [3.0], [4.0]], id="nested-as-another-shape"),
        pytest.param([2, 2, 2], [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], id="half-nested"),
        pytest.param([4], [[1.0, 2.0], [3.0, 4.0]], id="nested-for-a-flat-shape"),
        pytest.param([2, 1], [[[1.0]], [[2.0]]], id="deeper-than-the-shape"),
        pytest.param([1], 1.0, id="bare-value-for-a-list-shape"),
    ],
)
def test_oip_data_is_flat_or_nested_exactly_as_its_shape(shape: list[int], data: Any) -> None:
    with pytest.raises(InvalidInput, match=r"'x'.*(flat|nest|list)"):
        oip("FP32", shape, data)


def test_oip_flat_data_must_hold_the_shape() -> None:
    for data in ([], [1.0, 2.0, 3.0]):
        with pytest.raises(InvalidInput, match=rf"shape \[1, 4\] needs 4 elements.* {len(data)}"):
            oip("FP32", [1, 4], data)
    assert oip("FP32", [], 2.0).tolist() == 2.0  # a scalar is nested exactly as shape []
    assert oip("FP32", [], [2.0]).tolist() == 2.0  # and flat


@pytest.mark.parametrize(
    "data",
    [[[1.0, 2.0], [3.0]], [[1.0, 2.0], 3.0], [[[1.0], [2.0]], [[3.0], 4.0]], [1.0, [2.0]]],
)
def test_tfserving_data_must_not_be_ragged(data: Any) -> None:
    with pytest.raises(InvalidInput, match=r"'x' is ragged|'x'.*nests deeper"):
        tf("FP32", data)


def test_only_tfserving_takes_b64_strings_and_non_finite_tokens() -> None:
    """PROTOCOLS.md 2.5: TF-Serving's JSON has {"b64": ...} strings and NaN/Infinity tokens;
    the OIP's has neither (its parser refuses the tokens before the decoder sees them)."""
    assert tf("BYTES", [{"b64": "AP8="}, "a"]).tolist() == [b"\x00\xff", b"a"]
    with pytest.raises(InvalidInput, match="element 0 is an object; BYTES values must be strings"):
        oip("BYTES", [1], [{"b64": "AP8="}])
    with pytest.raises(InvalidInput, match="not valid base64"):
        tf("BYTES", [{"b64": "not base64!"}])

    got = tf("FP32", [math.nan, math.inf, -math.inf])
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf
    for value in (math.nan, math.inf):
        with pytest.raises(InvalidInput, match=r"element 1 is (NaN|Infinity); FP32 values must be"):
            oip("FP32", [2], [1.0, value])


def test_element_caps_hold_before_anything_is_built() -> None:
    with pytest.raises(PayloadTooLarge):
        oip("FP32", [LIMIT + 1], [])  # the declared shape alone
    with pytest.raises(PayloadTooLarge):
        tf("FP32", [[0.0] * 40] * 40)
    with pytest.raises(InvalidInput, match="has no elements"):
        oip("FP32", [0, 4], [])
    with pytest.raises(InvalidInput, match="has no elements"):
        tf("FP32", [[], []])


# over HTTP ------------------------------------------------------------------------------------
def test_both_protocols_answer_a_400_naming_the_fix(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    client.create_model("press")
    client.push("press", linear_onnx(tmp_path / "press.onnx"))
    ragged = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0]]  # 8 values for [2, 4], badly nested
    r = http.post(
        "/v2/models/press/infer",
        json={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": ragged}]},
    )
    assert r.status_code == 400, r.text
    assert "send it flat (row-major) or nested exactly as the shape" in r.json()["error"]
    r = http.post("/v1/models/press:predict", content=json.dumps({"instances": ragged}))
    assert r.status_code == 400, r.text
    assert "every row (and every nested list) must have the same length" in r.json()["error"]
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, True]}]}
    r = http.post("/v2/models/press/infer", json=body)
    assert r.status_code == 400 and "element 3 is true" in r.json()["error"], r.text
    r = http.post("/v1/models/press:predict", json={"instances": [[1, 2, 3, True]]})
    assert r.status_code == 400 and "element 3 is true" in r.json()["error"], r.text
