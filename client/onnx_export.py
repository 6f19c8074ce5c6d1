"""``export``: a network or any gradient function (GradOperation, grad, value_and_grad, jvp, vjp's transforms, jacfwd,
jacrev, hessian, nested to any order) traced on example inputs and written as a standard ONNX model, so a gradient
program built here runs in ONNX Runtime or on any ONNX backend. Needs the ``onnx`` extra."""
from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

import onnx

from gradserve.engine.onnx_export import DEFAULT_OPSET, to_model

from .runner import traced_for
from .tracing import graph_name
from .tracing import input_names as argument_names


class _Whole:
    """``fn`` as a network of its own, so tracing it records whatever it does (a GradOperation or transform applied
    inside a trace becomes its node) under the names of ``fn``'s inputs."""

    def __init__(self, fn: Any, names: list[str] | None) -> None:
        self.fn, self.names = fn, names
        self.__name__ = graph_name(fn)

    def input_names(self, n: int) -> list[str]:
        """The caller's names, else those of the innermost network's arguments when a gradient function takes the same
        ones (GradOperation, grad, jacrev...), else ``fn``'s own (``arg0``, ``v0``... for extra sens or tangents)."""
        if self.names is not None:
            if len(self.names) != n or len(set(self.names)) != n:
                raise ValueError(f"input_names must give {n} distinct names, one per graph input, got {self.names!r}")
            return list(self.names)
        inner = self.fn
        while hasattr(inner, "fn") and not hasattr(inner, "construct"):
            inner = inner.fn
        try:
            return argument_names(inner, n)
        except TypeError:
            return argument_names(self.fn, n)

    def get_parameters(self) -> Any:
        """The Parameters ``fn`` declares (a Cell's own, a transform's weights)."""
        return self.fn.get_parameters() if hasattr(self.fn, "get_parameters") else iter(())

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def export(
    fn: Any,
    *example_inputs: Any,
    path: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    params_as_inputs: bool = False,
) -> onnx.ModelProto:
    """The ONNX model of ``fn(*example_inputs)``: ``fn`` is a Cell, a function, or a gradient function of either, traced
    once on the examples (their dtypes and shapes are the model's inputs, named ``input_names`` or after the network's
    arguments, a tuple argument's Tensors as ``name_0``, ``name_1``...); the model
    computes the program the engine compiles for that call, its outputs the Tensor leaves of the result in order.
    Parameters are initializers holding their current values (also inputs with ``params_as_inputs``). Written to
    ``path`` when given; returned either way."""
    if not callable(fn):
        raise TypeError(f"export needs a Cell, a function or a gradient function, got {type(fn).__name__}")
    entry = traced_for(_Whole(fn, input_names), example_inputs)
    model = to_model(
        entry.traced.graph, entry.param_values(), opset=opset, output_names=output_names, params_as_inputs=params_as_inputs,
        producer="gradserve",
    )
    model.producer_version = version("gradserve")
    if path is not None:
        onnx.save_model(model, os.fspath(path))
    return model
