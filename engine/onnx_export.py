"""ONNX export: an engine graph, compiled as the engine runs it (transform nodes expanded into primitives, constants
folded, dead nodes pruned), written as a standard ONNX model (``ai.onnx`` domain only) that ONNX Runtime runs.

Each engine node becomes the nodes its op's ``onnx`` rule returns (``OpDef.onnx``: plain tuples, so the op table
needs no ``onnx`` import); this module only names values, turns constants and attributes into protos and assembles
the model. ``onnx`` is an optional dependency (the ``onnx`` extra), imported when this module is.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .compiler import optimize
from .errors import GraphError, shown, shown_names
from .ir import Graph, Node, TensorType, Value
from .optable import OPS, OnnxCall

DEFAULT_OPSET = 18
"""The ``ai.onnx`` opset models are written in unless the caller asks for another."""

MIN_OPSET = 18
"""The oldest opset the export rules are written for (reductions take their axes as an input from 18 on)."""


def exportable_ops() -> list[str]:
    """The ops that have an export rule, sorted."""
    return sorted(name for name, op in OPS.items() if op.onnx is not None)


def _elem_type(dtype: np.dtype) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _elem_type(t.dtype), list(t.shape))


def _attribute(v: Any) -> Any:
    """A rule's attribute value as ``helper.make_node`` takes it: dtypes as element types, arrays as tensors."""
    if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)):
        return _elem_type(np.dtype(v))
    if isinstance(v, np.ndarray):
        return numpy_helper.from_array(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, tuple):
        return [_attribute(x) for x in v]
    return v


class _Writer:
    """The model being written: value names, nodes, constant initializers."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def fresh(self, base: str) -> str:
        """``base``, or ``base`` with a number appended, whichever no value of the model has yet."""
        name, k = base or "v", 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def name_of(self, v: Value) -> str:
        hit = self.names.get(id(v))
        if hit is None:
            hit = self.names[id(v)] = self.fresh(v.name)
        return hit

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def emit(self, n: Node) -> None:
        """The ONNX nodes of one engine node, from its op's rule; an op without one is a GraphError naming the node."""
        rule = OPS[n.op].onnx
        if rule is None:
            raise GraphError(
                f"{n.op} node {shown(n.name)}: op {n.op} has no ONNX export rule, so this program cannot be exported; "
                f"ops with one: {shown_names(exportable_ops(), limit=200)}"
            )
        prefix = self.fresh(f"{n.op}_{n.name}")
        call = OnnxCall(
            tuple(self.name_of(v) for v in n.inputs), tuple(self.name_of(v) for v in n.outputs),
            tuple(v.type for v in n.inputs), tuple(v.type for v in n.outputs), dict(n.attrs), self.opset, prefix,
        )
        written: set[str] = set()
        for k, spec in enumerate(rule(call)):
            op_type, ins, outs = spec[:3]
            attrs = spec[3] if len(spec) > 3 else {}
            names = [self.constant(f"{prefix}/c{k}_{i}", a) if isinstance(a, np.ndarray) else a for i, a in enumerate(ins)]
            written.update(outs)
            self.nodes.append(helper.make_node(
                op_type, names, list(outs), name=f"{prefix}/{k}", **{a: _attribute(v) for a, v in attrs.items()}
            ))
        missing = [y for y in call.y if y not in written]
        if missing:
            raise GraphError(f"{n.op} node {shown(n.name)}: the op's ONNX rule does not write {shown_names(missing)}")
        for v, y in zip(n.outputs, call.y):
            self.value_info.append(_value_info(y, v.type))


def to_model(
    graph: Graph,
    params: Mapping[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
    output_names: Sequence[str] | None = None,
    params_as_inputs: bool = False,
    producer: str = "gradserve",
) -> onnx.ModelProto:
    """``graph`` (any engine graph: a network, or a gradient program of transform nodes) as an ONNX model that
    computes what the engine's compiled program computes: the graph's inputs in order, its parameters as
    initializers (their values from ``params`` where given; also graph inputs with ``params_as_inputs``, so a caller
    may feed others), and its flattened outputs in order (named ``output_names``, else ``output0``, ``output1``...)."""
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be between {MIN_OPSET} and {onnx.defs.onnx_opset_version()} (this onnx package's newest), got {opset}")
    compiled = optimize(graph)
    flat = compiled.flat_outputs
    names = list(output_names) if output_names is not None else [f"output{i}" for i in range(len(flat))]
    if len(names) != len(flat) or len(set(names)) != len(names):
        raise ValueError(f"output_names must give {len(flat)} distinct names, got {shown_names(names)}")
    params = dict(params or {})
    unknown = sorted(set(params) - {p.name for p in compiled.params} - {p.name for p in graph.params})
    if unknown:
        raise ValueError(f"params names no parameter of graph {shown(graph.name)}: {shown_names(unknown)}")
    w = _Writer(opset)
    inputs = [_value_info(w.name_of(v), v.type) for v in compiled.inputs]
    for p in compiled.params:
        data = np.asarray(params.get(p.name, p.data))
        if data.dtype != p.value.dtype or data.shape != p.value.shape:
            raise ValueError(f"parameter {shown(p.name)} expects {p.value.type}, got {data.dtype.name}{list(data.shape)}")
        w.constant(w.name_of(p.value), data)
        if params_as_inputs:
            inputs.append(_value_info(w.name_of(p.value), p.value.type))
    clash = sorted(set(names) & w.used)
    if clash:
        raise ValueError(f"output names {shown_names(clash)} are also names of inputs or parameters")
    produced = {id(o) for n in compiled.nodes for o in n.outputs}
    renamed: set[int] = set()
    for v, name in zip(flat, names):
        if id(v) in produced and id(v) not in renamed and name not in w.used:
            w.names[id(v)] = name
            w.used.add(name)
            renamed.add(id(v))
    for n in compiled.nodes:
        w.emit(n)
    outputs = []
    for v, name in zip(flat, names):
        src = w.name_of(v)
        if src != name:
            w.nodes.append(helper.make_node("Identity", [src], [name], name=w.fresh(f"{name}/identity")))
        outputs.append(_value_info(name, v.type))
    out_names = set(names)
    body = helper.make_graph(
        w.nodes, compiled.name or "gradserve", inputs, outputs, initializer=w.initializers,
        value_info=[vi for vi in w.value_info if vi.name not in out_names],
    )
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(body, opset_imports=opsets, producer_name=producer, ir_version=helper.find_min_ir_version_for(opsets))
