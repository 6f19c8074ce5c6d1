"""ONNX models on the wire: the bytes of an onnx.ModelProto (RegisterNetworkRequest.onnx_model) -> the network's
gradserve.v1 Graph, converted by the engine's ONNX importer after the model's size is checked against ``Limits``."""
from __future__ import annotations

from gradserve.engine import GraphError
from gradserve.engine.onnx_import import convert, load_model, onnx_module
from gradserve.v1 import graph_pb2 as pb

from .errors import LimitError, WireError
from .graphs import encode_graph
from .limits import DEFAULT_LIMITS, Limits


def decode_onnx_model(data: bytes, limits: Limits = DEFAULT_LIMITS, field: str = "onnx_model") -> pb.Graph:
    """The network an ONNX model's bytes stand for. Raises WireError (naming the node that cannot be converted) or
    LimitError (too many nodes, too large an initializer) before converting anything; ImportError when this
    installation lacks the ``onnx`` package."""
    onnx_module()
    try:
        model = load_model(bytes(data))
    except GraphError as exc:
        raise WireError(field, str(exc)) from None
    nodes = len(model.graph.node)
    if nodes > limits.max_graph_nodes:
        raise LimitError(field, f"the model has {nodes} nodes, more than max_graph_nodes={limits.max_graph_nodes}")
    for t in model.graph.initializer:
        size = 1
        for d in t.dims:
            size *= max(int(d), 1)
        if size > limits.max_tensor_elements or len(t.dims) > limits.max_tensor_rank:
            raise LimitError(field, f"initializer {t.name[:96]!r} of shape {list(t.dims)} exceeds max_tensor_elements="
                             f"{limits.max_tensor_elements} or max_tensor_rank={limits.max_tensor_rank}")
        if t.data_location == t.EXTERNAL:
            raise WireError(field, f"initializer {t.name[:96]!r} is stored in an external file; send a self-contained model")
    try:
        return encode_graph(convert(model))
    except GraphError as exc:
        raise WireError(field, str(exc)) from None
