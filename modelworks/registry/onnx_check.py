"""Checks of an uploaded ONNX model's structure, made before ONNX Runtime ever sees it.

One walk visits every place a tensor or a node can hide: the main graph, subgraphs held by
attributes at any depth, model-local functions (each body once, however often it is called),
their default attributes, and training graphs. It refuses external data anywhere (a single
uploaded file has no folder, and the store's other blobs sit next to it on disk), tensors whose
declared size does not match their bytes, custom operators, opsets and IR versions the
installed ONNX Runtime cannot load, deep nesting and node counts past what ONNX Runtime should
resolve for one upload. The sizes the model's own constants decide are bounded in onnx_sizes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from onnx import numpy_helper

from modelworks.errors import ValidationFailed

if TYPE_CHECKING:
    from onnx import (
        AttributeProto,
        FunctionProto,
        GraphProto,
        ModelProto,
        NodeProto,
        OperatorSetIdProto,
        SparseTensorProto,
        TensorProto,
        ValueInfoProto,
    )

# operator domains ONNX Runtime implements itself; anything else would need a custom-op library
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
# the largest real exports (LLMs with their If branches, functions inlined) hold tens of
# thousands of nodes; 200k leaves that headroom while bounding what session creation resolves
MAX_NODES = 200_000
# real models nest If/Loop/Scan bodies and functions a few levels deep; protobuf itself stops
# parsing near 31 levels, so a limit well below that gives a clear 422 instead
MAX_DEPTH = 16
MAX_RANK = 32
MAX_DIM = 2**31
ELEMENTS_SETTING = "MODELWORKS_MAX_TENSOR_ELEMENTS"
REEXPORT = "the declared size and type must match the stored data; re-export the model"
EMBED_WEIGHTS = (
    "save it with its weights inside (onnx.save_model(m, path, save_as_external_data=False))"
)

INT64 = 7
STRING = 8
EXTERNAL = 1
# TensorProto.DataType -> bits per element (sub-byte types are packed in raw_data)
ELEMENT_BITS = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64,
    14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2,
    26: 2, 27: 6, 28: 6,
}  # fmt: skip
# typed field -> data type -> values stored per element
PER_ELEMENT = {
    "float_data": {1: 1, 14: 2},
    "double_data": {11: 1, 15: 2},
    "int64_data": {7: 1},
    "uint64_data": {12: 1, 13: 1},
    "string_data": {STRING: 1},
    "int32_data": {t: 1 for t in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 24, 27, 28)},
}
# int32_data packs 4-bit types two to a value and 2-bit types four to a value
INT32_PACKED = {21: 2, 22: 2, 23: 2, 25: 4, 26: 4}

FunctionKey = tuple[str, str, str]  # (domain, name, overload)


def _shown(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:40]}…"


def _refuse(problem: str, fix: str) -> ValidationFailed:
    return ValidationFailed(f"the model {problem}; {fix}")


# tensors ----------------------------------------------------------------------------------------
def _element_count(dims: Iterable[int], what: str) -> int:
    dims = list(dims)
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise _refuse(
            f"declares {what} with dims {_shown(str(dims))}",
            f"dims must be at most {MAX_RANK} non-negative integers",
        )
    return math.prod(dims)


def _values_held(tensor: TensorProto, name: str) -> tuple[str, int] | None:
    """(field, count) of the one field holding the tensor's values; None when none does."""
    used = [(f, len(getattr(tensor, f))) for f in PER_ELEMENT if len(getattr(tensor, f))]
    if tensor.HasField("raw_data"):
        used.append(("raw_data", len(tensor.raw_data)))
    if len(used) > 1:
        fields = " and ".join(f for f, _ in used)
        raise _refuse(f"has tensor {name!r} holding its values twice ({fields})", REEXPORT)
    return used[0] if used else None


