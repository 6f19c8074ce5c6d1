"""Basic layers with MindSpore 2.x arguments, defaults and parameter names: Dense, Flatten, LayerNorm, Embedding,
SequentialCell and CellList. Plain Cells over ops; none holds a gradient rule."""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from typing import Any, Iterable, Iterator

import numpy as np

from gradserve.client import dtype as mstype
from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.parameter import Parameter
from gradserve.client.runner import assign_after_call, pending_value

from .activation import get_activation
from .initializer import HeUniform, Uniform, get_seed_rng, initializer


def _positive_int(layer: str, name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"nn.{layer}: {name} must be a positive int, got {v!r}")
    return v


class Dense(Cell):
    """``Dense(in_channels, out_channels, weight_init=None, bias_init=None, has_bias=True, activation=None,
    dtype=float32)``: y = activation(x @ weight.T + bias); weight (out, in) defaults to HeUniform(sqrt(5)) and bias
    to Uniform(1/sqrt(in_channels)), as in MindSpore 2.x."""

    def __init__(self, in_channels: int, out_channels: int, weight_init: Any = None, bias_init: Any = None,
                 has_bias: bool = True, activation: Any = None, dtype: Any = mstype.float32) -> None:
        super().__init__()
        self.in_channels = _positive_int("Dense", "in_channels", in_channels)
        self.out_channels = _positive_int("Dense", "out_channels", out_channels)
        self.has_bias = bool(has_bias)
        w_init = HeUniform(math.sqrt(5)) if weight_init is None else weight_init
        self.weight = Parameter(initializer(w_init, (out_channels, in_channels), dtype), name="weight")
        if self.weight.shape != (out_channels, in_channels):
            raise ValueError(f"nn.Dense: weight_init has shape {self.weight.shape}, expected {(out_channels, in_channels)}")
        if self.has_bias:
            b_init = Uniform(1 / math.sqrt(in_channels)) if bias_init is None else bias_init
            self.bias = Parameter(initializer(b_init, (out_channels,), dtype), name="bias")
            if self.bias.shape != (out_channels,):
                raise ValueError(f"nn.Dense: bias_init has shape {self.bias.shape}, expected {(out_channels,)}")
        self.activation = get_activation(activation)

    def extend_repr(self) -> str:
        """MindSpore's: the channels, then ``has_bias`` and ``activation`` when set."""
        s = f"input_channels={self.in_channels}, output_channels={self.out_channels}"
        if self.has_bias:
            s += f", has_bias={self.has_bias}"
        if self.activation is not None:
            s += f", activation={self.activation}"
        return s

    def construct(self, x: Any) -> Any:
        if x.ndim == 0 or x.shape[-1] != self.in_channels:
            raise ValueError(f"nn.Dense: input of shape {x.shape} must end in in_channels={self.in_channels}")
        lead = x.shape[:-1]
        if x.ndim != 2:
            x = x.reshape(-1, self.in_channels)
        y = apply_op("MatMul", x, self.weight, transpose_a=False, transpose_b=True)
        if self.has_bias:
            y = y + self.bias
        if self.activation is not None:
            y = self.activation(y)
        return y if len(lead) == 1 else y.reshape(*lead, self.out_channels)


