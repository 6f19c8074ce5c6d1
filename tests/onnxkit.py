"""PyTorch models exported to ONNX for the import tests: an MLP, a CNN with BatchNorm (eval) and MaxPool, and a
transformer encoder layer; exported with the TorchScript exporter (the torch.export one needs onnxscript)."""
from __future__ import annotations

import io
import math
import warnings

import torch


class MLP(torch.nn.Module):
    """Linear, tanh, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class CNN(torch.nn.Module):
    """Conv (padded), BatchNorm, ReLU, MaxPool, Flatten, Linear, LogSoftmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(4 * 3 * 3, 5)
        self.explicit_bn = False
        """Write BatchNorm (eval) out as arithmetic, so autograd also differentiates the running statistics, which
        torch's batch_norm refuses; the export uses the module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.explicit_bn:
            bn, c = self.bn, (1, -1, 1, 1)
            h = (h - bn.running_mean.view(c)) / torch.sqrt(bn.running_var.view(c) + bn.eps) * bn.weight.view(c) + bn.bias.view(c)
        else:
            h = self.bn(h)
        return torch.log_softmax(self.fc(torch.flatten(self.pool(torch.relu(h)), 1)), -1)


class Encoder(torch.nn.Module):
    """A post-norm transformer encoder layer (multi-head self-attention, GELU feed-forward), written out because
    torch 2.13's TorchScript exporter fails on nn.TransformerEncoderLayer (is_causal traced as a Tensor)."""

    def __init__(self, d: int = 8, heads: int = 2, ff: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)
        self.norm1 = torch.nn.LayerNorm(d)
        self.ff1 = torch.nn.Linear(d, ff)
        self.ff2 = torch.nn.Linear(ff, d)
        self.norm2 = torch.nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).split(d, dim=-1))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1) @ v
        x = self.norm1(x + self.out(a.transpose(1, 2).reshape(b, t, d)))
        return self.norm2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))


MODELS = {"mlp": (MLP, (2, 4)), "cnn": (CNN, (2, 2, 6, 6)), "encoder": (Encoder, (2, 5, 8))}
"""Name -> (module class, input shape)."""


def export(module: torch.nn.Module, x: torch.Tensor, opset: int = 17) -> bytes:
    """The ONNX bytes of ``module`` (in eval mode) on ``x``, with initializer names kept (no constant folding, so
    BatchNorm stays a node)."""
    module.eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=opset, do_constant_folding=False,
                          input_names=["x"], output_names=["y"])
    return f.getvalue()


def model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A seeded model of ``MODELS`` (normalization weights and statistics made non-trivial) and an input for it, in ``dtype``."""
    torch.manual_seed(seed)
    cls, shape = MODELS[name]
    m = cls().to(dtype)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.5, 0.5)
        if isinstance(mod, torch.nn.LayerNorm):  # distinct values: the exporter shares initializers that are equal
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.5, 0.5)
    return m.eval(), torch.randn(*shape, dtype=dtype)
