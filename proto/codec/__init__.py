"""The wire codec: the one place that turns gradserve.v1 protos into engine graphs, arrays and calls, and back.

One module per thing converted: ``tensors`` (dtypes, tensors, result trees), ``attrs`` (node attributes),
``graphs`` (networks and their ids), ``onnx_models`` (ONNX models sent for registration), ``calls`` (GradOperation, Grad and Run requests),
``catalog`` (ListOps) and ``templates`` (messages of one layout written and read around their tensors' data, for repeated
calls); ``wire`` walks protobuf's framing as strictly as protobuf reads it (for the templates and the server's ``blobs``),
``limits`` holds what a request may contain and ``errors`` the codec's errors.

Nothing from the wire is trusted: dtypes, shapes, byte lengths, names, nesting and sizes are checked
before any array is allocated, and every failure is a :class:`WireError` whose ``field`` is the path
of the offending field (``graph.nodes[3].inputs[1]``), ready for a google.rpc.BadRequest. Exceeded
limits raise :class:`LimitError` (RESOURCE_EXHAUSTED); gradients through ops without one raise the
engine's NotDifferentiableError (UNIMPLEMENTED) with the field path prefixed.
"""
from .attrs import decode_attr, encode_attr
from .calls import (
    REQUEST_BYTES_HEADER,
    Call,
    apply_grad_operation,
    decode_grad_call,
    decode_parameter_overrides,
    decode_run_call,
    encode_grad_operation,
    request_bytes_metadata,
)
from .catalog import list_ops
from .errors import LimitError, WireError
from .graphs import decode_graph, encode_graph, message_id, network_id
from .limits import DEFAULT_LIMITS, Limits
from .onnx_models import decode_onnx_model
from .templates import Template, TreeReader
from .tensors import (
    decode_dtype,
    decode_tensor,
    decode_tree,
    encode_dtype,
    encode_tensor,
    encode_tree,
    supported_dtypes,
)
from .wire import Irregular, read_fields, read_varint

__all__ = [
    "DEFAULT_LIMITS", "Call", "Irregular", "LimitError", "Limits", "Template", "TreeReader", "WireError", "apply_grad_operation", "decode_attr", "decode_dtype",
    "decode_graph", "decode_grad_call", "decode_onnx_model", "decode_parameter_overrides", "decode_run_call", "decode_tensor", "decode_tree",
    "encode_attr", "encode_dtype", "encode_grad_operation", "encode_graph", "encode_tensor", "encode_tree", "list_ops", "message_id",
    "request_bytes_metadata", "REQUEST_BYTES_HEADER",
    "network_id", "read_fields", "read_varint", "supported_dtypes",
]
