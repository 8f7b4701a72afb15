"""Sizes an uploaded ONNX model's own constants decide, bounded before ONNX Runtime sees it.

ONNX Runtime folds every node whose inputs are constants when it loads a model, and runs the
rest on each request: a 169-byte model can Expand a scalar to 2**32 elements. Such a size is
known before the model runs. Two passes bound it: the first reads the constants that feed the
operators making tensors larger, in every graph and function; the second is ONNX shape
inference over the main graph (without data propagation, itself an amplification).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from onnx import numpy_helper

from modelworks.errors import ValidationFailed
from modelworks.registry.onnx_check import (
    ELEMENTS_SETTING,
    MAX_RANK,
    ONNX_DOMAIN,
    STRING,
    _attribute_parts,
    _refuse,
    _shown,
)

if TYPE_CHECKING:
    from onnx import (
        AttributeProto,
        GraphProto,
        ModelProto,
        NodeProto,
        TensorProto,
        ValueInfoProto,
    )


# ONNX Runtime folds every node whose inputs are constants when it loads the model, and runs
# the rest on each request: a 169-byte model can Expand a scalar to 2**32 elements. Such a
# size is known before the model runs; it is bounded here, by two passes. The first reads the
# constants that feed the operators making tensors larger, in every graph and function; the
# second is ONNX shape inference over the main graph, which follows every operator.
Shape = tuple[int, ...]
SMALL = 2 * MAX_RANK  # values read from a constant: shapes, pads, scales, scalars
# element-wise operators whose output is the broadcast of their inputs
BROADCASTING = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "And", "Or",
    "Xor", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "BitShift", "PRelu",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor",
}  # fmt: skip
PASS_VALUES = {"Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten"}
PASS_SHAPE = {"Identity", "Cast", "Neg", "Abs", "Relu", "Sigmoid", "Exp", "Log", "Sqrt"}
# operator -> the input whose length becomes the output's rank
RANK_ARGUMENTS = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0, "Unsqueeze": 1}


class _Known:
    """What is known of one tensor from constants alone: its shape, its values when small."""

    __slots__ = ("shape", "values")

    def __init__(self, shape: Shape | None, values: tuple[float, ...] | None = None) -> None:
        self.shape = shape
        self.values = values


def _tensor_known(tensor: TensorProto) -> _Known:
    dims = tuple(tensor.dims)
    if math.prod(dims) > SMALL or tensor.data_type in (STRING, 0):
        return _Known(dims)
    try:
        values = numpy_helper.to_array(tensor).astype(np.float64).ravel()
    except (ValueError, TypeError):
        return _Known(dims)
    return _Known(dims, tuple(float(v) for v in values))


def _constant_node(node: NodeProto) -> _Known | None:
    for attr in node.attribute:
        if attr.name == "value":
            return _tensor_known(attr.t)
        if attr.name == "sparse_value":
            return _Known(tuple(attr.sparse_tensor.dims))
        if attr.name in ("value_int", "value_float"):
            return _Known((), (float(attr.i if attr.name == "value_int" else attr.f),))
        if attr.name in ("value_ints", "value_floats"):
            items = list(attr.ints if attr.name == "value_ints" else attr.floats)
            return _Known((len(items),), tuple(map(float, items)) if len(items) <= SMALL else None)
    return None


def _broadcast(shapes: list[Shape]) -> Shape:
    rank = max(map(len, shapes), default=0)
    padded = [(1,) * (rank - len(s)) + s for s in shapes]
    return tuple(max(dims) if 0 not in dims else 0 for dims in zip(*padded, strict=True))


def _ints(values: tuple[float, ...] | None, what: str) -> tuple[int, ...] | None:
    """Values that are sizes (a negative one counts as 0, an infinite one as 2**63)."""
    if values is None:
        return None
    if len(values) > SMALL:
        raise _long_shape(what, len(values))
    return tuple(max(int(v), 0) if math.isfinite(v) else 2**63 for v in values)


def _long_shape(what: str, length: int) -> ValidationFailed:
    return _refuse(
        f"gives {what} a shape argument of {length} values",
        f"tensors may have at most {MAX_RANK} dimensions",
    )


def _check_rank_argument(node: NodeProto, op: str, inputs: list[_Known | None]) -> None:
    """Shape inference (ONNX's here, ONNX Runtime's at load) turns each value of these
    arguments into a dimension: a long constant would make every tensor after it huge."""
    index = RANK_ARGUMENTS.get(op)
    if index is None:
        return
    known = inputs[index] if len(inputs) > index else None
    length = math.prod(known.shape) if known is not None and known.shape is not None else 0
    attrs = [len(a.ints) for a in node.attribute if a.name in ("axes", "shape")]
    length = max([length, *attrs])
    if length > SMALL:
        raise _long_shape(op, length)


def _ones(shape: Shape | None, rank: int) -> Shape:
    """A shape, or 1s where it is not known (a symbolic dimension counts as 1)."""
    return shape if shape is not None and len(shape) == rank else (1,) * rank


def _attr(node: NodeProto, name: str) -> AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


class _Sizes:
    """Walks every graph and function body, tracking what constants decide (see above)."""

    def __init__(self, model: ModelProto) -> None:
        self.model = model
        self.largest = ("", 0)  # (description, elements) of the largest computed tensor
        self.held = 0  # elements of the largest tensor stored in the file itself

    def run(self) -> tuple[str, int]:
        self.graph(self.model.graph, {}, "the main graph")
        for info in self.model.training_info:
            self.graph(info.initialization, {}, "a training graph")
            self.graph(info.algorithm, {}, "a training graph")
        for function in self.model.functions:
            self.nodes(function.node, {}, f"function {_shown(function.name)!r}")
        return self.largest

    def graph(self, graph: GraphProto, outer: dict[str, _Known], where: str) -> None:
        scope = dict(outer)
        for tensor in graph.initializer:
            scope[tensor.name] = known = _tensor_known(tensor)
            self.held = max(self.held, math.prod(known.shape or ()))
        for sparse in graph.sparse_initializer:
            scope[sparse.values.name] = _Known(tuple(sparse.dims))
        self.nodes(graph.node, scope, where)

    def nodes(self, nodes: Iterable[NodeProto], scope: dict[str, _Known], where: str) -> None:
        for node in nodes:
            known = self.node(node, scope)
            if known is not None and node.output:
                scope[node.output[0]] = known
                if known.shape is not None:
                    self.record(node, known.shape, where)
            for attr in node.attribute:
                for graph in _attribute_parts(attr)[2]:
                    self.graph(graph, scope, f"a subgraph of {_shown(node.op_type)!r}")

    def record(self, node: NodeProto, shape: Shape, where: str) -> None:
        elements = math.prod(shape)
        if node.op_type == "Constant":
            self.held = max(self.held, elements)
        elif elements > self.largest[1]:
            what = f"{_shown(node.op_type)} output {_shown(node.output[0])!r} in {where}"
            self.largest = (what, elements)

    def node(self, node: NodeProto, scope: dict[str, _Known]) -> _Known | None:
        op = node.op_type if node.domain in ("", ONNX_DOMAIN) else ""
        inputs = [scope.get(name) if name else None for name in node.input]
        shapes = [k.shape if k else None for k in inputs]
        values = [k.values if k else None for k in inputs]
        _check_rank_argument(node, op, inputs)
        if op == "Constant":
            return _constant_node(node)
        if op in PASS_VALUES and inputs and inputs[0] is not None:
            return _Known(shapes[0] if op in PASS_SHAPE else None, values[0])
        if op in PASS_SHAPE and shapes and shapes[0] is not None:
            return _Known(shapes[0])
        if op == "Concat":
            return self.concat(node, shapes, values)
        if op in BROADCASTING and shapes and all(s is not None for s in shapes):
            return _Known(_broadcast([s for s in shapes if s is not None]))
        if op == "MatMul" and len(shapes) == 2 and all(s and len(s) >= 2 for s in shapes):
            a, b = shapes[0] or (), shapes[1] or ()
            return _Known((*_broadcast([a[:-2], b[:-2]]), a[-2], b[-1]))
        shape = self.grown(node, op, shapes, values)
        return None if shape is None else _Known(shape)

    @staticmethod
    def concat(
        node: NodeProto, shapes: list[Shape | None], values: list[tuple[float, ...] | None]
    ) -> _Known | None:
        if not shapes or any(s is None for s in shapes):
            return None
        known = [s for s in shapes if s is not None]
        attr = _attr(node, "axis")
        axis = attr.i if attr is not None else 0
        rank = len(known[0])
        if not rank or any(len(s) != rank for s in known) or not -rank <= axis < rank:
            return None
        axis %= rank
        shape = (*known[0][:axis], sum(s[axis] for s in known), *known[0][axis + 1 :])
        flat = [v for vs in values if vs is not None for v in vs]
        small = all(v is not None for v in values) and len(flat) <= SMALL
        return _Known(shape, tuple(flat) if small else None)

    def grown(
        self,
        node: NodeProto,
        op: str,
        shapes: list[Shape | None],
        values: list[tuple[float, ...] | None],
    ) -> Shape | None:
        """The output shape of an operator that can make a tensor larger than its inputs, when
        constants decide it; dimensions that are not known count as 1."""
        arg = values + [None] * (4 - len(values))
        first = shapes[0] if shapes else None
        if op == "ConstantOfShape":
            return _ints(arg[0], "ConstantOfShape")
        if op == "Expand" and (target := _ints(arg[1], "Expand")) is not None:
            return _broadcast([first or (), target])
        if op == "Tile" and (repeats := _ints(arg[1], "Tile")) is not None:
            base = _ones(first, len(repeats))
            return tuple(d * r for d, r in zip(base, repeats, strict=True))
        if op == "Range" and all(v is not None and len(v) == 1 for v in arg[:3]):
            start, limit, delta = (v[0] for v in arg[:3] if v is not None)
            if delta and all(map(math.isfinite, (start, limit, delta))):
                return (max(math.ceil((limit - start) / delta), 0),)
        if op == "Pad":
            return self.padded(node, first, arg[1])
        if op in ("Resize", "Upsample"):
            return self.resized(node, first, arg)
        if op == "OneHot" and arg[1] is not None and len(arg[1]) == 1:
            depth = _ints(arg[1], "OneHot") or (0,)
            return (*(first or ()), depth[0])
        if op in ("RandomNormal", "RandomUniform") and (attr := _attr(node, "shape")):
            return _ints(tuple(map(float, attr.ints)), op)
        return None

    @staticmethod
    def padded(
        node: NodeProto, first: Shape | None, pads: tuple[float, ...] | None
    ) -> Shape | None:
        attr = _attr(node, "pads")
        found = _ints(pads if attr is None else tuple(map(float, attr.ints)), "Pad")
        if not found or len(found) % 2:
            return None
        rank = len(found) // 2
        base = _ones(first, rank)
        return tuple(base[i] + found[i] + found[i + rank] for i in range(rank))

    @staticmethod
    def resized(
        node: NodeProto, first: Shape | None, arg: list[tuple[float, ...] | None]
    ) -> Shape | None:
        sizes = _ints(arg[3], node.op_type) if len(node.input) > 3 else None
        if sizes is not None:
            return sizes
        attr = _attr(node, "scales")
        scales = arg[2] if len(node.input) > 2 else arg[1]
        if attr is not None:
            scales = tuple(attr.floats)
        if scales is None or len(scales) > SMALL or not all(map(math.isfinite, scales)):
            return None
        base = _ones(first, len(scales))
        return tuple(max(math.floor(d * s), 0) for d, s in zip(base, scales, strict=True))


def _skeleton(model: ModelProto) -> ModelProto:
    """The model without the values of its large initializers (declared as inputs of the same
    type and shape instead): inference reads only small ones, and copying stays cheap."""
    from onnx import ModelProto, helper

    skeleton = ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph, source = skeleton.graph, model.graph
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, part).extend(getattr(source, part))
    declared = {value.name for value in source.input}
    for tensor in source.initializer:
        if math.prod(tensor.dims) <= SMALL:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            info = helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            graph.input.append(info)
    return skeleton


def _static_elements(value: ValueInfoProto) -> int:
    """Elements of a tensor whose shape inference found; unknown and symbolic dims count as 1."""
    if not value.type.HasField("tensor_type"):
        return 0
    dims = value.type.tensor_type.shape.dim
    return math.prod(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims
    )


def _inferred_largest(model: ModelProto) -> tuple[str, int]:
    """The largest tensor ONNX shape inference finds in the main graph (function bodies and
    subgraphs are the first pass's: inference keeps no shapes for them).

    Without data propagation: it evaluates Range and Concat of constants element by element
    (a 10**7-element Range took 1.4 GB); the first pass reads those constants itself."""
    from onnx import shape_inference

    try:
        skeleton = _skeleton(model)
        inferred = shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=False)
    except Exception:  # inference cannot follow every valid model; the first pass still ran
        return "", 0
    graph = inferred.graph
    values = [*graph.value_info, *graph.output]
    largest = max(values, key=_static_elements, default=None)
    if largest is None:
        return "", 0
    return f"tensor {_shown(largest.name)!r}", _static_elements(largest)


def check_computed_sizes(model: ModelProto, max_elements: int) -> None:
    """Refuse a model in which a tensor whose size constants decide would hold more elements
    than `max_elements`, or than the largest tensor the file itself stores (a model may
    transpose or copy its own weights: that costs no more than their bytes)."""
    sizes = _Sizes(model)
    found = [sizes.run(), _inferred_largest(model)]
    bound = max(max_elements, sizes.held)
    what, elements = max(found, key=lambda item: item[1])
    if elements > bound:
        raise _refuse(
            f"computes {what} with {elements} elements from its constants, more than "
            f"{ELEMENTS_SETTING} ({max_elements})",
            "a model must not build tensors larger than its inputs allow; fix the shapes "
            "its constants give (ConstantOfShape, Expand, Tile, Range, Pad, Resize, …) or ask "
            "the operator to raise the limit",
        )
