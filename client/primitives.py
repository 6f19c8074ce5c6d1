"""Primitive classes and lower-case functional forms, generated from the engine's op table on first use."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from gradserve.engine import OPS, OpDef, get_op
from gradserve.engine.optable import REQUIRED

from . import dtype as mstype
from .dispatch import apply_op
from .tensor import Tensor


def call_time_attrs(opdef: OpDef) -> tuple[str, ...]:
    """The op's attributes that are given at call time, in call order."""
    return tuple(n for n in opdef.call_attrs if n in opdef.attrs)


def constructor_attrs(opdef: OpDef) -> list[str]:
    """The op's attributes that the primitive's constructor takes, in table order."""
    calls = call_time_attrs(opdef)
    return [k for k in opdef.attrs if k not in calls]


def attr_value(opdef: OpDef, key: str, value: Any) -> Any:
    """A caller's attribute value in the engine's form: the attribute's own ``convert`` first (MindSpore's spelling)."""
    spec = opdef.attrs[key]
    if spec.convert is not None:
        value = spec.convert(value)
    if spec.kind == "dtype":
        return mstype.to_numpy(value)
    return tuple(value) if isinstance(value, list) else value


class Primitive:
    """A MindSpore primitive: constructor arguments are the op's attributes; calling it applies the op."""

    name: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        opdef = get_op(self.name)
        ctor = constructor_attrs(opdef)
        if len(args) > len(ctor):
            raise TypeError(f"ops.{self.name} takes {len(ctor)} constructor arguments {ctor}, got {len(args)}")
        given = dict(zip(ctor, args))
        for k, v in kwargs.items():
            if k not in ctor or k in given:
                why = "is given twice" if k in given else f"is not one of its constructor arguments {ctor}"
                hint = f" (pass {k} when calling the primitive)" if k in call_time_attrs(opdef) else ""
                raise TypeError(f"ops.{self.name}: argument {k!r} {why}{hint}")
            given[k] = v
        self.attrs = {k: attr_value(opdef, k, v) for k, v in given.items()}

    def __repr__(self) -> str:
        return f"Prim[{self.name}]" + (f"<{', '.join(f'{k}={v}' for k, v in self.attrs.items())}>" if self.attrs else "")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        opdef = get_op(self.name)
        calls = call_time_attrs(opdef)
        if opdef.call_order:
            tensors, positional = _bind_in_order(opdef, args)
        else:
            tensors, extra = _split_inputs(opdef, args)
            if len(extra) > len(calls):
                raise TypeError(
                    f"ops.{self.name} takes inputs ({', '.join(opdef.inputs)})"
                    + (f" then {', '.join(calls)}" if calls else "") + f", got {len(args)} arguments"
                )
            positional = list(zip(calls, extra))
        attrs = dict(self.attrs)
        for k, v in positional + list(kwargs.items()):
            if k not in calls or k in attrs:
                raise TypeError(f"ops.{self.name}: call argument {k!r} is unknown or given twice; call arguments: {list(calls)}")
            attrs[k] = attr_value(opdef, k, v)
        for k in calls:
            if k not in attrs and opdef.attrs[k].default is REQUIRED:
                raise TypeError(f"ops.{self.name}: missing call argument {k!r}")
        return apply_op(self.name, *tensors, **attrs)


def _bind_in_order(opdef: OpDef, args: tuple[Any, ...]) -> tuple[list[Any], list[tuple[str, Any]]]:
    """Positional call arguments bound by the op's ``call_order`` (inputs interleaved with call attributes, as
    MindSpore's OneHot takes ``(indices, depth, on_value, off_value)``): the inputs, and (attribute, value) pairs."""
    order = opdef.call_order
    if len(args) > len(order):
        raise TypeError(f"ops.{opdef.name} takes ({', '.join(order)}), got {len(args)} arguments")
    bound = dict(zip(order, args))
    missing = [n for n in opdef.inputs if n not in bound]
    if missing:
        raise TypeError(f"ops.{opdef.name} takes ({', '.join(order)}); missing input(s) {', '.join(missing)}")
    return [bound[n] for n in opdef.inputs], [(n, v) for n, v in bound.items() if n not in opdef.inputs]


