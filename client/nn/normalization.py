"""BatchNorm1d and BatchNorm2d (MindSpore 2.x arguments and parameter names: gamma, beta, moving_mean,
moving_variance) over the engine's BatchNorm op. With batch statistics (training, or use_batch_statistics=True)
a call writes the op's new moving mean and variance into moving_mean and moving_variance afterwards
(runner.assign_after_call): moving = momentum * moving + (1 - momentum) * batch statistic, the batch variance
biased (divided by N*H*W), as MindSpore's CPU kernel updates them."""
from __future__ import annotations

from typing import Any

from gradserve.client import dtype as mstype
from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.parameter import Parameter
from gradserve.client.runner import assign_after_call, pending_value

from .initializer import initializer


class _BatchNorm(Cell):
    rank: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9, affine: bool = True,
                 gamma_init: Any = "ones", beta_init: Any = "zeros", moving_mean_init: Any = "zeros",
                 moving_var_init: Any = "ones", use_batch_statistics: bool | None = None, data_format: str = "NCHW",
                 dtype: Any = mstype.float32) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"nn.{name}: num_features must be a positive int, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"nn.{name}: momentum must be in [0, 1], got {momentum!r}")
        if data_format != "NCHW":
            raise ValueError(f"nn.{name}: only data_format 'NCHW' is supported, got {data_format!r}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), float(momentum)
        self.use_batch_statistics = use_batch_statistics
        shape = (num_features,)
        self.gamma = Parameter(initializer(gamma_init, shape, dtype), requires_grad=affine)
        self.beta = Parameter(initializer(beta_init, shape, dtype), requires_grad=affine)
        self.moving_mean = Parameter(initializer(moving_mean_init, shape, dtype), requires_grad=False)
        self.moving_variance = Parameter(initializer(moving_var_init, shape, dtype), requires_grad=False)
        self.training = False

    def construct(self, x: Any) -> Any:
        if x.ndim not in self.rank:
            raise ValueError(f"nn.{type(self).__name__}: input must have rank {' or '.join(map(str, self.rank))}, got shape {x.shape}")
        batch = self.training if self.use_batch_statistics is None else self.use_batch_statistics
        shape = x.shape
        x4 = x.reshape(*shape, *(1,) * (4 - x.ndim)) if x.ndim != 4 else x
        outs = apply_op("BatchNorm", x4, self.gamma, self.beta, pending_value(self.moving_mean),
                        pending_value(self.moving_variance), is_training=batch, epsilon=self.eps,
                        momentum=1.0 - self.momentum)
        if batch:
            assign_after_call(self.moving_mean, outs[1])
            assign_after_call(self.moving_variance, outs[2])
        return outs[0].reshape(*shape) if x.ndim != 4 else outs[0]


class BatchNorm1d(_BatchNorm):
    """``BatchNorm1d(num_features, eps=1e-5, momentum=0.9, affine=True, ...)`` over (N, C) or (N, C, L)."""

    rank = (2, 3)


class BatchNorm2d(_BatchNorm):
    """``BatchNorm2d(num_features, eps=1e-5, momentum=0.9, affine=True, ...)`` over (N, C, H, W)."""

    rank = (4,)