def _expected(field: str, dtype: int, elements: int) -> int | None:
    """How many values (bytes for raw_data) `field` must hold; None if it cannot hold `dtype`."""
    if field == "raw_data":
        bits = ELEMENT_BITS.get(dtype)
        return None if bits is None else -(-elements * bits // 8)
    if field == "int32_data" and dtype in INT32_PACKED:
        return -(-elements // INT32_PACKED[dtype])
    per = PER_ELEMENT[field].get(dtype)
    return None if per is None else elements * per


def check_tensor(tensor: TensorProto) -> None:
    """Data inside the file, of a known type, exactly as many values as its dims declare."""
    name = _shown(tensor.name) or "(unnamed)"
    if tensor.data_location == EXTERNAL or len(tensor.external_data):
        raise _refuse(
            f"keeps tensor {name!r} in an external file; an uploaded .onnx file must hold all "
            "of its data",
            EMBED_WEIGHTS,
        )
    if tensor.HasField("segment"):
        raise _refuse(f"stores tensor {name!r} in segments", EMBED_WEIGHTS)
    if tensor.data_type not in ELEMENT_BITS and tensor.data_type != STRING:
        raise _refuse(
            f"declares tensor {name!r} with unknown element type {tensor.data_type}", REEXPORT
        )
    elements = _element_count(tensor.dims, f"tensor {name!r}")
    held = _values_held(tensor, name)
    if held is None:
        if elements:
            raise _refuse(
                f"declares tensor {name!r} with {elements} elements but no data", REEXPORT
            )
        return
    field, count = held
    expected = _expected(field, tensor.data_type, elements)
    if expected is None:
        raise _refuse(f"stores tensor {name!r} in {field}, which cannot hold its type", REEXPORT)
    if count != expected:
        raise _refuse(
            f"declares tensor {name!r} with {elements} elements (dims "
            f"{_shown(str(list(tensor.dims)))}) but its {field} holds {count} values, not "
            f"{expected}",
            REEXPORT,
        )


def check_sparse(sparse: SparseTensorProto, max_elements: int) -> None:
    """ONNX Runtime densifies sparse tensors at load: their dense size is what it allocates."""
    values, indices = sparse.values, sparse.indices
    name = _shown(values.name) or "(unnamed)"
    dense = _element_count(sparse.dims, f"sparse tensor {name!r}")
    if dense > max_elements:
        raise _refuse(
            f"declares sparse tensor {name!r} with {dense} dense elements, more than "
            f"{ELEMENTS_SETTING} ({max_elements})",
            "store smaller tensors or ask the operator to raise the limit",
        )
    check_tensor(values)
    check_tensor(indices)
    nnz = list(values.dims)
    linear = list(indices.dims) == nnz
    if (
        len(nnz) != 1
        or indices.data_type != INT64
        or not (linear or list(indices.dims) == [nnz[0], len(sparse.dims)])
    ):
        raise _refuse(
            f"declares sparse tensor {name!r} whose indices do not match its values",
            "values must be [NNZ] and indices INT64 [NNZ] or [NNZ, rank]",
        )
    bounds = np.array([dense] if linear else list(sparse.dims), dtype=np.int64)
    positions = numpy_helper.to_array(indices)
    if positions.size and ((positions < 0).any() or (positions >= bounds).any()):
        raise _refuse(
            f"declares sparse tensor {name!r} with indices outside its dims",
            "every index must lie inside the dense shape",
        )


# graphs, nodes and functions -------------------------------------------------------------------
def _attribute_parts(
    attr: AttributeProto,
) -> tuple[list[TensorProto], list[SparseTensorProto], list[GraphProto]]:
    """(tensors, sparse tensors, graphs) an attribute holds, whatever its declared type."""
    tensors = [attr.t] if attr.HasField("t") else []
    sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
    graphs = [attr.g] if attr.HasField("g") else []
    return (
        tensors + list(attr.tensors),
        sparse + list(attr.sparse_tensors),
        graphs + list(attr.graphs),
    )


# opset and IR versions --------------------------------------------------------------------------
LOCAL_VERSIONS = 2**31 - 1  # ONNX Runtime keeps opset versions in a C++ int
ONNX_DOMAIN = "ai.onnx"


@functools.cache
def supported_opsets() -> dict[str, int]:
    """Newest opset of each standard domain the installed ONNX Runtime loads: the newest
    operator version in its own schema registry, else in the onnx package's."""
    from onnx import defs

    newest: dict[str, int] = {}
    for schema in defs.get_all_schemas_with_history():
        newest[schema.domain] = max(newest.get(schema.domain, 1), schema.since_version)
    try:
        from onnxruntime.capi import _pybind_state

        runtime: dict[str, int] = {}
        for schema in _pybind_state.get_all_operator_schema():
            runtime[schema.domain] = max(runtime.get(schema.domain, 1), schema.since_version)
    except (ImportError, AttributeError):  # a build without its schema list: onnx's view
        runtime = {}
    newest |= runtime
    newest[ONNX_DOMAIN] = newest[""]
    return {domain: newest.get(domain, 1) for domain in STANDARD_DOMAINS}


@functools.cache
def supported_ir_version() -> int:
    """Newest IR version that goes with the newest opset ONNX Runtime loads (ONNX releases
    both together; its VERSION_TABLE pairs them), never past the onnx package's own."""
    import onnx
    from onnx.helper import VERSION_TABLE

    opset = supported_opsets()[""]
    paired = [ir for _, ir, ai_onnx, *_ in VERSION_TABLE if ai_onnx <= opset]
    return min(max(paired, default=onnx.IR_VERSION), onnx.IR_VERSION)


def check_ir_version(model: ModelProto) -> None:
    newest = supported_ir_version()
    if not 1 <= model.ir_version <= newest:
        raise _refuse(
            f"declares IR version {model.ir_version}, which the installed ONNX Runtime cannot "
            f"load (it reads IR versions 1 to {newest})",
            "re-export it with the onnx package this server runs (or set model.ir_version to "
            f"{newest} or lower)",
        )


def _check_version(opset: OperatorSetIdProto, local: bool, where: str) -> None:
    domain = opset.domain or ONNX_DOMAIN
    newest = LOCAL_VERSIONS if local else supported_opsets()[opset.domain]
    if 1 <= opset.version <= newest:
        return
    if local:
        raise _refuse(
            f"imports version {opset.version} of its function domain {_shown(domain)!r} ({where})",
            "model-local function domains must have a positive version (exporters write 1)",
        )
    raise _refuse(
        f"imports opset {opset.version} of domain {_shown(domain)!r} ({where}); the installed "
        f"ONNX Runtime supports opsets 1 to {newest} of it",
        "re-export with a supported opset or convert it "
        f"(onnx.version_converter.convert_version(model, {newest}))",
    )


def _custom_domain(domains: Iterable[str], where: str) -> ValidationFailed:
    return ValidationFailed(
        f"the model uses custom operator domains {sorted(set(domains))} ({where}); only standard "
        "ONNX operators, ONNX Runtime's built-in com.microsoft ops and functions defined in the "
        "model itself are served"
    )


def _too_deep() -> ValidationFailed:
    return _refuse(
        f"nests subgraphs and function calls more than {MAX_DEPTH} levels deep",
        "flatten the control flow (If/Loop/Scan bodies, functions) before uploading",
    )


class _Walk:
    """Walks a model once; `cost` counts nodes with every function call expanded."""

    def __init__(self, model: ModelProto, max_elements: int) -> None:
        self.max_elements = max_elements
        self.functions: dict[FunctionKey, FunctionProto] = {}
        for function in model.functions:
            key = (function.domain, function.name, function.overload)
            if key in self.functions:  # a loader may pick either: both must not exist
                raise _refuse(
                    f"defines function {_shown(f'{key[0]}.{key[1]}')!r} twice",
                    "give each model-local function its own name",
                )
            self.functions[key] = function
        self.domains = STANDARD_DOMAINS | {f.domain for f in model.functions}
        self.done: dict[FunctionKey, tuple[int, int]] = {}  # key -> (cost, height)
        self.active: set[FunctionKey] = set()
        self.called: set[FunctionKey] = set()

    def model(self, model: ModelProto) -> None:
        self.opsets(model.opset_import, "in the model's opset imports")
        cost = self.graph(model.graph, 0, "the main graph")[0]
        for info in model.training_info:
            for graph in (info.initialization, info.algorithm):
                cost += self.graph(graph, 0, "a training graph")[0]
        for key in self.functions:
            cost += 0 if key in self.called else self.function(key, 1)[0]
        self.count(cost)

    def opsets(self, opsets: Iterable[OperatorSetIdProto], where: str) -> None:
        """Only standard or model-local domains, each at a version ONNX Runtime loads."""
        opsets = list(opsets)
        custom = [op.domain for op in opsets if op.domain not in self.domains]
        if custom:
            raise _custom_domain(custom, where)
        for opset in opsets:
            _check_version(opset, opset.domain not in STANDARD_DOMAINS, where)

    @staticmethod
    def count(cost: int) -> int:
        if cost > MAX_NODES:
            raise _refuse(
                f"has more than {MAX_NODES} nodes (counting subgraphs and every function call)",
                "split the model or simplify it (e.g. onnxsim) before uploading",
            )
        return cost

    @staticmethod
    def deeper(depth: int) -> int:
        if depth + 1 > MAX_DEPTH:
            raise _too_deep()
        return depth + 1

    def graph(self, graph: GraphProto, depth: int, where: str) -> tuple[int, int]:
        """(expanded node count, nesting height below `graph`) after checking its contents."""
        for tensor in graph.initializer:
            check_tensor(tensor)
        for sparse in graph.sparse_initializer:
            check_sparse(sparse, self.max_elements)
        return self.nodes(graph.node, depth, where)

    def nodes(self, nodes: Iterable[NodeProto], depth: int, where: str) -> tuple[int, int]:
        cost = height = 0
        for node in nodes:
            node_cost, node_height = self.node(node, depth, where)
            cost = self.count(cost + node_cost)
            height = max(height, node_height)
        return cost, height

    def node(self, node: NodeProto, depth: int, where: str) -> tuple[int, int]:
        key = (node.domain, node.op_type, node.overload)
        cost, height = 1, 0
        if key in self.functions:
            self.called.add(key)
            cost, below = self.function(key, self.deeper(depth))
            height = below + 1
        elif node.domain not in STANDARD_DOMAINS:
            raise _custom_domain([node.domain], f"node {_shown(node.op_type)!r} in {where}")
        inner = f"a subgraph of node {_shown(node.op_type)!r}"
        for attr in node.attribute:
            sub_cost, sub_height = self.attribute(attr, depth, inner)
            cost += sub_cost
            height = max(height, sub_height)
        return cost, height

    def attribute(self, attr: AttributeProto, depth: int, where: str) -> tuple[int, int]:
        tensors, sparse, graphs = _attribute_parts(attr)
        for tensor in tensors:
            check_tensor(tensor)
        for item in sparse:
            check_sparse(item, self.max_elements)
        cost = height = 0
        for graph in graphs:
            sub_cost, sub_height = self.graph(graph, self.deeper(depth), where)
            cost += sub_cost
            height = max(height, sub_height + 1)
        return cost, height

    def function(self, key: FunctionKey, depth: int) -> tuple[int, int]:
        """(expanded node count, height) of a local function body, checked once."""
        name = _shown(f"{key[0]}.{key[1]}")
        if key in self.active:
            raise _refuse(
                f"has function {name!r} calling itself (directly or through other functions)",
                "ONNX functions cannot recurse; inline or restructure it",
            )
        if key not in self.done:
            self.active.add(key)
            self.done[key] = self.function_body(self.functions[key], depth, f"function {name!r}")
            self.active.discard(key)
        cost, height = self.done[key]
        if depth + height > MAX_DEPTH:
            raise _too_deep()
        return cost, height

    def function_body(self, function: FunctionProto, depth: int, where: str) -> tuple[int, int]:
        self.opsets(function.opset_import, f"in the opset imports of {where}")
        cost = height = 0
        for attr in function.attribute_proto:  # default attribute values
            sub_cost, sub_height = self.attribute(attr, depth, where)
            cost += sub_cost
            height = max(height, sub_height)
        body_cost, body_height = self.nodes(function.node, depth, where)
        return self.count(cost + body_cost), max(height, body_height)


def check_structure(model: ModelProto, max_elements: int) -> None:
    """Refuse external data, size mismatches, custom ops, opsets and IR versions ONNX Runtime
    cannot load, deep nesting and too many nodes."""
    check_ir_version(model)
    _Walk(model, max_elements).model(model)


# declared shapes --------------------------------------------------------------------------------
def _declared_elements(value: ValueInfoProto) -> int:
    """Element count of a graph input/output's declared shape; symbolic or unknown dims (and
    -1) count as 1. Absurd dims and ranks are refused."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) > MAX_RANK:
        raise _refuse(
            f"declares {_shown(value.name)!r} with rank {len(dims)}",
            f"tensors may have at most {MAX_RANK} dimensions",
        )
    elements = 1
    for dim in dims:
        if not dim.HasField("dim_value") or dim.dim_value == -1:
            continue
        if not 0 <= dim.dim_value <= MAX_DIM:
            raise _refuse(
                f"declares {_shown(value.name)!r} with dimension {dim.dim_value}",
                f"dimensions must lie between 0 and {MAX_DIM}; use a symbolic name for a "
                "variable size",
            )
        elements *= dim.dim_value
    return elements


def check_declared_shapes(graph: GraphProto, max_elements: int) -> None:
    """An input's fixed shape decides what warm-up allocates: bound it before it is stored."""
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            _declared_elements(output)  # outputs: absurd dims only; their size is the answer's
    defaults = {i.name for i in graph.initializer}
    for value in graph.input:
        if not value.type.HasField("tensor_type") or value.name in defaults:
            continue
        elements = _declared_elements(value)
        if elements > max_elements:
            raise _refuse(
                f"declares input {_shown(value.name)!r} with {elements} elements, more than "
                f"{ELEMENTS_SETTING} ({max_elements})",
                "declare variable dimensions symbolically (e.g. 'batch') or ask the operator "
                "to raise the limit",
            )
