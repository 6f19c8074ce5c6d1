"""Tensor and attribute encoding: bit-exact round trips for every dtype, the byte layout, and
rejection of malformed tensors before anything is allocated."""
from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradserve.engine import ATTR_KINDS, DTYPES
from gradserve.proto import codec
from gradserve.proto.codec import attrs, tensors
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2 as spb

ROOT = Path(__file__).resolve().parent.parent


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def arrays_of_every_dtype() -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
    return st.sampled_from(sorted(DTYPES)).flatmap(lambda name: hnp.arrays(DTYPES[name], shapes))


@settings(max_examples=150, deadline=None)
@given(arrays_of_every_dtype())
def test_tensor_round_trip_is_bit_exact(a: np.ndarray) -> None:
    msg = codec.encode_tensor(a)
    assert len(msg.data) == a.size * a.itemsize and list(msg.shape) == list(a.shape)
    back = codec.decode_tensor(pb.Tensor.FromString(msg.SerializeToString()))
    assert back.dtype == a.dtype and back.shape == a.shape and _bits(back) == _bits(a)
    assert not back.flags.writeable and not back.flags.owndata  # a view of the message bytes
    assert codec.encode_tensor(back) == msg


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_engine_dtype_has_a_wire_enum(name: str) -> None:
    enum = codec.encode_dtype(DTYPES[name])
    assert pb.DataType.Name(enum) == f"DATA_TYPE_{name.upper()}"
    assert codec.decode_dtype(enum, "f") == DTYPES[name]
    assert enum in codec.supported_dtypes()


def test_layout_is_little_endian_c_order_even_from_big_endian_arrays() -> None:
    x = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], np.float32)
    want = struct.pack("<6f", 0.8, 0.6, 0.2, 1.8, 1.3, 1.1)
    assert codec.encode_tensor(x).data == want
    assert codec.encode_tensor(x.astype(">f4")).data == want
    assert codec.encode_tensor(np.asfortranarray(x)).data == want
    assert codec.encode_tensor(np.repeat(x, 2, axis=1)[:, ::2]).data == want  # a strided view
    assert want.hex(" ") in (ROOT / "docs" / "wire-format.md").read_text()


def test_bfloat16_is_in_the_enum_but_rejected_with_a_clear_error() -> None:
    msg = pb.Tensor(dtype=pb.DATA_TYPE_BFLOAT16, shape=[2], data=b"\0" * 4)
    with pytest.raises(codec.WireError) as e:
        codec.decode_tensor(msg, field="inputs[0]")
    assert e.value.field == "inputs[0].dtype"
    assert "DATA_TYPE_BFLOAT16 is not supported" in str(e.value) and "DATA_TYPE_FLOAT32" in str(e.value)


@pytest.mark.parametrize(
    ("msg", "field", "text"),
    [
        (pb.Tensor(shape=[1], data=b"\0" * 4), "t.dtype", "not set"),
        (pb.Tensor(dtype=99, shape=[1], data=b"\0" * 4), "t.dtype", "unknown enum value 99"),  # type: ignore[arg-type]
        (pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, -1], data=b""), "t.shape[1]", "negative"),
        (pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 3], data=b"\0" * 23), "t.data", "has 23 bytes"),
        (pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[], data=b""), "t.data", "needs 1 elements x 4 bytes = 4"),
        (pb.Tensor(dtype=pb.DATA_TYPE_BOOL, shape=[2], data=b"\x01\x02"), "t.data", "0x00 or 0x01"),
    ],
)
def test_malformed_tensors_are_rejected_naming_the_field(msg: pb.Tensor, field: str, text: str) -> None:
    with pytest.raises(codec.WireError) as e:
        codec.decode_tensor(msg, field="t")
    assert e.value.field == field and text in str(e.value)
    assert not isinstance(e.value, codec.LimitError)


def test_limits_raise_limit_errors() -> None:
    small = codec.Limits(max_tensor_elements=10, max_tensor_rank=3)
    with pytest.raises(codec.LimitError, match="exceeds the limit of 10 elements") as e:
        codec.decode_tensor(pb.Tensor(dtype=pb.DATA_TYPE_INT8, shape=[4, 4], data=b"\0" * 16), small, "t")
    assert e.value.field == "t.shape"
    with pytest.raises(codec.LimitError, match="rank 4"):
        codec.decode_tensor(pb.Tensor(dtype=pb.DATA_TYPE_INT8, shape=[1, 1, 1, 1], data=b"\0"), small, "t")
    with pytest.raises(codec.LimitError):  # an empty tensor may not hide huge dimensions either
        codec.decode_tensor(pb.Tensor(dtype=pb.DATA_TYPE_INT8, shape=[0, 11], data=b""), small, "t")
    assert codec.decode_tensor(pb.Tensor(dtype=pb.DATA_TYPE_INT8, shape=[0, 10], data=b""), small).shape == (0, 10)


def test_wrong_byte_length_is_rejected_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message claiming 2**26 float64 elements (512 MiB) with 8 bytes of data costs no memory."""
    msg = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT64, shape=[1 << 13, 1 << 13], data=b"\0" * 8)
    monkeypatch.setattr(tensors.np, "frombuffer", lambda *a, **k: pytest.fail("allocated before validating"))
    tracemalloc.start()
    try:
        with pytest.raises(codec.WireError, match="needs 67108864 elements x 8 bytes"):
            codec.decode_tensor(msg, codec.Limits(max_tensor_elements=1 << 26), "inputs[0]")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 16


KIND_VALUES = {
    "int": st.integers(-(1 << 63), (1 << 63) - 1),
    "float": st.floats(allow_nan=False),
    "bool": st.booleans(),
    "str": st.text(),
    "ints": st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=5).map(tuple),
    "floats": st.lists(st.floats(allow_nan=False), max_size=5).map(tuple),
    "strs": st.lists(st.text(), max_size=5).map(tuple),
    "dtype": st.sampled_from(sorted(DTYPES)).map(lambda n: DTYPES[n]),
    "tensor": arrays_of_every_dtype(),
}


def test_every_attribute_kind_has_a_wire_form() -> None:
    assert set(KIND_VALUES) == set(ATTR_KINDS)
    assert {spb.AttrKind.Name(v) for v in spb.AttrKind.values()} == {"ATTR_KIND_UNSPECIFIED"} | {
        f"ATTR_KIND_{k.upper()}" for k in ATTR_KINDS
    }


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ATTR_KINDS).flatmap(lambda k: st.tuples(st.just(k), KIND_VALUES[k])))
def test_attribute_round_trip(kind_value: tuple) -> None:
    kind, value = kind_value
    msg = pb.AttrValue.FromString(codec.encode_attr(value, kind).SerializeToString())
    back = codec.decode_attr(msg, kind, codec.DEFAULT_LIMITS, "a")
    if kind == "tensor":
        assert back.dtype == value.dtype and back.shape == value.shape and _bits(back) == _bits(value)
    else:
        assert back == value and type(back) is type(value)
    assert codec.encode_attr(back, kind) == msg
    other = next(k for k in ATTR_KINDS if k != kind and attrs._ONEOF_OF_KIND[k] != attrs._ONEOF_OF_KIND[kind])
    with pytest.raises(codec.WireError, match=f"attribute kind is {other}"):
        codec.decode_attr(msg, other, codec.DEFAULT_LIMITS, "a")