class Flatten(Cell):
    """``Flatten(start_dim=1, end_dim=-1)``: axes start_dim..end_dim merged into one."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def construct(self, x: Any) -> Any:
        n = max(x.ndim, 1)
        s, e = self.start_dim % n, self.end_dim % n
        if s > e:
            raise ValueError(f"nn.Flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} for shape {x.shape}")
        shape = x.shape
        return x.reshape(*shape[:s], math.prod(shape[s:e + 1]), *shape[e + 1:])


class LayerNorm(Cell):
    """``LayerNorm(normalized_shape, begin_norm_axis=-1, begin_params_axis=-1, gamma_init='ones', beta_init='zeros',
    epsilon=1e-7, dtype=float32)``: parameters ``gamma`` and ``beta`` of ``normalized_shape``."""

    def __init__(self, normalized_shape: Any, begin_norm_axis: int = -1, begin_params_axis: int = -1,
                 gamma_init: Any = "ones", beta_init: Any = "zeros", epsilon: float = 1e-7,
                 dtype: Any = mstype.float32) -> None:
        super().__init__()
        if not isinstance(normalized_shape, (tuple, list)):
            raise TypeError(f"nn.LayerNorm: normalized_shape must be a tuple or list, got {type(normalized_shape).__name__}")
        self.normalized_shape = tuple(normalized_shape)
        self.begin_norm_axis, self.begin_params_axis, self.epsilon = begin_norm_axis, begin_params_axis, epsilon
        self.gamma = Parameter(initializer(gamma_init, self.normalized_shape, dtype), name="gamma")
        self.beta = Parameter(initializer(beta_init, self.normalized_shape, dtype), name="beta")

    def construct(self, x: Any) -> Any:
        y, _, _ = apply_op("LayerNorm", x, self.gamma, self.beta, begin_norm_axis=self.begin_norm_axis,
                           begin_params_axis=self.begin_params_axis, epsilon=self.epsilon)
        return y


class Embedding(Cell):
    """``Embedding(vocab_size, embedding_size, use_one_hot=False, embedding_table='normal', dtype=int32,
    padding_idx=None)``: rows of ``embedding_table`` (vocab_size, embedding_size) picked by integer ids."""

    def __init__(self, vocab_size: int, embedding_size: int, use_one_hot: bool = False, embedding_table: Any = "normal",
                 dtype: Any = mstype.int32, padding_idx: int | None = None) -> None:
        super().__init__()
        self.vocab_size = _positive_int("Embedding", "vocab_size", vocab_size)
        self.embedding_size = _positive_int("Embedding", "embedding_size", embedding_size)
        self.use_one_hot, self.dtype, self.padding_idx = use_one_hot, dtype, padding_idx
        table = initializer(embedding_table, (vocab_size, embedding_size), mstype.float32).asnumpy()
        if padding_idx is not None:
            if not -vocab_size <= padding_idx < vocab_size:
                raise ValueError(f"nn.Embedding: padding_idx {padding_idx} is outside [-{vocab_size}, {vocab_size})")
            table = table.copy()
            table[padding_idx] = 0
        self.embedding_table = Parameter(table, name="embedding_table")

    def construct(self, ids: Any) -> Any:
        return apply_op("Gather", self.embedding_table, ids, axis=0)


class SequentialCell(Cell):
    """``SequentialCell(*cells)`` or ``SequentialCell([cells])`` / ``SequentialCell(OrderedDict)``: each cell's output
    feeds the next; children are named '0', '1', ... (or by the dict's keys)."""

    def __init__(self, *args: Any) -> None:
        super().__init__()
        items: Iterable[tuple[str, Any]]
        if len(args) == 1 and isinstance(args[0], (dict, OrderedDict)):
            items = args[0].items()
        elif len(args) == 1 and isinstance(args[0], (list, tuple)):
            items = ((str(i), c) for i, c in enumerate(args[0]))
        else:
            items = ((str(i), c) for i, c in enumerate(args))
        for name, cell in items:
            self._add(name, cell)

    def _add(self, name: str, cell: Any) -> None:
        if not isinstance(cell, Cell):
            raise TypeError(f"nn.{type(self).__name__}: item {name!r} must be a Cell, got {type(cell).__name__}")
        setattr(self, name, cell)

    def append(self, cell: Cell) -> None:
        """Add ``cell`` at the end."""
        self._add(str(len(self)), cell)

    def __len__(self) -> int:
        return len(self._cells)

    def __iter__(self) -> Iterator[Cell]:
        return iter(list(self._cells.values()))

    def __getitem__(self, index: int | slice) -> Any:
        cells = list(self._cells.values())
        if isinstance(index, slice):
            return type(self)(cells[index])
        return cells[index]

    def construct(self, x: Any) -> Any:
        for cell in self._cells.values():
            x = cell(x)
        return x


class CellList(SequentialCell):
    """``CellList(cells)``: a list of Cells whose parameters belong to the owner; it has no construct of its own."""

    def __init__(self, args: Iterable[Cell] | None = None) -> None:
        super().__init__(list(args or []))

    def extend(self, cells: Iterable[Cell]) -> CellList:
        """Append each of ``cells``."""
        for cell in cells:
            self.append(cell)
        return self

    def construct(self, *inputs: Any) -> Any:
        raise TypeError("nn.CellList is a container: call its cells, not the list")




_DROPOUT_IDS = itertools.count()


class Dropout(Cell):
    """``Dropout(keep_prob=None, p=None, dtype=float32)``: in training, zeroes each element with probability ``p``
    (default 0.5) and scales the rest by 1 / (1 - p); the identity in inference (MindSpore's default mode). The mask
    comes from seeds drawn at construction (``set_seed`` reproduces them) and a step counter: each top-level call
    (a forward call, or a gradient or transform call) draws its mask at the counter's value and moves the counter on
    once (written back after the call, ``runner.assign_after_call``), so every call draws a new mask as MindSpore's
    does, while the forward pass and every order of gradient inside one call share it. A gradient call that reuses
    a recorded forward (``set_grad``, as in TrainOneStepCell) reads the counter as that forward did.

    Like MindSpore's Dropout it has no parameters: the counter is a Parameter the Cell does not register (so it is
    in no ``parameters_and_names`` and no checkpoint), read by the graph as a value sent with each call, so a new
    step needs no new trace."""

    def __init__(self, keep_prob: float | None = None, p: float | None = None, dtype: Any = mstype.float32) -> None:
        super().__init__()
        if keep_prob is not None and p is not None:
            raise ValueError("nn.Dropout: give keep_prob or p, not both")
        self.p = 1.0 - keep_prob if keep_prob is not None else (0.5 if p is None else float(p))
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"nn.Dropout: p must be in [0, 1), got {self.p!r}")
        self.seed0, self.seed1 = (int(v) for v in get_seed_rng().integers(1, 2**31, size=2))
        counter = Parameter(np.array(0, np.int64), name=f"_dropout_step_{next(_DROPOUT_IDS)}", requires_grad=False)
        object.__setattr__(self, "_counter", counter)
        self.training = False

    @property
    def step(self) -> int:
        """The counter: the step whose mask the next call draws."""
        return int(self._counter.asnumpy())

    def advance(self) -> None:
        """Skip to the next mask without a call."""
        self._counter.set_data(np.array(self.step + 1, np.int64))

    def construct(self, x: Any) -> Any:
        if not self.training or self.p == 0.0:
            return x
        step = pending_value(self._counter)
        out, _ = apply_op("Dropout", x, step, keep_prob=1.0 - self.p, Seed0=self.seed0, Seed1=self.seed1)
        assign_after_call(self._counter, step + 1)
        return out

