"""MindSpore 2.x's functional ops that are not one engine op's generated form: their arguments are not the op's
attributes in order, or they need several ops (``ops.sum``, ``ops.split``, ``ops.pad``, ``ops.topk``, ``ops.max``, the
convolution and pooling functions ``ops.conv2d``, ``ops.max_pool2d``, ...), and the primitives that need more than one
engine op (``ops.Shape``, ``ops.Print``). A generated form is named by its op's ``functional`` field instead.

The random functions (``ops.standard_normal``, ``randn``, ``rand``, ``uniform``, ``normal``) draw from ``set_seed``'s
generator outside a trace; inside one they emit the engine's random ops with seeds fixed by the call site (file, line,
function) and a hidden step counter per site, which each top-level call moves on and ``set_seed`` restarts. Known
limits: a gradient inside a construct reads the counter's stored value, not the enclosing trace's pending one (it
shares the step of a draw at the same site in that trace, and two gradient calls reaching one site in one jit step
draw the same values); nn.Dropout's counter does not pass out of a gradient inside a construct; ``data_parallel``'s
shards draw identical noise; top-level calls of one function from several threads at once may draw the same
step (the counter's read and write-back are not one step; nn.Dropout's masks alike); ``UniformInt``'s 32-bit
multiply-shift favours some values by at most span/2^32."""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import numpy as np

from gradserve.engine import get_op
from gradserve.engine.ops import debug

from . import dtype as mstype
from .dispatch import apply_op, floor_divide, floor_mod, true_divide
from .dispatch import matmul as _matmul
from .errors import TracingError, user_site
from .nn import loss as _loss
from .nn.initializer import get_seed, get_seed_rng, on_set_seed
from .pad import pad
from .parameter import Parameter
from .primitives import attr_value
from .runner import assign_after_call, draw_counter, in_vjp_forward, pending_value
from .tensor import Tensor
from .tracing import current_frame


def _shape_of(shape: Any) -> tuple[int, ...]:
    """A shape given as an int, a tuple/list of ints, or a 1-d integer Tensor."""
    if isinstance(shape, Tensor):
        shape = shape._concrete("a shape").tolist()
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        return (int(shape),)
    if isinstance(shape, (tuple, list)) and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        return tuple(int(d) for d in shape)
    raise TypeError(f"a shape must be an int or a tuple of ints, got {shape!r}")


def _filled(shape: Any, dtype: Any, value: float) -> Tensor:
    dt = mstype.to_numpy(mstype.float32 if dtype is None else dtype)
    return Tensor._wrap(np.full(_shape_of(shape), value, dt))


def ones(shape: Any, dtype: Any = None) -> Tensor:
    """``ops.ones(shape, dtype=None)``: a Tensor of ones (float32 by default); a constant inside a construct."""
    return _filled(shape, dtype, 1)


def zeros(size: Any, dtype: Any = None) -> Tensor:
    """``ops.zeros(size, dtype=None)``: a Tensor of zeros (float32 by default); a constant inside a construct."""
    return _filled(size, dtype, 0)


def _axes(axis: Any) -> tuple[int, ...]:
    return () if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)


def sum(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    """``ops.sum(input, dim=None, keepdim=False, *, dtype=None)``: sum over ``dim`` (all axes when None)."""
    x = input if dtype is None else apply_op("Cast", input, dtype=mstype.to_numpy(dtype))
    return apply_op("ReduceSum", x, axis=_axes(dim), keep_dims=keepdim)


def mean(input: Any, axis: Any = None, keep_dims: bool = False) -> Any:
    """``ops.mean(input, axis=None, keep_dims=False)``: mean over ``axis`` (all axes when None)."""
    return apply_op("ReduceMean", input, axis=_axes(axis), keep_dims=keep_dims)


def _pair(v: Any, what: str) -> tuple[int, int]:
    """An int or a 1- or 2-tuple of ints as (h, w)."""
    t = (v,) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v) if isinstance(v, (tuple, list)) else None
    if t is None or len(t) not in (1, 2) or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in t):
        raise TypeError(f"{what} must be an int or a tuple of one or two ints, got {v!r}")
    return (int(t[0]), int(t[-1]))


def _pool_pad(fn: str, padding: Any) -> tuple[str, tuple[int, ...]]:
    """A pooling function's padding (an int or a tuple of 1, 2 (h, w) or 4 (top, bottom, left, right) non-negative
    ints) as the engine's pad_mode and pad: 'valid' without padding, 'pad' with it."""
    pads = (padding,) if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) else (
        tuple(padding) if isinstance(padding, (tuple, list)) else ())
    if len(pads) not in (1, 2, 4) or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 0 for p in pads):
        raise ValueError(f"ops.{fn}: padding must be a non-negative int or a tuple of 1, 2 or 4 of them, got {padding!r}")
    return ("pad" if any(pads) else "valid"), tuple(int(p) for p in pads)


def conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, pad_mode: str = "valid", padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Any:
    """``ops.conv2d(input, weight, bias=None, stride=1, pad_mode="valid", padding=0, dilation=1, groups=1)``:
    MindSpore 2.x's functional convolution, the Conv2D op (its kernel from ``weight``'s shape) plus ``bias`` per
    output channel. ``padding`` (with ``pad_mode="pad"``) is an int, (h, w) or (top, bottom, left, right)."""
    if not isinstance(weight, Tensor) or len(weight.shape) != 4:
        raise TypeError(f"ops.conv2d: weight must be a 4-D Tensor (out_channel, in_channel / groups, kh, kw), got {weight!r}")
    if pad_mode not in ("valid", "same", "pad"):
        raise ValueError(f"ops.conv2d: pad_mode must be 'valid', 'same' or 'pad', got {pad_mode!r}")
    pad = (padding,) if isinstance(padding, int) else tuple(padding)
    if len(pad) == 2:
        pad = (pad[0], pad[0], pad[1], pad[1])
    if pad_mode != "pad" and any(pad):
        raise ValueError(f"ops.conv2d: padding={padding!r} needs pad_mode='pad' (got {pad_mode!r})")
    o, _, kh, kw = weight.shape
    out = apply_op(
        "Conv2D", input, weight, out_channel=o, kernel_size=(kh, kw), pad_mode=pad_mode, pad=pad,
        stride=_pair(stride, "ops.conv2d: stride"), dilation=_pair(dilation, "ops.conv2d: dilation"), group=groups,
    )
    if bias is None:
        return out
    if not isinstance(bias, Tensor) or bias.shape != (o,):
        raise ValueError(f"ops.conv2d: bias must be a Tensor of shape ({o},), one per output channel, got {bias!r}")
    return out + bias.reshape((1, o, 1, 1))


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               return_indices: bool = False, ceil_mode: bool = False) -> Any:
    """``ops.max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False)``:
    the MaxPool op (``stride`` None is ``kernel_size``; padding is -inf), or with ``return_indices``
    MaxPoolWithArgmax: ``(output, argmax)``, argmax the int64 index into the H * W plane."""
    mode, pad = _pool_pad("max_pool2d", padding)
    kernel = _pair(kernel_size, "ops.max_pool2d: kernel_size")
    strides = kernel if stride is None else _pair(stride, "ops.max_pool2d: stride")
    return apply_op("MaxPoolWithArgmax" if return_indices else "MaxPool", x, kernel_size=kernel, strides=strides,
                    pad_mode=mode, pad=pad, ceil_mode=bool(ceil_mode), dilation=_pair(dilation, "ops.max_pool2d: dilation"))


def avg_pool2d(input_x: Any, kernel_size: Any = 1, stride: Any = 1, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Any = 0) -> Any:
    """``ops.avg_pool2d(input_x, kernel_size=1, stride=1, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=0)``: the AvgPool op; ``count_include_pad`` counts the zero padding in each divisor,
    ``divisor_override`` (0 or None: none) replaces it."""
    mode, pad = _pool_pad("avg_pool2d", padding)
    divisor = divisor_override or 0
    if not isinstance(divisor, (int, np.integer)) or isinstance(divisor, bool) or divisor < 0:
        raise ValueError(f"ops.avg_pool2d: divisor_override must be 0, None or a positive int, got {divisor_override!r}")
    kernel, strides = _pair(kernel_size, "ops.avg_pool2d: kernel_size"), _pair(stride, "ops.avg_pool2d: stride")
    return apply_op("AvgPool", input_x, kernel_size=kernel, strides=strides, pad_mode=mode, pad=pad, ceil_mode=bool(ceil_mode),
                    count_include_pad=bool(count_include_pad), divisor_override=int(divisor))


def adaptive_avg_pool2d(input: Any, output_size: Any) -> Any:
    """``ops.adaptive_avg_pool2d(input, output_size)``: the AdaptiveAvgPool2D op (None in ``output_size`` keeps that
    dimension)."""
    return apply_op("AdaptiveAvgPool2D", input, output_size=attr_value(get_op("AdaptiveAvgPool2D"), "output_size", output_size))


def _int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _axis(fn: str, axis: Any, ndim: int) -> int:
    """``axis`` as a non-negative axis of a rank-``ndim`` Tensor, or a clear error naming the function."""
    if not _int(axis):
        raise TypeError(f"ops.{fn}: axis must be an int, got {axis!r}")
    rank = ndim or 1
    if not -rank <= axis < rank:
        raise ValueError(f"ops.{fn}: axis {axis} is out of range for a Tensor of rank {ndim}")
    return int(axis) % rank


def _tensor(fn: str, x: Any, what: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"ops.{fn}: {what} must be a Tensor, got {type(x).__name__}")
    return x


def split(tensor: Any, split_size_or_sections: Any, axis: int = 0) -> tuple[Any, ...]:
    """``ops.split(tensor, split_size_or_sections, axis=0)``: an int is the size of each piece (the last one smaller
    when it does not divide the axis), a tuple or list the pieces' sizes, which must add up to the axis length. Equal
    pieces are one Split op (views); unequal ones are slices."""
    x = _tensor("split", tensor, "tensor")
    ax = _axis("split", axis, len(x.shape))
    n = x.shape[ax]
    if _int(split_size_or_sections):
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"ops.split: split_size_or_sections must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
    elif isinstance(split_size_or_sections, (tuple, list)) and all(_int(v) and v >= 0 for v in split_size_or_sections):
        sizes = [int(v) for v in split_size_or_sections]
        total = int(np.sum(sizes))
        if total != n:
            raise ValueError(f"ops.split: the sizes {tuple(sizes)} add up to {total}, not to the length {n} of axis {axis}")
    else:
        raise TypeError(f"ops.split: split_size_or_sections must be an int or a tuple/list of non-negative ints, got {split_size_or_sections!r}")
    if sizes and len(set(sizes)) == 1 and sizes[0] > 0:
        return tuple(apply_op("Split", x, axis=ax, output_num=len(sizes)))
    starts = np.cumsum([0] + sizes).tolist()
    lead = (slice(None),) * ax
    return tuple(x[lead + (slice(a, b),)] for a, b in zip(starts, starts[1:]))


