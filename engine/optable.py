"""The one op table: each primitive is defined once, with its attributes, inference, forward and VJP rule.

A VJP rule has the form ``vjp(g, out, *inputs, **attrs)``: ``g`` is the output cotangent (a tuple
of them for multi-output ops, zeros where an output got none), ``out`` the node's output (a tuple for
multi-output ops), ``inputs`` the node's input Values. It returns one cotangent per input (a bare
Value when there is one input), or None where an input takes no gradient. Rules are written with
graph ops (``F.Cos(x)``, Value arithmetic), never raw NumPy, so gradients are graphs in the same IR.
Cotangents may come back broadcast or in another dtype: the transform un-broadcasts and casts them.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import dtypes
from .errors import NAME_LIMIT, DTypeError, GraphError, ShapeError, shown, shown_names
from .ir import TensorType, Value, check_type_shape

if TYPE_CHECKING:
    from .builder import GraphBuilder

REQUIRED = object()

ATTR_KINDS = ("int", "float", "bool", "str", "ints", "floats", "strs", "dtype", "tensor")


@dataclass(frozen=True)
class Attr:
    """An attribute's kind (one of ATTR_KINDS), default (REQUIRED if none) and meaning; ``convert``, when given,
    turns MindSpore's spelling of the value into this attribute's (Pad's ((before, after), ...) pairs flattened),
    applied by the SDK to what its caller passes."""

    kind: str
    default: Any = REQUIRED
    doc: str = ""
    convert: Callable[[Any], Any] | None = None


MEMORY_KINDS = ("new", "view", "maybe_view")

Cost = Callable[[Sequence[TensorType], Sequence[TensorType], dict[str, Any]], int]
"""``cost(input types, output types, attrs)``: an op's static work estimate in element operations."""


def traffic_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """The default cost: every element read and written once."""
    return sum(t.size for t in inputs) + sum(t.size for t in outputs)


def view_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """A view moves no elements: one unit per output for the bookkeeping."""
    return len(outputs)


def scaled_cost(passes: int) -> Cost:
    """The cost of an op that makes ``passes`` elementwise passes over its inputs' elements (Softmax, LayerNorm)."""

    def cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
        """``passes`` times the elements read, plus those written."""
        return passes * sum(t.size for t in inputs) + sum(t.size for t in outputs)

    return cost


@dataclass(frozen=True)
class OnnxCall:
    """What an op's export rule sees of one node: the ONNX names of its inputs (``x``) and outputs (``y``), their
    types, the node's attributes, the opset being written, and ``tmp(label)``, a name for a temporary of its own."""

    x: tuple[str, ...]
    y: tuple[str, ...]
    types: tuple[TensorType, ...]
    out_types: tuple[TensorType, ...]
    attrs: dict[str, Any]
    opset: int
    prefix: str

    def tmp(self, label: str) -> str:
        """A value name no other node of the model uses."""
        return f"{self.prefix}/{label}"


OnnxRule = Callable[[OnnxCall], Sequence[tuple[Any, ...]]]
"""``onnx(call)``: the standard ONNX (``ai.onnx`` domain) nodes one engine node becomes, in order, each a plain tuple
``(op_type, inputs, outputs)`` or ``(op_type, inputs, outputs, attributes)``. An input is a value name, ``""`` for an
omitted optional input, or a NumPy array (a constant); attribute values are Python numbers, strings, lists, NumPy
arrays (tensors) or NumPy dtypes (ONNX element types). The nodes must write ``call.y``; temporaries are named by
``call.tmp``. The op table stays free of the ``onnx`` package: ``engine/onnx_export.py`` builds the protos."""


@dataclass(frozen=True)
class OpDef:
    """Everything about one primitive.

    ``inputs`` names the inputs (a last name ending in ``*`` takes any number of further values); ``infer(types, **attrs)``
    returns the output TensorType (a tuple for multi-output ops) and raises ShapeError/DTypeError;
    ``forward(*arrays, **attrs)`` computes with NumPy; ``vjp`` is the rule described in the module doc,
    or None when the op has no gradient (asking for one raises NotDifferentiableError);
    ``nondiff`` names inputs that never take a gradient (indices, conditions); ``type_only`` marks ops
    whose output depends on their inputs' types alone (OnesLike), which the compiler may fold;
    ``outputs`` names the outputs (a single name ending in ``*`` means a count set by attributes: Split's
    ``output_num``, GradOperation's flags); ops with several or a variable number return a tuple whatever the count;
    ``expand(library, attrs)``, on an op that carries a library graph (GradOperation and the functional
    transforms), returns the graph its node stands for: it takes the node's inputs and its flattened outputs are
    the node's outputs; such ops are expanded into primitives before differentiation or execution, and their
    ``infer`` also receives the builder (to see its library); ``calls`` names the attributes that name library
    functions (the structural hash and the codec follow them);
    ``memory`` says what ``forward`` returns: ``"new"`` buffers, a ``"view"`` of input 0 (no new bytes; it keeps
    input 0's buffer alive), or ``"maybe_view"`` (either, so counted as new bytes that also keep input 0 alive);
    ``cost(inputs, outputs, attrs)`` is the op's static work estimate in element operations (FLOPs for products),
    by default the elements it reads and writes (nothing for a view); ``scratch`` bounds the temporaries ``forward``
    holds at once besides its outputs, in multiples of its first input's bytes (Softmax's shifted copy);
    ``scratch_bytes(inputs, outputs, attrs)``, when given, is that bound in bytes from the node's types and attributes,
    used instead of ``scratch`` (a convolution's im2col columns grow with kernel and output size, not with its input);
    ``output_count(attrs)`` gives the number of
    outputs of an op whose count is set by attributes (Split), so it is checked before inference builds them;
    ``call_attrs`` names the attributes MindSpore's primitive takes when called, after the tensors, in call order
    (``ops.Reshape()(x, shape)``); ``call_order``, when given, is MindSpore's order of those call arguments with
    the inputs interleaved (``ops.OneHot()(indices, depth, on_value, off_value)``), else the inputs come first;
    ``public`` is False for ops the SDK does not offer as ``ops.<Name>`` (constants,
    ops with a class of their own, transforms);
    ``onnx``, when given, is the op's export rule (:data:`OnnxRule`): the ONNX nodes a node of this op becomes;
    ``functional`` names MindSpore 2.x's lower-case functions that are this op's generated form (the op's inputs, then
    its attributes in table order: ``ops.cumsum`` is not CumSum's, ``ops.concat`` and ``ops.cat`` are Concat's); an op
    without one has no generated function (the SDK writes MindSpore's own in ``client/functional.py``);
    ``out`` marks an op whose ``forward`` always returns a fresh array of rank >= 1 and takes ``out=``, a dead buffer of
    its result's dtype and shape to write into (none of its inputs), which the compiler passes to spare an allocation;
    ``linear``, when given, is one coefficient per input such that on floating dtypes the op's result is the sum of its
    inputs times them (Add (1, 1), Sub (1, -1), Neg (-1,)), broadcasting included: the compiler flattens chains of such
    ops into one sum per result and regroups its terms (:func:`compiler._sums`); ``factors``, on a two-input op linear
    in each input (a product: Mul, MatMul), names the inputs a sum of its results may share: ``op(a, y) + op(b, y)`` is
    ``op(a + b, y)`` for a shared input y at such a position (either, for Mul), which the same pass uses to save products;
    ``bind(attrs, input_types)``, when given, is ``forward`` for a node of those attributes and input types, called with
    the inputs (and ``out=``) alone: a compiled step calls it instead of passing the attributes as keywords each time,
    and what they and the static types settle is settled once (MatMul's transposes, and whether it is an outer product).
    """

    name: str
    inputs: tuple[str, ...]
    infer: Callable[..., Any]
    forward: Callable[..., Any]
    vjp: Callable[..., Any] | None
    attrs: dict[str, Attr] = field(default_factory=dict)
    doc: str = ""
    nondiff: tuple[str, ...] = ()
    type_only: bool = False
    outputs: tuple[str, ...] = ("y",)
    memory: str = "new"
    cost: Cost = traffic_cost
    output_count: Callable[[dict[str, Any]], int] | None = None
    scratch: int = 0
    expand: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None
    calls: tuple[str, ...] = ()
    call_attrs: tuple[str, ...] = ()
    public: bool = True
    scratch_bytes: Cost | None = None
    call_order: tuple[str, ...] = ()
    onnx: OnnxRule | None = None
    functional: tuple[str, ...] = ()
    out: bool = False
    linear: tuple[float, ...] = ()
    factors: tuple[int, ...] = ()
    bind: Callable[[dict[str, Any], Sequence[TensorType]], Callable[..., Any]] | None = None
    lowered: bool = field(init=False, repr=False, compare=False)
    """True for ops expanded into primitives before differentiation or execution (they carry a library graph); a field,
    not a property, as a builder reads it for every node it adds."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lowered", self.expand is not None)

    def scratch_of(self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
        """Bytes of temporaries one step of this op holds besides its outputs: ``scratch_bytes`` or ``scratch`` times input 0."""
        if self.scratch_bytes is not None:
            return self.scratch_bytes(inputs, outputs, attrs)
        return self.scratch * inputs[0].nbytes if self.scratch and inputs else 0

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].endswith("*")

    @property
    def multi_output(self) -> bool:
        """True when the op's result is a tuple: several outputs, or a count set by an attribute."""
        return len(self.outputs) > 1 or self.outputs[0].endswith("*")

    @property
    def differentiable(self) -> bool:
        """True when gradients can pass through: a VJP rule, or expansion into ops that have them."""
        return self.vjp is not None or self.lowered


OPS: dict[str, OpDef] = {}


def defop(
    name: str,
    inputs: Sequence[str],
    infer: Callable[..., Any],
    forward: Callable[..., Any],
    vjp: Callable[..., Any] | None,
    attrs: dict[str, Attr] | None = None,
    doc: str = "",
    nondiff: Sequence[str] = (),
    type_only: bool = False,
    outputs: Sequence[str] = ("y",),
    memory: str = "new",
    cost: Cost | None = None,
    output_count: Callable[[dict[str, Any]], int] | None = None,
    scratch: int = 0,
    expand: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None,
    calls: Sequence[str] = (),
    call_attrs: Sequence[str] = (),
    public: bool = True,
    scratch_bytes: Cost | None = None,
    call_order: Sequence[str] = (),
    onnx: OnnxRule | None = None,
    functional: str | Sequence[str] = (),
    out: bool = False,
    linear: Sequence[float] = (),
    factors: Sequence[int] = (),
    bind: Callable[[dict[str, Any], Sequence[TensorType]], Callable[..., Any]] | None = None,
) -> OpDef:
    """Register one primitive in the table; a name may be defined only once."""
    if name in OPS:
        raise ValueError(f"op {name!r} is defined twice")
    if memory not in MEMORY_KINDS:
        raise ValueError(f"op {name!r}: memory must be one of {MEMORY_KINDS}, got {memory!r}")
    if factors and (len(inputs) != 2 or not set(factors) <= {0, 1}):
        raise ValueError(f"op {name!r}: factors names positions of a two-input op, got {tuple(factors)}")
    if linear and len(linear) != len(inputs):
        raise ValueError(f"op {name!r}: linear must give one coefficient per input, got {tuple(linear)}")
    if call_order and sorted(call_order) != sorted((*inputs, *call_attrs)):
        raise ValueError(f"op {name!r}: call_order must list the inputs and call_attrs once each, got {tuple(call_order)}")
    cost = cost or (view_cost if memory == "view" else traffic_cost)
    opdef = OpDef(
        name, tuple(inputs), infer, forward, vjp, dict(attrs or {}), doc, tuple(nondiff), type_only, tuple(outputs),
        memory, cost, output_count, scratch, expand, tuple(calls), tuple(call_attrs), public, scratch_bytes,
        tuple(call_order), onnx, (functional,) if isinstance(functional, str) else tuple(functional), out, tuple(linear),
        tuple(factors), bind,
    )
    OPS[name] = opdef
    return opdef


def get_op(name: str, where: str = "") -> OpDef:
    """Look an op up by name; an unknown name is a GraphError listing the closest known names."""
    try:
        return OPS[name]
    except KeyError:
        close = difflib.get_close_matches(name, OPS, n=3, cutoff=0.5) if len(name) <= NAME_LIMIT else []
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GraphError(f"{where + ': ' if where else ''}unknown op {shown(name)}{hint}") from None


_ELEMENT_TYPES = {"ints": (int,), "floats": (int, float), "strs": (str,)}
"""Python types a list attribute's elements may have without conversion (the codec's and most callers')."""


def _check_attr(op: str, node: str, key: str, spec: Attr, v: Any) -> Any:
    """Return ``v`` in the attribute's canonical Python form, or raise naming node and attribute."""
    k = spec.kind

    def bad() -> GraphError:
        return GraphError(f"{op} {shown(node)}: attribute {shown(key)} must be {k}, got {shown(v)}")

    if k == "bool":
        if not isinstance(v, (bool, np.bool_)):
            raise bad()
        return bool(v)
    if k == "int":
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise bad()
        return int(v)
    if k == "float":
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise bad()
        return float(v)
    if k == "str":
        if not isinstance(v, str):
            raise bad()
        return v
    if k in ("ints", "floats", "strs"):
        if isinstance(v, (int, np.integer)) and k == "ints" and not isinstance(v, bool):
            v = (v,)
        if not isinstance(v, (list, tuple, np.ndarray)):
            raise bad()
        plain = _ELEMENT_TYPES[k]
        if all(type(x) in plain for x in v):
            return tuple(float(x) for x in v) if k == "floats" else tuple(v)
        elem = {"ints": "int", "floats": "float", "strs": "str"}[k]
        return tuple(_check_attr(op, node, key, Attr(elem), x) for x in v)
    if k == "dtype":
        try:
            return dtypes.as_dtype(v)
        except TypeError as exc:
            raise GraphError(f"{op} {shown(node)}: attribute {shown(key)}: {exc}") from None
    if k == "tensor":
        if not isinstance(v, np.ndarray):
            raise bad()
        return v
    raise AssertionError(f"unknown attribute kind {k}")


MAX_OUTPUTS = 1 << 16
"""Most outputs one node may have."""


def _expected_outputs(opdef: OpDef, attrs: dict[str, Any]) -> int | None:
    """How many outputs the node will have, known from the op and its attributes alone (None: only inference knows)."""
    if opdef.output_count is not None:
        return opdef.output_count(attrs)
    return None if opdef.multi_output and opdef.outputs[-1].endswith("*") else len(opdef.outputs)


def infer_node(
    opdef: OpDef, node: str, inputs: list[Value], attrs: dict[str, Any], builder: GraphBuilder, n_outputs: int | None = None
) -> tuple[dict[str, Any], tuple[TensorType, ...]]:
    """Check a node's arity and attributes and infer its output types; errors name op, node and shapes.
    ``n_outputs`` is the number of output names the caller gave, checked before inference when the op's
    attributes already fix the count; every inferred type must be a shape NumPy can hold."""
    op = opdef.name
    n_fixed = len(opdef.inputs) - (1 if opdef.variadic else 0)
    if (opdef.variadic and len(inputs) < n_fixed) or (not opdef.variadic and len(inputs) != n_fixed):
        want = f"at least {n_fixed}" if opdef.variadic else str(n_fixed)
        raise GraphError(f"{op} {shown(node)}: takes {want} inputs ({', '.join(opdef.inputs)}), got {len(inputs)}")
    if attrs and not attrs.keys() <= opdef.attrs.keys():
        unknown = set(attrs) - set(opdef.attrs)
        raise GraphError(f"{op} {shown(node)}: unknown attribute(s) {shown_names(sorted(unknown))}; {op} takes {sorted(opdef.attrs) or 'none'}")
    full: dict[str, Any] = {}
    for key, spec in opdef.attrs.items():
        if key in attrs:
            full[key] = _check_attr(op, node, key, spec, attrs[key])
        elif spec.default is REQUIRED:
            raise GraphError(f"{op} {shown(node)}: missing required attribute {key!r}")
        else:
            full[key] = spec.default
    count = _expected_outputs(opdef, full)
    if count is not None and count >= 1 and n_outputs is not None and count != n_outputs:
        raise GraphError(f"{op} {shown(node)}: {n_outputs} output names given, the op has {count} outputs")
    if count is not None and count > MAX_OUTPUTS:
        raise GraphError(f"{op} {shown(node)}: would have {count} outputs; at most {MAX_OUTPUTS} are supported")
    types = [v.type for v in inputs]
    try:
        # Lowered ops (those with expand) infer from the builder's function library; every other op sees types only.
        out = opdef.infer(types, builder=builder, **full) if opdef.lowered else opdef.infer(types, **full)
        outs = out if isinstance(out, tuple) else (out,)
        for i, t in enumerate(outs):
            check_type_shape(t.shape, f"output {i}" if len(outs) > 1 else "the output", t.dtype.itemsize)
    except (ShapeError, DTypeError) as exc:
        shapes = ", ".join(f"{shown(v.name)}: {v.type}" for v in inputs[:8]) + (", ..." if len(inputs) > 8 else "")
        raise type(exc)(f"{op} {shown(node)}: {exc} (inputs {shapes})") from None
    except GraphError as exc:
        raise GraphError(f"{op} {shown(node)}: {exc}") from None
    return full, outs


class _OpNamespace:
    """``F.Cos(x)`` adds a Cos node to the builder that owns ``x``: the spelling used inside VJP rules."""

    def __getattr__(self, op: str) -> Callable[..., Any]:
        def apply(*inputs: Value, **attrs: Any) -> Any:
            owner = next((v.builder for v in inputs if isinstance(v, Value)), None)
            if owner is None:
                raise GraphError(f"F.{op}: needs at least one Value input")
            return owner.op(op, *inputs, **attrs)

        apply.__name__ = op
        return apply


F = _OpNamespace()


def total(terms: Sequence[Value] | None) -> Value | None:
    """The sum of cotangent terms by Add nodes, left to right; None when there are none."""
    if not terms:
        return None
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


# ---- shape and dtype helpers shared by the op definitions ----

def same_dtype(types: Sequence[TensorType], what: str = "inputs") -> np.dtype:
    """The common dtype of ``types``; mixing dtypes is a DTypeError (casts are explicit in this IR)."""
    first = types[0].dtype
    if all(t.dtype == first for t in types):
        return first
    dts = {t.dtype for t in types}
    if len(dts) != 1:
        raise DTypeError(f"{what} must share one dtype, got {', '.join(sorted(d.name for d in dts))}")
    return types[0].dtype


def require_float(t: TensorType, what: str = "input") -> None:
    if not dtypes.is_float(t.dtype):
        raise DTypeError(f"{what} must be a float dtype, got {t.dtype.name}")


def broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes, as a ShapeError naming them when they do not broadcast."""
    if all(s == shapes[0] for s in shapes):
        return tuple(shapes[0])
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def require_nonempty(shape: tuple[int, ...], axes: Sequence[int], what: str) -> None:
    """For reductions without an identity (max, softmax's max): every reduced axis must have elements."""
    empty = [a for a in axes if shape[a] == 0]
    if empty:
        raise ShapeError(f"{what} over axis {empty[0]} of shape {shape} is undefined: the axis is empty and max has no identity")


def norm_axis(axis: int, ndim: int, what: str = "axis") -> int:
    """A possibly negative axis as a non-negative one, or a ShapeError."""
    if not -ndim <= axis < max(ndim, 1):
        raise ShapeError(f"{what} {axis} is out of range for rank {ndim}")
    return axis % ndim if ndim else 0