def _split_inputs(opdef: OpDef, args: tuple[Any, ...]) -> tuple[list[Any], tuple[Any, ...]]:
    """Tensor inputs (a variadic op takes one tuple or list of them, as MindSpore's Concat does) and the rest."""
    n = len(opdef.inputs)
    if opdef.variadic and args and isinstance(args[0], (tuple, list)):
        tensors, extra = list(args[0]), args[1:]
    elif opdef.variadic:
        k = next((i for i, a in enumerate(args) if not isinstance(a, Tensor)), len(args))
        tensors, extra = list(args[: max(k, n - 1)]), args[max(k, n - 1):]
    else:
        tensors, extra = list(args[:n]), args[n:]
    want = n - 1 if opdef.variadic else n
    if len(tensors) < want:
        raise TypeError(f"ops.{opdef.name} takes {'at least ' if opdef.variadic else ''}{want} inputs ({', '.join(opdef.inputs)}), got {len(tensors)}")
    return tensors, extra


_CLASSES: dict[str, type[Primitive]] = {}


def primitive_class(name: str) -> type[Primitive]:
    """The primitive class for engine op ``name`` (``ops.MatMul``), created once."""
    cls = _CLASSES.get(name)
    if cls is None:
        opdef = get_op(name)
        cls = type(name, (Primitive,), {"name": name, "__doc__": opdef.doc, "__module__": "gradserve.ops"})
        _CLASSES[name] = cls
    return cls


def functional(op: str, name: str) -> Callable[..., Any]:
    """``ops.concat((a, b), 0)``, ``ops.reduce_sum(x, 1, keep_dims=True)``: the op's inputs (a tuple or list for a
    variadic op), then its attributes in the op table's order, positionally or by name (MindSpore's functional order);
    an op with a ``call_order`` takes that order first, then its other attributes (``ops.one_hot(i, depth, on, off, axis)``).
    ``name`` is one of the op's ``functional`` names, used in messages."""
    opdef = get_op(op)
    first = list(opdef.call_order)
    order = [k for k in opdef.attrs if k not in first]

    def apply(*args: Any, **kwargs: Any) -> Any:
        if first:
            tensors, positional = _bind_in_order(opdef, args[: len(first)])
            extra = args[len(first):]
        else:
            tensors, extra = _split_inputs(opdef, args)
            positional = []
        if len(extra) > len(order):
            lead = ", ".join(first) if first else f"inputs ({', '.join(opdef.inputs)})"
            raise TypeError(f"ops.{name} takes {lead}" + (f" then {', '.join(order)}" if order else "") + f", got {len(args)} arguments")
        attrs = dict(positional) | dict(zip(order, extra))
        for k, v in kwargs.items():
            if k not in opdef.attrs or k in attrs:
                why = "is given twice" if k in attrs else f"is unknown; its arguments after the inputs: {list(opdef.attrs)}"
                raise TypeError(f"ops.{name}: argument {k!r} {why}")
            attrs[k] = v
        for k in opdef.attrs:
            if k not in attrs and opdef.attrs[k].default is REQUIRED:
                raise TypeError(f"ops.{name}: missing argument {k!r}")
        return apply_op(op, *tensors, **{k: attr_value(opdef, k, v) for k, v in attrs.items()})

    apply.__name__ = apply.__qualname__ = name
    apply.__doc__ = opdef.doc
    return apply


_NAMES: dict[str, str] = {}
_FORMS: dict[str, Callable[..., Any]] = {}
_TABLE_SIZE = [-1]


def functional_names() -> dict[str, str]:
    """Each generated function's MindSpore name and its op (the public ops' ``functional`` fields): built once, and
    again only when ops were added to the table since, so ``ops.<name>`` is one dict lookup."""
    if _TABLE_SIZE[0] != len(OPS):
        names: dict[str, str] = {}
        for op, opdef in OPS.items():
            for name in opdef.functional if opdef.public else ():
                if name in names:
                    raise ValueError(f"functional name {name!r} is given by two ops, {names[name]} and {op}")
                names[name] = op
        _NAMES.clear()
        _NAMES.update(names)
        _FORMS.clear()
        _TABLE_SIZE[0] = len(OPS)
    return _NAMES


def lookup(name: str) -> Any:
    """``ops.<name>``: a primitive class by op name, a generated function by one of its op's MindSpore names, else None."""
    opdef = OPS.get(name)
    if opdef is not None and opdef.public:
        return primitive_class(name)
    op = functional_names().get(name)
    if op is None:
        return None
    form = _FORMS.get(name)
    if form is None:
        form = _FORMS[name] = functional(op, name)
    return form


def public_names() -> list[str]:
    """Every primitive and generated function name currently available."""
    return sorted([op for op in OPS if OPS[op].public] + list(functional_names()))
