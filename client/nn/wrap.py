"""Training and evaluation wrappers (MindSpore's WithLossCell, WithEvalCell, ForwardValueAndGrad, TrainOneStepCell) and
``clip_by_global_norm``. A TrainOneStepCell step is a forward call, a gradient call and a NumPy optimizer update."""
from __future__ import annotations

from types import FunctionType, MethodType
from typing import Any, Sequence

import numpy as np

from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.grad import GradOperation
from gradserve.client.tensor import Tensor

from .optim import Optimizer


class WithLossCell(Cell):
    """``WithLossCell(backbone, loss_fn)``: loss_fn(backbone(data), label)."""

    def __init__(self, backbone: Cell, loss_fn: Cell) -> None:
        super().__init__(auto_prefix=False)
        self._backbone, self._loss_fn = backbone, loss_fn

    @property
    def backbone_network(self) -> Cell:
        """The wrapped network."""
        return self._backbone

    def construct(self, data: Any, label: Any) -> Any:
        return self._loss_fn(self._backbone(data), label)


class WithEvalCell(Cell):
    """``WithEvalCell(network, loss_fn, add_cast_fp32=False)``: (loss, outputs, label) for one batch."""

    def __init__(self, network: Cell, loss_fn: Cell, add_cast_fp32: bool = False) -> None:
        super().__init__(auto_prefix=False)
        self._network, self._loss_fn, self.add_cast_fp32 = network, loss_fn, add_cast_fp32

    def construct(self, data: Any, label: Any) -> Any:
        outputs = self._network(data)
        if self.add_cast_fp32:
            label = apply_op("Cast", label, dtype=np.dtype(np.float32))
            outputs = apply_op("Cast", outputs, dtype=np.dtype(np.float32))
        return self._loss_fn(outputs, label), outputs, label


class ForwardValueAndGrad(Cell):
    """``ForwardValueAndGrad(network, weights=None, get_all=False, get_by_list=False, sens_param=False)``: calling it
    returns (network's output, gradients), the gradients as ``GradOperation(get_all, get_by_list, sens_param)`` gives
    them for ``weights``; with ``sens_param`` the last input is the sensitivity, not passed to ``network``, which is a
    Cell, a function or a method, as MindSpore's."""

    def __init__(self, network: Cell | FunctionType | MethodType, weights: Any = None, get_all: bool = False, get_by_list: bool = False,
                 sens_param: bool = False) -> None:
        super().__init__(auto_prefix=False)
        if not isinstance(network, (Cell, FunctionType, MethodType)):
            raise TypeError(f"nn.ForwardValueAndGrad: network must be a Cell, a function or a method, got {type(network).__name__}")
        if get_by_list and weights is None:
            raise TypeError("nn.ForwardValueAndGrad: get_by_list=True needs weights (a ParameterTuple or a list of Parameters)")
        self.network, self.weights = network, weights
        self.get_all, self.get_by_list, self.sens_param = get_all, get_by_list, sens_param
        self.grad = GradOperation(get_all=get_all, get_by_list=get_by_list, sens_param=sens_param)

    def __call__(self, *inputs: Any) -> Any:
        return self.construct(*inputs)

    def construct(self, *inputs: Any) -> Any:
        if self.sens_param and not inputs:
            raise ValueError("nn.ForwardValueAndGrad: sens_param=True needs the sensitivity as the last input")
        loss = self.network(*(inputs[:-1] if self.sens_param else inputs))
        grad_fn = self.grad(self.network, self.weights) if self.get_by_list else self.grad(self.network)
        return loss, grad_fn(*inputs)


class TrainOneStepCell(Cell):
    """``TrainOneStepCell(network, optimizer, sens=None, return_grad=False)``: calling it with a batch computes the
    loss and the gradients of ``network`` (a loss network) scaled by ``sens`` (1.0 when None), updates the weights
    with ``optimizer`` and returns the loss (and, with ``return_grad``, the gradients by parameter name). Its
    ``construct`` runs outside a trace, so a subclass may transform the gradients (for example with
    ``clip_by_global_norm``) before ``self.optimizer(grads)``. As MindSpore's, it sets ``network``, ``optimizer``,
    ``weights``, ``grad``, ``sens``, ``reducer_flag`` (False: no distributed training here) and ``grad_reducer``
    (the identity), so model-zoo subclasses run unchanged. A step's forward call moves each Dropout to its next
    mask once; the gradient call reuses that forward's mask."""

    def __init__(self, network: Cell, optimizer: Optimizer, sens: float | None = None, return_grad: bool = False) -> None:
        super().__init__(auto_prefix=False)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"nn.TrainOneStepCell: optimizer must be an nn optimizer, got {type(optimizer).__name__}")
        self.network, self.optimizer = network, optimizer
        self.network.set_grad()
        self.weights = optimizer.parameters
        self.sens = 1.0 if sens is None else float(sens)
        self.grad = GradOperation(get_by_list=True, sens_param=True)
        self.reducer_flag = False
        self.grad_reducer = _identity
        self.return_grad = bool(return_grad)

    def __call__(self, *inputs: Any) -> Any:
        return self.construct(*inputs)

    def sens_like(self, loss: Tensor) -> Tensor:
        """``sens`` as a Tensor of the loss's shape and dtype."""
        return Tensor(np.full(loss.shape, self.sens, dtype=loss._array_dtype()))

    def construct(self, *inputs: Any) -> Any:
        loss = self.network(*inputs)
        grads = self.grad(self.network, self.weights)(*inputs, self.sens_like(loss))
        grads = self.grad_reducer(grads)
        self.optimizer(grads)
        if self.return_grad:
            return loss, {w.name: g for w, g in zip(self.weights, grads)}
        return loss


def _identity(x: Any) -> Any:
    """MindSpore's ``grad_reducer`` outside distributed training: the gradients unchanged."""
    return x


def clip_by_global_norm(x: Sequence[Any], clip_norm: float = 1.0, use_norm: Any = None) -> tuple[Any, ...]:
    """Each tensor of ``x`` times clip_norm / max(global_norm, clip_norm), global_norm = sqrt(sum of all squares);
    built from ops, so it runs eagerly on gradients or inside a traced construct."""
    if not clip_norm > 0:
        raise ValueError(f"clip_by_global_norm: clip_norm must be positive, got {clip_norm!r}")
    grads = tuple(x)
    if not grads:
        return ()
    if use_norm is None:
        total = None
        for g in grads:
            s = apply_op("ReduceSum", apply_op("Square", g), axis=(), keep_dims=False)
            total = s if total is None else total + s
        use_norm = apply_op("Sqrt", total)
    scale = clip_norm / apply_op("Maximum", use_norm, clip_norm)
    return tuple(g * scale for g in grads)
