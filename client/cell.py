"""nn.Cell: a network with a ``construct``, its Parameters and child Cells, named the way MindSpore names them."""
from __future__ import annotations

from typing import Any, Iterator

from .custom import call_in_trace
from .parameter import DEFAULT_NAME, Parameter
from .runner import run_network
from .tensor import Tensor
from .tracing import current_frame, input_names


class Cell:
    """Base class of networks: define ``construct``; calling the Cell traces it (once per input signature) and runs it."""

    def __init__(self, auto_prefix: bool = True, flags: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_cells", {})
        object.__setattr__(self, "_auto_prefix", auto_prefix)
        object.__setattr__(self, "flags", dict(flags or {}))

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

    # ---- attributes: Parameters and child Cells are registered in definition order ----

    def _registry(self, name: str) -> tuple[dict[str, Parameter], dict[str, "Cell"]]:
        d = self.__dict__
        if "_params" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before setting attribute {name!r}")
        return d["_params"], d["_cells"]

    def __setattr__(self, name: str, value: Any) -> None:
        params, cells = self._registry(name)
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
        elif name in params and isinstance(value, Tensor):
            params[name].set_data(value)
        else:
            params.pop(name, None)
            cells.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for registry in (d.get("_params", {}), d.get("_cells", {})):
            if name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        params, cells = self._registry(name)
        if name in params:
            del params[name]
        elif name in cells:
            del cells[name]
        else:
            object.__delattr__(self, name)

    # ---- traversal in MindSpore's order: own parameters first, then child cells depth first ----

    def cells_and_names(self, cell_prefix: str = "") -> Iterator[tuple[str, "Cell"]]:
        """This cell and every descendant once, with dotted names."""
        seen: set[int] = set()
        stack: list[tuple[str, Cell]] = [(cell_prefix, self)]
        while stack:
            name, cell = stack.pop()
            if id(cell) in seen:
                continue
            seen.add(id(cell))
            yield name, cell
            children = [(f"{name}.{k}" if name else k, c) for k, c in cell._cells.items()]
            stack.extend(reversed(children))

    def parameters_and_names(self, name_prefix: str = "", expand: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Every Parameter once with its dotted attribute path: own ones in definition order, then each child's."""
        seen: set[int] = set()
        cells = self.cells_and_names(name_prefix) if expand else iter([(name_prefix, self)])
        for cell_name, cell in cells:
            for key, p in cell._params.items():
                if id(p) not in seen:
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
