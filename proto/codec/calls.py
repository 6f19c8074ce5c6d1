"""Calls: GradOperation messages and Grad/Run requests -> the graph to run, its positional arrays and
its parameter overrides."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from gradserve.engine import Graph, GraphError, NotDifferentiableError, Value, grad_operation
from gradserve.engine.errors import shown, shown_names
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2 as spb

from .errors import WireError, bare, field_key, names_hint, type_text
from .limits import DEFAULT_LIMITS, Limits
from .tensors import decode_tensor


def decode_grad_operation(msg: pb.GradOperation, field: str = "grad") -> dict[str, Any]:
    """Keyword arguments for the engine's grad_operation (``weights`` a str for bare_weight)."""
    weights = tuple(msg.weights)
    if weights and not msg.get_by_list:
        raise WireError(f"{field}.weights", "weights are listed but get_by_list is false")
    if msg.bare_weight and (not msg.get_by_list or len(weights) != 1):
        raise WireError(f"{field}.bare_weight", f"needs get_by_list and exactly one weight, got {len(weights)}")
    return {
        "get_all": msg.get_all,
        "get_by_list": msg.get_by_list,
        "sens_param": msg.sens_param,
        "weights": weights[0] if msg.bare_weight else weights,
    }


def encode_grad_operation(
    get_all: bool = False, get_by_list: bool = False, sens_param: bool = False, weights: Sequence[str] | str = ()
) -> pb.GradOperation:
    """The wire form of a GradOperation call; a single weight name given as a str sets bare_weight."""
    return pb.GradOperation(
        get_all=get_all,
        get_by_list=get_by_list,
        sens_param=sens_param,
        weights=[weights] if isinstance(weights, str) else list(weights),
        bare_weight=isinstance(weights, str),
    )


def apply_grad_operation(network: Graph, msg: pb.GradOperation, field: str = "grad") -> Graph:
    """The gradient graph of ``network`` for a GradOperation message, with errors naming ``field``."""
    kwargs = decode_grad_operation(msg, field)
    params = {p.name for p in network.params}
    for i, w in enumerate(msg.weights):
        if w not in params:
            raise WireError(
                f"{field}.weights[{i}]",
                f"{shown(w)} is not a parameter of the network {shown_names(sorted(params))}{names_hint(w, params)}",
            )
    try:
        return grad_operation(network, **kwargs)
    except NotDifferentiableError as exc:
        raise NotDifferentiableError(f"{field}: {exc}") from None
    except GraphError as exc:
        raise WireError(field, str(exc)) from None


def decode_args(
    tensors: Sequence[pb.Tensor], expected: Sequence[Value], limits: Limits = DEFAULT_LIMITS, field: str = "inputs"
) -> list[np.ndarray]:
    """Positional arrays for a graph's declared inputs, each checked against its dtype and shape."""
    if len(tensors) != len(expected):
        want = ", ".join(f"{bare(v.name)}: {type_text(v.dtype, v.shape)}" for v in expected[:8]) + (", ..." if len(expected) > 8 else "")
        raise WireError(field, f"expected {len(expected)} tensors ({want}), got {len(tensors)}")
    arrays = []
    for i, (t, v) in enumerate(zip(tensors, expected)):
        a = decode_tensor(t, limits, f"{field}[{i}]")
        if a.dtype != v.dtype or a.shape != v.shape:
            raise WireError(f"{field}[{i}]", f"{shown(v.name)} is declared {type_text(v.dtype, v.shape)}, got {type_text(a.dtype, a.shape)}")
        arrays.append(a)
    return arrays


def decode_parameter_overrides(
    tensors: Mapping[str, pb.Tensor], network: Graph, limits: Limits = DEFAULT_LIMITS, field: str = "parameters"
) -> dict[str, np.ndarray]:
    """Parameter values replacing the network's own for one call, each checked against the parameter."""
    params = {p.name: p.value for p in network.params}
    out = {}
    for name in sorted(tensors):
        if name not in params:
            raise WireError(f"{field}{field_key(name)}", f"the network has no parameter {shown(name)}{names_hint(name, params)}")
        a = decode_tensor(tensors[name], limits, f"{field}{field_key(name)}")
        v = params[name]
        if a.dtype != v.dtype or a.shape != v.shape:
            raise WireError(f"{field}{field_key(name)}", f"parameter {shown(name)} is {type_text(v.dtype, v.shape)}, got {type_text(a.dtype, a.shape)}")
        out[name] = a
    return out


@dataclass
class Call:
    """A decoded Grad or Run request: run ``compile_graph(graph)(*args, params=params)``."""

    graph: Graph
    args: list[np.ndarray]
    params: dict[str, np.ndarray]


def decode_grad_call(network: Graph, req: spb.GradRequest, limits: Limits = DEFAULT_LIMITS) -> Call:
    """The gradient graph, positional arrays (inputs, then sens) and overrides of a GradRequest."""
    g = apply_grad_operation(network, req.grad, "grad")
    args = decode_args(req.inputs, network.inputs, limits, "inputs")
    if req.grad.sens_param:
        args += decode_args(req.sens, g.inputs[len(network.inputs):], limits, "sens")
    elif req.sens:
        raise WireError("sens", "sens tensors are given but grad.sens_param is false")
    return Call(g, args, decode_parameter_overrides(req.parameters, network, limits, "parameters"))


def decode_run_call(network: Graph, req: spb.RunRequest, limits: Limits = DEFAULT_LIMITS) -> Call:
    """The network, positional arrays and overrides of a RunRequest."""
    args = decode_args(req.inputs, network.inputs, limits, "inputs")
    return Call(network, args, decode_parameter_overrides(req.parameters, network, limits, "parameters"))
