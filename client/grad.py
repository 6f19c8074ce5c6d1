"""ops.GradOperation: gradients of a Cell or function in MindSpore's return structure, nestable to any order."""
from __future__ import annotations

from typing import Any, Sequence

from ..engine import flatten
from ..engine.autodiff import grad_structure
from . import dtype as mstype
from .backend import GradFlags
from .context import get_backend
from .parameter import Parameter
from .runner import to_tensors, traced_for
from .tensor import Tensor
from .tracing import TraceFrame, check_inputs, current_frame, graph_name, label, trace


class GradOperation:
    """``GradOperation(get_all=False, get_by_list=False, sens_param=False)``; ``grad_op(net[, weights])`` is the
    gradient function."""

    def __init__(self, get_all: bool = False, get_by_list: bool = False, sens_param: bool = False) -> None:
        for name, v in (("get_all", get_all), ("get_by_list", get_by_list), ("sens_param", sens_param)):
            if not isinstance(v, bool):
                raise TypeError(f"GradOperation: {name} must be a bool, got {v!r}")
        self.get_all, self.get_by_list, self.sens_param = get_all, get_by_list, sens_param

    def __call__(self, fn: Any, weights: Any = None) -> "GradFunction":
        if not callable(fn):
            raise TypeError(f"GradOperation needs a Cell or a function, got {type(fn).__name__}")
        if not self.get_by_list or weights is None:
            return GradFunction(self, fn, (), bare=False)
        if isinstance(weights, Parameter):
            return GradFunction(self, fn, (weights,), bare=True)
        if not isinstance(weights, (tuple, list)) or not all(isinstance(w, Parameter) for w in weights):
            raise TypeError(f"GradOperation weights must be a Parameter, a ParameterTuple or a list of Parameters, got {weights!r}")
        return GradFunction(self, fn, tuple(weights), bare=False)


class GradFunction:
    """The gradient of one network; call it with the network's inputs (then sens, with ``sens_param``)."""

    def __init__(self, op: GradOperation, fn: Any, weights: tuple[Parameter, ...], bare: bool) -> None:
        self.op, self.fn, self.weights, self.bare = op, fn, weights, bare

    def input_names(self, n: int) -> list[str]:
        """Graph-input names when this gradient function is itself traced."""
        return [f"arg{i}" for i in range(n)]

    @property
    def flags(self) -> GradFlags:
        """The flags and weight names this gradient function sends to a backend or a GradOperation node."""
        return GradFlags(self.op.get_all, self.op.get_by_list, self.op.sens_param, tuple(w.name for w in self.weights))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"gradient of {label(self.fn)}: pass inputs positionally (got keywords {sorted(kwargs)})")
        inputs, sens = args, None
        if self.op.sens_param:
            if not args:
                raise TypeError(f"GradOperation(sens_param=True) of {label(self.fn)}: pass the network's inputs followed by sens")
            inputs, sens = args[:-1], args[-1]
        check_inputs(self.fn, inputs)
        if not self.op.get_all and not self.op.get_by_list and not (inputs and isinstance(inputs[0], Tensor)):
            return ()  # MindSpore: the first input is not a Tensor, so there is nothing to differentiate
        frame = current_frame()
        return self._run(inputs, sens) if frame is None else self._nested(frame, inputs, sens)

    def _run(self, inputs: Sequence[Any], sens: Any) -> Any:
        entry = traced_for(self.fn, inputs, self.weights)
        flat_sens = self._flat_sens(sens, entry.traced.graph.outputs)
        backend = get_backend()
        arrays = entry.inputs(inputs) + [s._concrete("sens") for s in flat_sens]
        out = backend.grad(entry.network_id(backend), self.flags, arrays, entry.param_values())
        return self._structure(flatten(to_tensors(out)), len(entry.traced.tensor_positions))

    def _nested(self, frame: TraceFrame, inputs: Sequence[Any], sens: Any) -> Any:
        """Inside a trace: trace the network into the library and apply a GradOperation node to it."""
        name = frame.session.fresh_name(graph_name(self.fn))
        traced = trace(self.fn, inputs, frame.session, name, self.weights)
        frame.session.library[name] = traced.graph
        flat_sens = self._flat_sens(sens, traced.graph.outputs)
        values = [frame.value_of(inputs[i]) for i in traced.tensor_positions] + [frame.value_of(s) for s in flat_sens]
        f = self.flags
        outs = frame.builder.op(
            "GradOperation", *values, fn=name, get_all=f.get_all, get_by_list=f.get_by_list,
            sens_param=f.sens_param, weights=f.weights,
        )
        return self._structure([Tensor._symbolic(v, frame) for v in outs], len(traced.tensor_positions))

    def _flat_sens(self, sens: Any, outputs: Any, path: str = "sens") -> list[Tensor]:
        """The sens leaves, checked against the network's output tree (structure, shape and dtype)."""
        if not self.op.sens_param:
            return []
        if isinstance(outputs, tuple):
            if not isinstance(sens, (tuple, list)) or len(sens) != len(outputs):
                got = (
                    "a single Tensor" if isinstance(sens, Tensor)
                    else f"a {type(sens).__name__} of length {len(sens)}" if isinstance(sens, (tuple, list))
                    else f"a {type(sens).__name__}"
                )
                raise TypeError(
                    f"gradient of {label(self.fn)}: the network returns a tuple of {len(outputs)} outputs, so {path} "
                    f"must be a tuple of {len(outputs)} Tensors in the same structure; got {got}"
                )
            return [leaf for i, (s, o) in enumerate(zip(sens, outputs)) for leaf in self._flat_sens(s, o, f"{path}[{i}]")]
        want = f"shape {tuple(outputs.shape)} and dtype {mstype.from_numpy(outputs.dtype)}"
        if not isinstance(sens, Tensor):
            raise TypeError(f"gradient of {label(self.fn)}: {path} must be a Tensor with the output's {want}, got {type(sens).__name__}")
        if sens.shape != tuple(outputs.shape) or sens._array_dtype() != outputs.dtype:
            raise ValueError(
                f"gradient of {label(self.fn)}: {path} has shape {sens.shape} and dtype {sens.dtype}, "
                f"but the network output it scales has {want}"
            )
        return [sens]

    def _structure(self, leaves: list[Tensor], n_inputs: int) -> Any:
        """MindSpore's return structure from the flat gradient leaves (the engine's rule)."""
        return grad_structure(leaves, n_inputs if self.op.get_all else 0, self.op.get_all, self.op.get_by_list, self.bare)
