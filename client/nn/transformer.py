"""MultiheadAttention and TransformerEncoderLayer with MindSpore 2.x arguments and parameter names (in_proj_weight,
in_proj_bias, out_proj.weight, ...), built from MatMul, BatchMatMul, Softmax and the basic layers."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradserve.client import dtype as mstype
from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.parameter import Parameter
from gradserve.client.tensor import Tensor

from .activation import get_activation
from .initializer import XavierUniform, initializer
from .layers import Dense, Dropout, LayerNorm


def _project(x: Any, weight: Any, bias: Any) -> Any:
    """x (..., E_in) @ weight.T (+ bias) over the last axis."""
    lead = x.shape[:-1]
    y = apply_op("MatMul", x.reshape(-1, x.shape[-1]), weight, transpose_a=False, transpose_b=True)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


def _masked(scores: Any, mask: Any) -> Any:
    """Scores with ``mask`` applied: a bool mask puts -inf where True, a float mask is added."""
    if mask._array_dtype() == np.bool_:
        ninf = Tensor(np.array(-np.inf, dtype=scores._array_dtype()))
        return apply_op("Select", mask, ninf, scores)
    return scores + mask


class MultiheadAttention(Cell):
    """``MultiheadAttention(embed_dim, num_heads, dropout=0.0, has_bias=True, add_bias_kv=False, add_zero_attn=False,
    kdim=None, vdim=None, batch_first=False, dtype=float32)``; ``construct(query, key, value, key_padding_mask=None,
    need_weights=True, attn_mask=None, average_attn_weights=True)`` returns (output, weights or None)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, has_bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, dtype: Any = mstype.float32) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"nn.MultiheadAttention: embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("nn.MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first, self.has_bias = batch_first, has_bias
        self._same_dims = self.kdim == embed_dim and self.vdim == embed_dim
        xavier = XavierUniform()
        if self._same_dims:
            self.in_proj_weight = Parameter(initializer(xavier, (3 * embed_dim, embed_dim), dtype), name="in_proj_weight")
        else:
            self.q_proj_weight = Parameter(initializer(xavier, (embed_dim, embed_dim), dtype), name="q_proj_weight")
            self.k_proj_weight = Parameter(initializer(xavier, (embed_dim, self.kdim), dtype), name="k_proj_weight")
            self.v_proj_weight = Parameter(initializer(xavier, (embed_dim, self.vdim), dtype), name="v_proj_weight")
        if has_bias:
            self.in_proj_bias = Parameter(initializer("zeros", (3 * embed_dim,), dtype), name="in_proj_bias")
        self.out_proj = Dense(embed_dim, embed_dim, has_bias=has_bias, dtype=dtype)
        if has_bias:
            self.out_proj.bias.set_data(np.zeros(embed_dim))
        self.dropout = Dropout(p=dropout)

    def _weights(self) -> tuple[Any, Any, Any]:
        if self._same_dims:
            e = self.embed_dim
            w = self.in_proj_weight
            return w[:e], w[e:2 * e], w[2 * e:]
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def _biases(self) -> tuple[Any, Any, Any]:
        if not self.has_bias:
            return None, None, None
        e, b = self.embed_dim, self.in_proj_bias
        return b[:e], b[e:2 * e], b[2 * e:]

    def _heads(self, x: Any) -> Any:
        """(N, L, E) -> (N, H, L, D)."""
        n, length, _ = x.shape
        return apply_op("Transpose", x.reshape(n, length, self.num_heads, self.head_dim), perm=(0, 2, 1, 3))

    def construct(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None, need_weights: bool = True,
                  attn_mask: Any = None, average_attn_weights: bool = True) -> Any:
        if not self.batch_first:
            query, key, value = (apply_op("Transpose", t, perm=(1, 0, 2)) for t in (query, key, value))
        n, length, _ = query.shape
        (wq, wk, wv), (bq, bk, bv) = self._weights(), self._biases()
        q = self._heads(_project(query, wq, bq)) * (1.0 / math.sqrt(self.head_dim))
        k = self._heads(_project(key, wk, bk))
        v = self._heads(_project(value, wv, bv))
        scores = apply_op("BatchMatMul", q, k, transpose_a=False, transpose_b=True)
        if attn_mask is not None:
            scores = _masked(scores, attn_mask)
        if key_padding_mask is not None:
            scores = _masked(scores, key_padding_mask.reshape(n, 1, 1, key_padding_mask.shape[-1]))
        attn = apply_op("Softmax", scores, axis=-1)
        out = apply_op("BatchMatMul", self.dropout(attn), v, transpose_a=False, transpose_b=False)
        out = apply_op("Transpose", out, perm=(0, 2, 1, 3)).reshape(n, length, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = apply_op("Transpose", out, perm=(1, 0, 2))
        if not need_weights:
            return out, None
        return out, (attn.mean(axis=1) if average_attn_weights else attn)


class TransformerEncoderLayer(Cell):
    """``TransformerEncoderLayer(d_model, nhead, dim_feedforward=2048, dropout=0.1, activation='relu',
    layer_norm_eps=1e-5, batch_first=False, norm_first=False, dtype=float32)``: self-attention and a feed-forward
    block, each with a residual connection and LayerNorm (before the block with ``norm_first``)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Any = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, dtype: Any = mstype.float32) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first, dtype=dtype)
        self.linear1 = Dense(d_model, dim_feedforward, dtype=dtype)
        self.dropout = Dropout(p=dropout)
        self.linear2 = Dense(dim_feedforward, d_model, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm((d_model,), epsilon=layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm((d_model,), epsilon=layer_norm_eps, dtype=dtype)
        self.dropout1 = Dropout(p=dropout)
        self.dropout2 = Dropout(p=dropout)
        act = get_activation(activation)
        if act is None:
            raise ValueError("nn.TransformerEncoderLayer: activation must be a name or a Cell, got None")
        self.activation = act

    def _sa_block(self, x: Any, attn_mask: Any, key_padding_mask: Any) -> Any:
        out, _ = self.self_attn(x, x, x, key_padding_mask, False, attn_mask)
        return self.dropout1(out)

    def _ff_block(self, x: Any) -> Any:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def construct(self, src: Any, src_mask: Any = None, src_key_padding_mask: Any = None) -> Any:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask))
        return self.norm2(x + self._ff_block(x))