def einsum(equation: str, *operands: Any) -> Any:
    """``ops.einsum(equation, *operands)``: the Einsum op (the operands may also come as one tuple or list)."""
    if not isinstance(equation, str):
        raise TypeError(f"ops.einsum: the equation comes first and must be a str, got {type(equation).__name__}")
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = tuple(operands[0])
    if not operands:
        raise TypeError("ops.einsum: no operands")
    return apply_op("Einsum", *operands, equation=equation)


def dropout(input: Any, p: float = 0.5, training: bool = True, seed: Any = None) -> Any:
    """``ops.dropout(input, p=0.5, training=True, seed=None)``: zeroes each element with probability ``p`` and scales
    the rest by 1 / (1 - p) (the Dropout op's output); the input itself when not training or p is 0. A ``seed`` fixes
    the mask; without one, seeds are drawn from the generator ``set_seed`` seeds, once per call outside a construct
    and once per trace inside one (a cached graph keeps its mask)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
        raise ValueError(f"ops.dropout: p must be a number in [0, 1], got {p!r}")
    if not training or p == 0:
        return input
    if p == 1:
        return apply_op("ZerosLike", input)
    if seed is not None and not (_int(seed) and seed >= 0):
        raise ValueError(f"ops.dropout: seed must be a non-negative int or None, got {seed!r}")
    seeds = (int(seed), 0) if seed is not None else tuple(int(v) for v in get_seed_rng().integers(1, 2**31, size=2))
    out, _ = apply_op("Dropout", input, keep_prob=1.0 - float(p), Seed0=seeds[0], Seed1=seeds[1])
    return out


def gelu(input_x: Any, approximate: str = "none") -> Any:
    """``ops.gelu(input_x, approximate='none')``: the exact x Phi(x) by default, as MindSpore 2.x documents, or the
    tanh formula (the GeLU primitive's own default stays 'tanh')."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"ops.gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply_op("GeLU", input_x, approximate=approximate)


def cumsum(x: Any, axis: int, dtype: Any = None) -> Any:
    """``ops.cumsum(x, axis, dtype=None)``: running sums along ``axis`` (the CumSum op), computed in ``dtype`` if given."""
    if dtype is not None:
        x = apply_op("Cast", x, dtype=mstype.to_numpy(dtype))
    return apply_op("CumSum", x, axis=axis)


def _swap_last(x: Any, ax: int) -> Any:
    """x with axis ``ax`` and the last axis exchanged (its own inverse)."""
    perm = list(range(len(x.shape)))
    perm[ax], perm[-1] = perm[-1], perm[ax]
    return apply_op("Transpose", x, perm=tuple(perm))


def topk(input: Any, k: int, dim: Any = None, largest: bool = True, sorted: bool = True) -> tuple[Any, Any]:
    """``ops.topk(input, k, dim=None, largest=True, sorted=True)``: the ``k`` largest (or smallest) elements along
    ``dim`` (the last axis when None) and their int32 indices, from the TopK op; ties go to the lower index and the
    result is always sorted."""
    x = _tensor("topk", input)
    nd = len(x.shape)
    ax = nd - 1 if dim is None else _axis("topk", dim, nd)
    moved = x if ax == nd - 1 else _swap_last(x, ax)
    values, indices = apply_op("TopK", moved if largest else -moved, k=k, sorted=True)
    if not largest:
        values = -values
    if ax != nd - 1:
        values, indices = _swap_last(values, ax), _swap_last(indices, ax)
    return values, indices


def flatten(input: Any, order: str = "C", *, start_dim: int = 1, end_dim: int = -1) -> Any:
    """``ops.flatten(input, order='C', *, start_dim=1, end_dim=-1)``: axes ``start_dim`` to ``end_dim`` merged into
    one (a Reshape); a 0-d input becomes 1-d. Only the 'C' order is supported."""
    x = _tensor("flatten", input)
    if order != "C":
        raise ValueError(f"ops.flatten: order={order!r} is not supported (only 'C')")
    nd = len(x.shape)
    if nd == 0:
        return apply_op("Reshape", x, shape=(1,))
    s, e = _axis("flatten", start_dim, nd), _axis("flatten", end_dim, nd)
    if s > e:
        raise ValueError(f"ops.flatten: start_dim {start_dim} comes after end_dim {end_dim} for rank {nd}")
    if s == e:
        return x
    shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    return apply_op("Reshape", x, shape=shape)


def prod(input: Any, axis: Any = None, keep_dims: bool = False) -> Any:
    """``ops.prod(input, axis=None, keep_dims=False)``: product over ``axis`` (all axes when None)."""
    return apply_op("ReduceProd", input, axis=_axes(axis), keep_dims=keep_dims)


def _extreme(fn: str, largest: bool, input: Any, axis: Any, keepdims: bool, initial: Any, where: Any) -> Any:
    """max or min over ``axis`` after ``where`` (False positions read ``initial``), bounded by ``initial``."""
    x = _tensor(fn, input)
    if where is not None:
        if initial is None:
            raise ValueError(f"ops.{fn}: where needs an initial value for the positions it leaves out")
        x = apply_op("Select", where, x, initial)
    out = apply_op("ReduceMax" if largest else "ReduceMin", x, axis=_axes(axis), keep_dims=keepdims)
    if initial is not None:
        out = apply_op("Maximum" if largest else "Minimum", out, initial)
    return out


def amax(input: Any, axis: Any = None, keepdims: bool = False, *, initial: Any = None, where: Any = None) -> Any:
    """``ops.amax(input, axis=None, keepdims=False, *, initial=None, where=None)``: the maximum over ``axis`` (all
    when None); tied maxima share the gradient evenly."""
    return _extreme("amax", True, input, axis, keepdims, initial, where)


def amin(input: Any, axis: Any = None, keepdims: bool = False, *, initial: Any = None, where: Any = None) -> Any:
    """``ops.amin(input, axis=None, keepdims=False, *, initial=None, where=None)``: the minimum over ``axis`` (all
    when None); tied minima share the gradient evenly."""
    return _extreme("amin", False, input, axis, keepdims, initial, where)


def _extreme_index(fn: str, largest: bool, input: Any, axis: Any, keepdims: bool, initial: Any, where: Any) -> tuple[Any, Any]:
    """MindSpore 2.x's ``ops.max``/``ops.min``: (values, int32 indices) of the ArgMaxWithValue (ArgMinWithValue) op
    over ``x`` bounded by ``initial`` where ``where`` holds, ``initial`` elsewhere, so the gradient goes to the first
    extremum alone, as MindSpore's bprop gives it; with axis None, ReduceMax's value (tied maxima share the gradient)
    and index 0 (keepdims, initial and where then unused, as MindSpore documents)."""
    x = _tensor(fn, input)
    if axis is None:
        return apply_op("ReduceMax" if largest else "ReduceMin", x, axis=(), keep_dims=False), Tensor._wrap(np.array(0, np.int32))
    ax = _axis(fn, axis, len(x.shape))
    if where is not None and initial is None:
        raise ValueError(f"ops.{fn}: where needs an initial value for the positions it leaves out")
    source = x if initial is None else apply_op("Maximum" if largest else "Minimum", x, initial)
    if where is not None:
        source = apply_op("Select", where, source, initial)
    indices, values = apply_op("ArgMaxWithValue" if largest else "ArgMinWithValue", source, axis=ax, keep_dims=bool(keepdims))
    return values, indices


def max(input: Any, axis: Any = None, keepdims: bool = False, *, initial: Any = None, where: Any = None) -> tuple[Any, Any]:
    """``ops.max(input, axis=None, keepdims=False, *, initial=None, where=None)``: (the maxima, their int32 indices)."""
    return _extreme_index("max", True, input, axis, keepdims, initial, where)


def min(input: Any, axis: Any = None, keepdims: bool = False, *, initial: Any = None, where: Any = None) -> tuple[Any, Any]:
    """``ops.min(input, axis=None, keepdims=False, *, initial=None, where=None)``: (the minima, their int32 indices)."""
    return _extreme_index("min", False, input, axis, keepdims, initial, where)


def argmax(input: Any, dim: Any = None, keepdim: bool = False) -> Any:
    """``ops.argmax(input, dim=None, keepdim=False)``: ``Tensor.argmax`` (int64; over the flattened Tensor when None)."""
    return _tensor("argmax", input).argmax(dim, keepdim)


def argmin(input: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """``ops.argmin(input, axis=None, keepdims=False)``: ``Tensor.argmin`` (int64; over the flattened Tensor when None)."""
    return _tensor("argmin", input).argmin(axis, keepdims)


def div(input: Any, other: Any, rounding_mode: str | None = None) -> Any:
    """``ops.div(input, other, rounding_mode=None)``: true division (float32 for integers), or rounded down
    (``'floor'``, ``input // other``) or toward zero (``'trunc'``) in the inputs' dtype."""
    if rounding_mode is None:
        return true_divide(input, other)
    if rounding_mode == "floor":
        return floor_divide(input, other)
    if rounding_mode != "trunc":
        raise ValueError(f"ops.div: rounding_mode must be None, 'floor' or 'trunc', got {rounding_mode!r}")
    down = floor_divide(input, other)
    up = -floor_divide(-input if isinstance(input, Tensor) else -input, other)
    return apply_op("Select", true_divide(input, other) < 0, up, down)


def unsqueeze(input: Any, dim: int) -> Any:
    """``ops.unsqueeze(input, dim)``: a new axis of length 1 at ``dim``."""
    return _tensor("unsqueeze", input).expand_dims(dim)


def permute(input: Any, axis: Any) -> Any:
    """``ops.permute(input, axis)``: the axes in the order ``axis``."""
    return _tensor("permute", input).permute(axis)


def clamp(input: Any, min: Any = None, max: Any = None) -> Any:
    """``ops.clamp(input, min=None, max=None)``: each element limited to [min, max] (None: unbounded on that side), in
    the input's dtype."""
    return _tensor("clamp", input).clip(min, max)


def masked_fill(input_x: Any, mask: Any, value: Any) -> Any:
    """``ops.masked_fill(input_x, mask, value)``: ``value`` where ``mask`` is True, ``input_x`` elsewhere, in
    ``input_x``'s dtype (``Tensor.masked_fill``)."""
    return _tensor("masked_fill", input_x).masked_fill(mask, value)


def full(size: Any, fill_value: Any, *, dtype: Any = None) -> Tensor:
    """``ops.full(size, fill_value, *, dtype=None)``: a constant Tensor (dtype from ``fill_value`` when None: float32
    for a float, int64 for an int, as MindSpore's Tensor makes them)."""
    return fill(Tensor(fill_value).dtype if dtype is None else dtype, size, fill_value)


def arange(start: Any = 0, end: Any = None, step: Any = 1, *, dtype: Any = None) -> Tensor:
    """``ops.arange(start=0, end=None, step=1, *, dtype=None)``: a constant 1-d Tensor of start, start + step, ...
    below ``end`` (int64 when all are ints, else float32, unless ``dtype``)."""
    if end is None:
        start, end = 0, start
    values = np.arange(start, end, step)
    dt = mstype.to_numpy(dtype) if dtype is not None else np.dtype(np.int64 if values.dtype.kind in "iu" else np.float32)
    return Tensor._wrap(values.astype(dt))


def dtype(input: Any) -> Any:
    """``ops.dtype(input)``: the Tensor's MindSpore dtype (known while tracing too)."""
    return _tensor("dtype", input).dtype


def matmul(input: Any, other: Any, *, transpose_a: bool = False, transpose_b: bool = False) -> Any:
    """``ops.matmul(input, other)``: the matrix product with NumPy's rules (1-d operands as vectors, batch axes
    broadcast), as MindSpore 2.x documents it; ``transpose_a``/``transpose_b`` (MatMul's flags, kept from the
    generated form this replaced) swap an operand's last two axes first."""
    if transpose_a:
        input = _tensor("matmul", input).swapaxes(-1, -2)
    if transpose_b:
        other = _tensor("matmul", other, "other").swapaxes(-1, -2)
    return _matmul(input, other)


def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Any = None, pos_weight: Any = None,
                                     reduction: str = "mean") -> Any:
    """``ops.binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None, reduction='mean')``: the
    loss ``nn.BCEWithLogitsLoss`` computes (the Autograd tutorial's)."""
    return _loss.bce_with_logits(input, target, reduction, weight, pos_weight)


def cross_entropy(input: Any, target: Any, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Any:
    """``ops.cross_entropy(input, target, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0)``:
    ``nn.CrossEntropyLoss``'s loss (class indices or class probabilities as target)."""
    return _loss.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """``ops.mse_loss(input, target, reduction='mean')``: the mean (or sum, or each) of (input - target) ** 2."""
    return _loss.mse(input, target, reduction)


def l1_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """``ops.l1_loss(input, target, reduction='mean')``: the mean (or sum, or each) of |input - target|."""
    return _loss.l1(input, target, reduction)


_SITES: dict[tuple[str, int, str], tuple[int, int, Parameter]] = {}
"""Per call site (file, line, function) of a random function inside a trace: its seeds and its step counter."""
_SITES_LOCK = threading.Lock()


def _first_step(seed: int | None) -> int:
    """Where every site's step counter starts after ``set_seed(seed)``: the first 8 bytes of the SHA-256 of
    ``"gradserve random ops <seed>"`` as a little-endian int, shifted right by 2 (below 2^62, so counting on stays in
    int64); random before any ``set_seed``."""
    if seed is None:
        return int(np.random.default_rng().integers(0, 2**62))
    return int.from_bytes(hashlib.sha256(f"gradserve random ops {seed}".encode()).digest()[:8], "little") >> 2


_START = [_first_step(get_seed())]


def _site_seeds(site: tuple[str, int, str]) -> tuple[int, int]:
    """A call site's Seed0 and Seed1: the first two little-endian 32-bit words of the SHA-256 of
    ``"<file name>:<line>:<function>"`` (the file's name without its folder, so that a script draws the same values
    wherever it lies and however it was started: ``python x.py``, ``python ./x.py``), each shifted right by 1. They are
    fixed per site (the graph bakes them in); ``set_seed`` moves the steps instead."""
    file, line, function = site
    digest = hashlib.sha256(f"{os.path.basename(file)}:{line}:{function}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1, int.from_bytes(digest[4:8], "little") >> 1


def _site() -> tuple[int, int, Parameter]:
    """The seeds and step counter of the random function's call site running now (the innermost frame outside
    gradserve: its file, line and function; calls there in one trace draw consecutive steps), made at its first trace
    (under a lock, so threads tracing one site at once share it). The counter is a Parameter no Cell registers (as
    nn.Dropout's, ``runner.draw_counter``), so the graph reads it as a value sent with each call."""
    site = user_site()
    with _SITES_LOCK:
        hit = _SITES.get(site)
        if hit is None:
            hit = _SITES[site] = (*_site_seeds(site), draw_counter(f"_random_step_{len(_SITES)}", _START[0]))
    return hit


def _restart_sites(seed: int) -> None:
    """``set_seed``'s reset (MindSpore's resets its op seeds): every site's counter goes back to the seed's first
    step, so the same calls after the same seed draw the same values, cached graphs included (they read the counter)."""
    with _SITES_LOCK:
        _START[0] = _first_step(seed)
        for _, _, counter in _SITES.values():
            counter.set_data(np.array(_START[0], np.int64))


on_set_seed(_restart_sites)


def _traced_draw(op: str, shape: tuple[int, ...], **attrs: Any) -> Any:
    """The random op ``op`` in the trace running now, drawing at its call site's step counter, which moves on once per
    top-level call (``assign_after_call``, as nn.Dropout's): each call of the traced function draws new values, while
    its forward pass and every order of gradient share them (the op's values are a pure function of seeds and step)."""
    seed0, seed1, counter = _site()
    step = pending_value(counter)
    out = apply_op(op, step, shape=shape, Seed0=seed0, Seed1=seed1, **attrs)
    assign_after_call(counter, apply_op("Add", step, 1))
    return out


def _drawn(values: np.ndarray, dtype: Any) -> Tensor:
    """Random ``values`` drawn eagerly (outside any trace) as a Tensor of ``dtype``. Refused in ``vjp``'s forward call
    of a function it runs eagerly (a method of a plain object, a partial): ``vjp_fn`` traces that function, and its
    draws would be other values than these."""
    if in_vjp_forward():
        raise TracingError("a random draw (ops.standard_normal, randn, rand, uniform, normal) in a function vjp runs "
                           "eagerly (a method of an object that is not a Cell, or a functools.partial): its vjp_fn would "
                           "draw other values; pass vjp a plain function or a Cell")
    return Tensor._wrap(values.astype(mstype.to_numpy(dtype)))


def _size(size: tuple[Any, ...]) -> tuple[int, ...]:
    """``*size`` given as ints or as one tuple or list."""
    return _shape_of(size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size)


def _float_dtype(fn: str, dtype: Any) -> Any:
    """``dtype`` (float32 when None), which must be a float type."""
    dt = mstype.float32 if dtype is None else dtype
    if mstype.to_numpy(dt).kind != "f":
        raise TypeError(f"ops.{fn}: dtype must be a float type, got {dt}")
    return dt


def _normal(shape: tuple[int, ...], dtype: Any) -> Tensor:
    """N(0, 1) draws: the StandardNormal op inside a trace, else from ``set_seed``'s generator."""
    if current_frame() is not None:
        return _traced_draw("StandardNormal", shape, dtype=mstype.to_numpy(dtype))
    return _drawn(get_seed_rng().standard_normal(shape), dtype)


def _uniform01(shape: tuple[int, ...], dtype: Any) -> Tensor:
    """U[0, 1) draws: the UniformReal op inside a trace, else from ``set_seed``'s generator."""
    if current_frame() is not None:
        return _traced_draw("UniformReal", shape, dtype=mstype.to_numpy(dtype))
    return _drawn(get_seed_rng().random(shape), dtype)


def standard_normal(shape: Any, seed: Any = None, seed2: Any = None) -> Tensor:
    """``ops.standard_normal(shape, seed=None, seed2=None)``: float32 draws from N(0, 1). Outside a trace from the
    generator ``set_seed`` seeds; inside one the StandardNormal op, with its call site's seeds and step counter, so
    each call of the traced function draws new values (``seed`` and ``seed2`` are accepted and do not change the
    draws)."""
    return _normal(_shape_of(shape), mstype.float32)


def randn(*size: Any, dtype: Any = None, seed: Any = None) -> Tensor:
    """``ops.randn(*size, dtype=None, seed=None)``: draws from N(0, 1) (float32 unless ``dtype``), as
    ``standard_normal``."""
    return _normal(_size(size), _float_dtype("randn", dtype))


def rand(*size: Any, dtype: Any = None, seed: Any = None) -> Tensor:
    """``ops.rand(*size, dtype=None, seed=None)``: draws from U[0, 1) (float32 unless ``dtype``), as
    ``standard_normal`` (the UniformReal op inside a trace)."""
    return _uniform01(_size(size), _float_dtype("rand", dtype))


def _out_shape(fn: str, shape: Any, *values: Any) -> tuple[int, ...]:
    """The output shape: ``shape`` broadcast with the distribution's parameters' shapes, as MindSpore's."""
    shapes = [tuple(v.shape) if isinstance(v, Tensor) else np.shape(v) for v in values]
    try:
        return tuple(np.broadcast_shapes(_shape_of(shape), *shapes))
    except ValueError:
        raise ValueError(f"ops.{fn}: shape {_shape_of(shape)} does not broadcast with the parameters' shapes {shapes}") from None


def _param(v: Any) -> Any:
    """A distribution parameter as a float32 Tensor (a Tensor cast, a number or array wrapped)."""
    if isinstance(v, Tensor):
        return v if v._array_dtype() == np.float32 else apply_op("Cast", v, dtype=np.dtype(np.float32))
    return Tensor._wrap(np.asarray(v, np.float32))


def _scaled(draws: Tensor, offset: Any, scale: Any) -> Any:
    """offset + scale * draws (the draws have the output's shape already; the parameters' gradients flow through)."""
    return _param(offset) + _param(scale) * draws


def uniform(shape: Any, minval: Any, maxval: Any, seed: Any = None, dtype: Any = mstype.float32) -> Tensor:
    """``ops.uniform(shape, minval, maxval, seed=None, dtype=float32)``: draws from U[minval, maxval), discrete for
    int32 (one number each for minval and maxval; the UniformInt op inside a trace), continuous for float32
    (Tensors broadcast with ``shape`` into the output's shape; minval + (maxval - minval) * U[0, 1) in float32, as
    MindSpore computes it, so rounding can return maxval itself when maxval - minval is small next to them), as
    ``standard_normal``."""
    if dtype not in (mstype.int32, mstype.float32):
        raise TypeError(f"ops.uniform: dtype must be int32 or float32, got {dtype}")
    kinds = {v.dtype for v in (minval, maxval) if isinstance(v, Tensor)}
    if not kinds <= {mstype.int32, mstype.float32} or len(kinds) > 1:
        raise TypeError(f"ops.uniform: minval and maxval must be int32 or float32 and alike, got {sorted(map(str, kinds))}")
    out = _out_shape("uniform", shape, minval, maxval)
    if dtype == mstype.int32:
        if any(int(np.prod(v.shape if isinstance(v, Tensor) else np.shape(v))) != 1 for v in (minval, maxval)):
            raise ValueError("ops.uniform: with dtype int32 minval and maxval must each be one number")
        lo, hi = (int(np.asarray(v).item()) if not isinstance(v, Tensor) else int(v) for v in (minval, maxval))
        if lo >= hi:
            raise ValueError(f"ops.uniform: minval ({lo}) must be less than maxval ({hi})")
        if current_frame() is not None:
            return _traced_draw("UniformInt", _shape_of(shape), minval=lo, maxval=hi)
        return _drawn(get_seed_rng().integers(lo, hi, _shape_of(shape)), dtype)
    if current_frame() is not None:
        return _scaled(_uniform01(out, dtype), minval, _param(maxval) - _param(minval))
    lo_a, hi_a = (np.asarray(v.asnumpy() if isinstance(v, Tensor) else v, np.float64) for v in (minval, maxval))
    return _drawn(get_seed_rng().uniform(lo_a, hi_a, out), dtype)


def normal(shape: Any, mean: Any, stddev: Any, seed: Any = None) -> Tensor:
    """``ops.normal(shape, mean, stddev, seed=None)``: float32 draws from N(mean, stddev ** 2) (Tensors or numbers,
    broadcast with ``shape`` into the output's shape; mean + stddev * N(0, 1) inside a trace), as
    ``standard_normal``."""
    out = _out_shape("normal", shape, mean, stddev)
    if current_frame() is not None:
        return _scaled(_normal(out, mstype.float32), mean, stddev)
    mu, sigma = (np.asarray(v.asnumpy() if isinstance(v, Tensor) else v, np.float64) for v in (mean, stddev))
    return _drawn(get_seed_rng().normal(mu, sigma, out), mstype.float32)


def _bool(fn: str, x: Any) -> Any:
    """``x`` as a bool Tensor (non-zero is True); a Python bool becomes a 0-d one, as MindSpore's logical ops take."""
    t = Tensor._wrap(np.asarray(x, np.bool_)) if isinstance(x, (bool, np.bool_)) else _tensor(fn, x)
    return t if t._array_dtype().kind == "b" else apply_op("NotEqual", t, 0)


def logical_and(input: Any, other: Any) -> Any:
    """``ops.logical_and(input, other)``: True where both are true (non-zero)."""
    a, b = _bool("logical_and", input), _bool("logical_and", other)
    return apply_op("Select", a, b, apply_op("ZerosLike", b))


def logical_or(input: Any, other: Any) -> Any:
    """``ops.logical_or(input, other)``: True where either is true (non-zero)."""
    a, b = _bool("logical_or", input), _bool("logical_or", other)
    return apply_op("Select", a, apply_op("OnesLike", b), b)


def logical_not(input: Any) -> Any:
    """``ops.logical_not(input)``: True where ``input`` is false (zero)."""
    return apply_op("Equal", _bool("logical_not", input), False)


def isnan(input: Any) -> Any:
    """``ops.isnan(input)``: True where ``input`` is NaN (the one value not equal to itself)."""
    return apply_op("NotEqual", _tensor("isnan", input), input)


def remainder(input: Any, other: Any) -> Any:
    """``ops.remainder(input, other)``: input - floor(input / other) * other, ``input % other`` (FloorMod)."""
    return floor_mod(input, other)


def fill(type: Any, shape: Any, value: Any) -> Tensor:
    """``ops.fill(type, shape, value)``: a Tensor of ``shape`` filled with ``value`` in dtype ``type``; a constant."""
    return Tensor._wrap(np.full(_shape_of(shape), value, mstype.to_numpy(type)))


def depend(value: Any, expr: Any) -> Any:
    """``ops.depend(value, expr)``: ``value``, after ``expr``. Inside a construct the Tensors ``expr`` holds (in
    tuples, lists and dicts) become inputs of a Depend node, so a print or update in ``expr`` runs and is kept even
    when nothing else uses it (``depend(x * 2, print_(x))``); outside one, ``expr`` has already run."""
    if not (isinstance(value, Tensor) and value.is_traced):
        return value
    deps = [t for t in _tensors_in(expr) if t.is_traced]
    return apply_op("Depend", value, *deps) if deps else value


def _tensors_in(tree: Any) -> list[Tensor]:
    """The Tensors of a nest of tuples, lists and dicts, in order."""
    if isinstance(tree, Tensor):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (tuple, list)) else ()
    return [t for item in items for t in _tensors_in(item)]


def print_(*input_x: Any) -> Any:
    """``ops.print_(*input_x)``: ``ops.Print()(*input_x)``."""
    return Print()(*input_x)


def shape(input_x: Any) -> tuple[int, ...]:
    """``ops.shape(input_x)``: the static shape as a tuple of ints."""
    return Shape()(input_x)


class Shape:
    """``ops.Shape()(x)``: x's static shape as a tuple of ints (known while tracing too)."""

    def __call__(self, input_x: Any) -> tuple[int, ...]:
        if not isinstance(input_x, Tensor):
            raise TypeError(f"ops.Shape takes a Tensor, got {type(input_x).__name__}")
        return tuple(input_x.shape)

    def __repr__(self) -> str:
        return "Prim[Shape]"


class Print:
    """``ops.Print()(*inputs)``: prints strings and Tensors (numbers become Tensors), one per line, when the network
    runs: at once outside a construct, else each time the traced graph runs (embedded, or in the server's output).

    Inside a construct the printed Tensors are rebound to the Print node's pass-through outputs, so the print runs
    before their later uses; a print whose Tensors are never used afterwards is pruned with them, and one of
    constants only runs once, when the graph is compiled. Returns the first Tensor, passed through."""

    def __call__(self, *inputs: Any) -> Any:
        strings: list[str] = []
        slots: list[int] = []
        tensors: list[Tensor] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                strings.append(item)
                slots.append(i)
            elif isinstance(item, (Tensor, bool, int, float)):
                tensors.append(item if isinstance(item, Tensor) else Tensor(item))
            else:
                raise TypeError(f"ops.Print prints Tensors, numbers and strings; input {i} is a {type(item).__name__}")
        if not tensors:
            if current_frame() is not None:
                raise TypeError("ops.Print inside a construct needs at least one Tensor to print (strings alone have nothing to run with)")
            debug.sink("\n".join(strings))
            return None
        outs = apply_op("Print", *tensors, strings=tuple(strings), slots=tuple(slots))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for t, o in zip(tensors, outs):
            if t.is_traced:
                t._value = o._value
        return outs[0]

    def __repr__(self) -> str:
        return "Prim[Print]"


class DType:
    """``ops.DType()(x)``: x's MindSpore dtype."""

    def __call__(self, input_x: Any) -> Any:
        return dtype(input_x)

    def __repr__(self) -> str:
        return "Prim[DType]"


class Fill:
    """``ops.Fill()(type, shape, value)``: ``ops.fill`` as a primitive (model-zoo TrainOneStepCells make their sens with it)."""

    def __call__(self, type: Any, shape: Any, value: Any) -> Tensor:
        return fill(type, shape, value)

    def __repr__(self) -> str:
        return "Prim[Fill]"


class Zeros:
    """``ops.Zeros()(size, type=None)``: ``ops.zeros`` as a primitive."""

    def __call__(self, size: Any, type: Any = None) -> Tensor:
        return zeros(size, type)

    def __repr__(self) -> str:
        return "Prim[Zeros]"


class Ones:
    """``ops.Ones()(shape, type=None)``: ``ops.ones`` as a primitive."""

    def __call__(self, shape: Any, type: Any = None) -> Tensor:
        return ones(shape, type)

    def __repr__(self) -> str:
        return "Prim[Ones]"


class Size:
    """``ops.Size()(x)``: the number of elements of x, an int."""

    def __call__(self, input_x: Any) -> int:
        return _tensor("Size", input_x).size

    def __repr__(self) -> str:
        return "Prim[Size]"


class Rank:
    """``ops.Rank()(x)``: the number of axes of x, an int."""

    def __call__(self, input_x: Any) -> int:
        return _tensor("Rank", input_x).ndim

    def __repr__(self) -> str:
        return "Prim[Rank]"


class SparseSoftmaxCrossEntropyWithLogits:
    """``ops.SparseSoftmaxCrossEntropyWithLogits(is_grad=False)(logits, labels)``: the mean over the batch of the
    cross-entropy of (N, C) logits against class ids (N,) (``nn.SoftmaxCrossEntropyWithLogits(sparse=True,
    reduction='mean')``); ``is_grad=True``, which returns the logits' gradient instead, is not supported."""

    def __init__(self, is_grad: bool = False) -> None:
        if is_grad:
            raise NotImplementedError("ops.SparseSoftmaxCrossEntropyWithLogits: is_grad=True is not supported; "
                                      "take the gradient of the loss with ops.grad")
    def __call__(self, logits: Any, labels: Any) -> Any:
        return _loss.softmax_cross_entropy(logits, labels, True, "mean", "ops.SparseSoftmaxCrossEntropyWithLogits")

    def __repr__(self) -> str:
        return "Prim[SparseSoftmaxCrossEntropyWithLogits]"


class BiasAdd:
    """``ops.BiasAdd(data_format='NCHW')(input_x, bias)``: ``bias`` added along the channel axis (axis 1, or the last
    axis for 'NHWC')."""

    def __init__(self, data_format: str = "NCHW") -> None:
        if data_format not in ("NCHW", "NHWC", "NCDHW"):
            raise ValueError(f"ops.BiasAdd: data_format must be 'NCHW', 'NHWC' or 'NCDHW', got {data_format!r}")
        self.data_format = data_format

    def __call__(self, input_x: Any, bias: Any) -> Any:
        x = _tensor("BiasAdd", input_x)
        if x.ndim < 2 or not isinstance(bias, Tensor) or bias.ndim != 1:
            raise ValueError(f"ops.BiasAdd: input_x needs 2 or more axes and bias one, got {x.shape} and "
                             f"{getattr(bias, 'shape', type(bias).__name__)}")
        channel = x.ndim - 1 if self.data_format == "NHWC" else 1
        if bias.shape[0] != x.shape[channel]:
            raise ValueError(f"ops.BiasAdd: bias has {bias.shape[0]} elements for {x.shape[channel]} channels (axis {channel} of {x.shape})")
        return x + bias.reshape((-1,) + (1,) * (x.ndim - 1 - channel))

    def __repr__(self) -> str:
        return "Prim[BiasAdd]"


FUNCTIONS = {f.__name__: f for f in (
    ones, zeros, sum, mean, conv2d, max_pool2d, avg_pool2d, adaptive_avg_pool2d, split, einsum, pad, dropout, gelu, cumsum, topk,
    flatten, prod, amax, amin, max, min, argmax, argmin, fill, depend, print_, shape, floor_divide, floor_mod, remainder,
    div, unsqueeze, permute, clamp, masked_fill, full, arange, dtype, matmul, binary_cross_entropy_with_logits, cross_entropy, mse_loss,
    l1_loss, standard_normal, randn, rand, uniform, normal, logical_and, logical_or, logical_not, isnan,
)} | {"Shape": Shape, "Print": Print, "DType": DType, "Fill": Fill, "Zeros": Zeros, "Ones": Ones, "BiasAdd": BiasAdd,
                                             "Size": Size, "Rank": Rank, "SparseSoftmaxCrossEntropyWithLogits": SparseSoftmaxCrossEntropyWithLogits}
"""What ``gradserve.ops`` offers besides the op table's primitives and their functional forms."""
