"""Node attributes: engine attribute values <-> gradserve.v1 AttrValue, by the op table's attribute kind."""
from __future__ import annotations

from typing import Any

from gradserve.v1 import graph_pb2 as pb

from .errors import WireError
from .limits import Limits
from .tensors import decode_dtype, decode_tensor, encode_dtype, encode_tensor

_ONEOF_OF_KIND = {
    "int": "int_value",
    "float": "float_value",
    "bool": "bool_value",
    "str": "string_value",
    "ints": "ints",
    "floats": "floats",
    "strs": "strings",
    "dtype": "dtype",
    "tensor": "tensor",
}
"""Which AttrValue field carries each engine attribute kind (the wire schema's own mapping)."""


def decode_attr(msg: pb.AttrValue, kind: str, limits: Limits, field: str, node: str = "") -> Any:
    """The Python value of an AttrValue, which must use the field for ``kind`` (one of ATTR_KINDS)."""
    want = _ONEOF_OF_KIND[kind]
    which = msg.WhichOneof("value")
    if which != want:
        got = f"got {which}" if which else "no value is set"
        raise WireError(field, f"attribute kind is {kind}, so {want} must be set; {got}", node)
    if kind in ("ints", "floats", "strs"):
        return tuple(getattr(msg, want).values)
    if kind == "dtype":
        return decode_dtype(msg.dtype, f"{field}.dtype")
    if kind == "tensor":
        return decode_tensor(msg.tensor, limits, f"{field}.tensor")
    return getattr(msg, want)


def encode_attr(value: Any, kind: str, out: pb.AttrValue | None = None) -> pb.AttrValue:
    """Fill ``out`` (or a new AttrValue) with an engine attribute value of ``kind``."""
    msg = pb.AttrValue() if out is None else out
    field = _ONEOF_OF_KIND[kind]
    if kind in ("ints", "floats", "strs"):
        lst = getattr(msg, field)
        lst.SetInParent()
        lst.values.extend(value)
    elif kind == "dtype":
        msg.dtype = encode_dtype(value)
    elif kind == "tensor":
        encode_tensor(value, msg.tensor)
    else:
        setattr(msg, field, value)
    return msg
