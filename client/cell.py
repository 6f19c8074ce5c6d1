"""nn.Cell: a network with a ``construct``, its Parameters and child Cells, named the way MindSpore names them."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

from . import epoch
from .custom import call_in_trace
from .parameter import DEFAULT_NAME, Parameter, ParameterTuple
from .runner import run_network
from .tensor import Tensor
from .tracing import current_frame, input_names


class Cell:
    """Base class of networks: define ``construct``; calling the Cell traces it (once per input signature) and runs it."""

    def __init__(self, auto_prefix: bool = True, flags: dict[str, Any] | None = None) -> None:
        epoch.bump()
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_cells", {})
        object.__setattr__(self, "_auto_prefix", auto_prefix)
        object.__setattr__(self, "flags", dict(flags or {}))
        object.__setattr__(self, "training", False)
        object.__setattr__(self, "requires_grad", False)
        object.__setattr__(self, "_next_tuple_id", 1)
        self.__dict__.update(self.flags)

    def construct(self, *inputs: Any) -> Any:
        """The network's computation; subclasses override it."""
        raise NotImplementedError(f"{type(self).__name__} must define construct()")

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"{type(self).__name__}: pass inputs positionally (got keywords {sorted(kwargs)})")
        if current_frame() is not None:
            input_names(self, len(inputs))
            return call_in_trace(self, inputs)
        return run_network(self, inputs)

    def extend_repr(self) -> str:
        """The settings shown inside this cell's repr, ``Dense<input_channels=3, ...>`` (MindSpore's hook; none here)."""
        return ""

    def __repr__(self) -> str:
        """MindSpore's layout, as ``print(net)`` shows it: ``Name<settings>``, or each child cell on its own
        indented line ``(attribute): repr``, after the settings."""
        extra = self.extend_repr()
        if not self._cells:
            return f"{type(self).__name__}<{extra}>"
        body = "\n" + (f"{extra}\n" if extra else "")
        body += "".join(f"({key}): {cell!r}\n" for key, cell in self._cells.items())
        return f"{type(self).__name__}<" + body.replace("\n", "\n  ") + ">"

    # ---- attributes: Parameters and child Cells are registered in definition order; every change but a held
    # Parameter's new value moves the trace epoch (client/epoch.py) ----

    def _registry(self, name: str) -> tuple[dict[str, Parameter | None], dict[str, Cell | None]]:
        d = self.__dict__
        if "_params" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before setting attribute {name!r}")
        return d["_params"], d["_cells"]

    def __setattr__(self, name: str, value: Any) -> None:
        params, cells = self._registry(name)
        if isinstance(value, Tensor) and not isinstance(value, Parameter) and (held := params.get(name)) is not None:
            held.set_data(value)
            return
        epoch.bump()
        if isinstance(value, Parameter):
            if value.name == DEFAULT_NAME:
                value.name = name
            self.__dict__.pop(name, None)
            cells.pop(name, None)
            params[name] = value
        elif isinstance(value, Cell):
            if self._auto_prefix:
                value.update_parameters_name(name + ".")
            self.__dict__.pop(name, None)
            params.pop(name, None)
            cells[name] = value
        elif isinstance(value, ParameterTuple):
            self._register_tuple(value)
            params.pop(name, None)
            cells.pop(name, None)
            object.__setattr__(self, name, value)
        else:
            params.pop(name, None)
            cells.pop(name, None)
            object.__setattr__(self, name, value)

    def _register_tuple(self, value: ParameterTuple) -> None:
        """A ParameterTuple attribute's Parameters join the cell's, each under its own name (MindSpore: one still
        called ``Parameter`` becomes ``Parameter$k``); two different Parameters with one name are an error."""
        seen: dict[str, Parameter] = {}
        for p in value:
            if p.name == DEFAULT_NAME:
                p.name = f"{DEFAULT_NAME}${self._next_tuple_id}"
                object.__setattr__(self, "_next_tuple_id", self._next_tuple_id + 1)
            if seen.setdefault(p.name, p) is not p:
                raise ValueError(f"{type(self).__name__}: the ParameterTuple holds two Parameters named {p.name!r}; names must be unique")
            self.insert_param_to_cell(p.name, p, check_name_contain_dot=False)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for registry in (d.get("_params", {}), d.get("_cells", {})):
            if name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        params, cells = self._registry(name)
        epoch.bump()
        if name in params:
            del params[name]
        elif name in cells:
            del cells[name]
        else:
            object.__delattr__(self, name)

    # ---- traversal in MindSpore's order: own parameters first, then child cells depth first ----

    def cells_and_names(self, cells: set[Cell] | None = None, name_prefix: str = "") -> Iterator[tuple[str, Cell]]:
        """This cell and every descendant once, with dotted names (``cells``: cells already visited, skipped)."""
        seen: set[Cell] = set() if cells is None else cells
        stack: list[tuple[str, Cell]] = [(name_prefix, self)]
        while stack:
            name, cell = stack.pop()
            if cell in seen:
                continue
            seen.add(cell)
            yield name, cell
            children = [(f"{name}.{k}" if name else k, c) for k, c in cell._cells.items() if c is not None]
            stack.extend(reversed(children))

    def name_cells(self) -> OrderedDict[str, Cell]:
        """The direct child cells by attribute name, each cell once."""
        out: OrderedDict[str, Cell] = OrderedDict()
        seen: set[int] = set()
        for name, cell in self._cells.items():
            if cell is not None and id(cell) not in seen:
                seen.add(id(cell))
                out[name] = cell
        return out

    def cells(self) -> Any:
        """The direct child cells."""
        return self.name_cells().values()

    def parameters_and_names(self, name_prefix: str = "", expand: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Every Parameter once with its dotted attribute path: own ones in definition order, then each child's."""
        seen: set[int] = set()
        cells = self.cells_and_names(name_prefix=name_prefix) if expand else iter([(name_prefix, self)])
        for cell_name, cell in cells:
            for key, p in cell._params.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{cell_name}.{key}" if cell_name else key), p

    def get_parameters(self, expand: bool = True) -> Iterator[Parameter]:
        """Every Parameter of this cell (and its children when ``expand``)."""
        return (p for _, p in self.parameters_and_names(expand=expand))

    def trainable_params(self, recurse: bool = True) -> list[Parameter]:
        """Parameters with ``requires_grad=True``, in MindSpore's order."""
        return [p for p in self.get_parameters(expand=recurse) if p.requires_grad]

    def untrainable_params(self, recurse: bool = True) -> list[Parameter]:
        """Parameters with ``requires_grad=False``, in MindSpore's order."""
        return [p for p in self.get_parameters(expand=recurse) if not p.requires_grad]

    def update_parameters_name(self, prefix: str = "", recurse: bool = True) -> None:
        """Rename every Parameter to ``prefix`` + its dotted path (what assigning a child Cell does)."""
        for name, p in self.parameters_and_names(expand=recurse):
            p.name = prefix + name

    def parameters_dict(self, recurse: bool = True) -> OrderedDict[str, Parameter]:
        """Every Parameter by its name."""
        return OrderedDict((p.name, p) for p in self.get_parameters(expand=recurse))

    def _insertable(self, method: str, kind: str, name: str, value: Any, cls: type, no_dot: bool) -> dict[str, Any]:
        """The registry (parameters or child cells) where ``name`` may take ``value``, after MindSpore's checks:
        a non-empty name (without '.' when ``no_dot``) not held by another kind of attribute, and ``value`` a
        ``cls`` or None."""
        if not name or not isinstance(name, str):
            raise KeyError(f"{method}: {kind}_name must be a non-empty str, got {name!r}")
        if no_dot and "." in name:
            raise KeyError(f"{method}: {kind}_name {name!r} must not contain '.'")
        params, cells = self._registry(name)
        mine, other = (params, cells) if cls is Parameter else (cells, params)
        if name not in mine and (name in other or name in self.__dict__):
            raise KeyError(f"{method}: {type(self).__name__} already has an attribute {name!r}")
        if value is not None and not isinstance(value, cls):
            raise TypeError(f"{method}: {kind if cls is Parameter else kind + '_cell'} must be a {cls.__name__} or None, "
                            f"got {type(value).__name__}")
        return mine

    def insert_param_to_cell(self, param_name: str, param: Parameter | None, check_name_contain_dot: bool = True) -> None:
        """Register ``param`` under ``param_name`` (what assigning a Parameter attribute does); a Parameter still
        carrying the default name takes ``param_name``."""
        params = self._insertable("insert_param_to_cell", "param", param_name, param, Parameter, check_name_contain_dot)
        if param is not None and param.name == DEFAULT_NAME:
            param.name = param_name
        params[param_name] = param
        epoch.bump()

    def insert_child_to_cell(self, child_name: str, child_cell: Cell | None) -> None:
        """Register ``child_cell`` under ``child_name``, as assigning a Cell attribute does (without renaming)."""
        cells = self._insertable("insert_child_to_cell", "child", child_name, child_cell, Cell, True)
        cells[child_name] = child_cell
        epoch.bump()

    # ---- modes and flags ----

    def add_flags(self, **flags: Any) -> Cell:
        """Set each flag as an attribute of this cell (and record it in ``flags``)."""
        self.flags.update(flags)
        for k, v in flags.items():
            object.__setattr__(self, k, v)
        epoch.bump()
        return self

    def add_flags_recursive(self, **flags: Any) -> Cell:
        """``add_flags`` on this cell and every descendant."""
        for _, cell in self.cells_and_names():
            cell.add_flags(**flags)
        return self

    def get_flags(self) -> dict[str, Any]:
        """The flags set on this cell."""
        return self.flags

    def set_train(self, mode: bool = True) -> Cell:
        """Training mode on (or off) for this cell and every descendant: ``training``, read by ``construct``."""
        return self.add_flags_recursive(training=bool(mode))

    def set_grad(self, requires_grad: bool = True) -> Cell:
        """MindSpore's flag for building the backward graph while running forward (PyNative); kept as
        ``requires_grad`` for code that reads it. Gradients here never need it."""
        object.__setattr__(self, "requires_grad", bool(requires_grad))
        epoch.bump()
        return self
