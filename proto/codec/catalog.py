"""The op catalog: the engine's op table as ListOps reports it."""
from __future__ import annotations

from gradserve.engine import OPS
from gradserve.engine.optable import REQUIRED
from gradserve.v1 import service_pb2 as spb

from .attrs import encode_attr


def list_ops() -> spb.ListOpsResponse:
    """Every op of the engine's op table, sorted by name, as ListOps reports it."""
    resp = spb.ListOpsResponse()
    for name in sorted(OPS):
        opdef = OPS[name]
        fixed = opdef.inputs[:-1] if opdef.variadic else opdef.inputs
        m = resp.ops.add(
            name=name,
            inputs=list(fixed),
            variadic_input=opdef.inputs[-1].rstrip("*") if opdef.variadic else "",
            differentiable=opdef.differentiable,
            nondiff_inputs=list(opdef.nondiff),
            doc=opdef.doc,
            outputs=[] if opdef.outputs[-1].endswith("*") else list(opdef.outputs),
            variadic_output=opdef.outputs[-1].rstrip("*") if opdef.outputs[-1].endswith("*") else "",
        )
        for key, spec in opdef.attrs.items():
            a = m.attrs.add(name=key, kind=spb.AttrKind.Value(f"ATTR_KIND_{spec.kind.upper()}"), required=spec.default is REQUIRED, doc=spec.doc)
            if spec.default is not REQUIRED and spec.default is not None:
                encode_attr(spec.default, spec.kind, a.default)
    return resp
