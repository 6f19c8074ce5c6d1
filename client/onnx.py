"""``gradserve.onnx.load``: an ONNX model as an ``nn.Cell`` whose initializers are Parameters, so GradOperation,
``grad``, higher orders and the optimizers work on it as on any traced network, embedded or remote."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from gradserve.engine import Graph, flatten
from gradserve.engine.onnx_import import convert, load_model

from .cell import Cell
from .errors import TracingError
from .parameter import Parameter, ParameterTuple
from .tensor import Tensor
from .tracing import current_frame


class OnnxCell(Cell):
    """A converted ONNX graph as a Cell: ``construct(*inputs)`` takes the model's inputs in order and returns its
    output (a tuple for several); the initializers are the Parameters of ``params``, named as in the model (a parent
    Cell prefixes them with its attribute's name, as for any child Cell)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.params = ParameterTuple(Parameter(Tensor(p.data.copy()), name=p.name, requires_grad=p.requires_grad) for p in graph.params)

    def construct(self, *inputs: Any) -> Any:
        """The converted graph's nodes copied into the trace in progress, reading this Cell's Parameters (by position:
        a parent Cell may have renamed them)."""
        frame = current_frame()
        if frame is None:
            raise TracingError("OnnxCell.construct runs inside a trace; call the Cell itself")
        if len(inputs) != len(self.graph.inputs):
            raise TypeError(f"the ONNX model takes {len(self.graph.inputs)} inputs "
                            f"({', '.join(v.name for v in self.graph.inputs)}), got {len(inputs)}")
        args = []
        for v, x in zip(self.graph.inputs, inputs):
            if not isinstance(x, Tensor) or x._array_dtype() != v.dtype or tuple(x.shape) != v.shape:
                got = f"{x._array_dtype()}{list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
                raise TypeError(f"ONNX input {v.name!r} is {v.dtype}{list(v.shape)}, got {got}")
            args.append(frame.value_of(x))
        env = {id(v): a for v, a in zip(self.graph.inputs, args)}
        env.update((id(p.value), frame.value_of(q)) for p, q in zip(self.graph.params, self.params))
        for n in self.graph.nodes:
            outs = frame.builder.add_node(n.op, [env[id(v)] for v in n.inputs], n.attrs, name_hint=n.name)
            env.update(zip(map(id, n.outputs), outs))
        out = tuple(Tensor._symbolic(env[id(v)], frame) for v in flatten(self.graph.outputs))
        return out if isinstance(self.graph.outputs, tuple) else out[0]


def load(model: Any, trainable: bool = True, shapes: Mapping[str, Sequence[int]] | None = None) -> OnnxCell:
    """An ONNX model (a path, its bytes or an ``onnx.ModelProto``) as a Cell; its initializers are Parameters with
    ``requires_grad=trainable``; ``shapes`` fixes inputs whose dimensions are symbolic in the model."""
    return OnnxCell(convert(load_model(model), trainable=trainable, shapes=shapes))
