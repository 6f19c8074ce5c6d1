"""nn layers against PyTorch with the same weights in float64: forward values and gradients w.r.t. inputs and every
weight to 1e-9, embedded and (for one model) through a server; parameter names and MindSpore's default initializers."""
from __future__ import annotations

from functools import partial
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from nnkit import F64, TOL, assert_same, gs_grads, randomize, torch_grads

import gradserve as gs
from gradserve import nn, ops
from gradserve.client import backends
from gradserve.server.app import running
from gradserve.server.config import ServerConfig


def copy_linear(dense: nn.Dense) -> torch.nn.Linear:
    lin = torch.nn.Linear(dense.in_channels, dense.out_channels, bias=dense.has_bias, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(dense.weight.asnumpy()))
        if dense.has_bias:
            lin.bias.copy_(torch.tensor(dense.bias.asnumpy()))
    return lin


def mlp(act: nn.Cell) -> nn.SequentialCell:
    return nn.SequentialCell(nn.Dense(5, 7, dtype=F64), act, nn.Dense(7, 3, dtype=F64))


def torch_mlp(net: nn.SequentialCell, act: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    l0, l2 = copy_linear(net[0]), copy_linear(net[2])
    return torch.nn.Sequential(l0, act, l2), [l0.weight, l0.bias, l2.weight, l2.bias]


RNG = np.random.default_rng(7)
X = RNG.normal(size=(4, 5))
R3 = RNG.normal(size=(4, 3))


@pytest.mark.parametrize("ours, theirs", [
    (nn.ReLU, torch.nn.ReLU), (nn.Tanh, torch.nn.Tanh), (nn.Sigmoid, torch.nn.Sigmoid), (nn.SiLU, torch.nn.SiLU),
    (nn.GELU, lambda: torch.nn.GELU(approximate="tanh")), (nn.Softmax, lambda: torch.nn.Softmax(-1)),
    (nn.LogSoftmax, lambda: torch.nn.LogSoftmax(-1)), (nn.LeakyReLU, lambda: torch.nn.LeakyReLU(0.2)),
    (lambda: nn.LeakyReLU(0.05), lambda: torch.nn.LeakyReLU(0.05)), (nn.Identity, torch.nn.Identity),
])
def test_mlp_with_each_activation_matches_torch(ours: Any, theirs: Any) -> None:
    gs.set_seed(1)
    net = mlp(ours())
    module, params = torch_mlp(net, theirs())
    assert_same(gs_grads(net, X, R3), torch_grads(module, params, X, R3))


def test_dense_activation_argument_and_3d_input_match_torch() -> None:
    dense = nn.Dense(5, 3, activation="tanh", dtype=F64)
    lin = copy_linear(dense)
    x = RNG.normal(size=(2, 4, 5))
    r = RNG.normal(size=(2, 4, 3))
    module = torch.nn.Sequential(lin, torch.nn.Tanh())
    assert_same(gs_grads(dense, x, r), torch_grads(module, [lin.weight, lin.bias], x, r))


def test_dense_without_bias_has_only_weight() -> None:
    dense = nn.Dense(5, 3, has_bias=False, dtype=F64)
    assert [p.name for p in dense.get_parameters()] == ["weight"]
    lin = copy_linear(dense)
    assert_same(gs_grads(dense, X, R3), torch_grads(lin, [lin.weight], X, R3))


def test_layernorm_matches_torch() -> None:
    ln = nn.LayerNorm((5,), epsilon=1e-5, dtype=F64)
    ln.gamma.set_data(RNG.normal(size=5))
    ln.beta.set_data(RNG.normal(size=5))
    tln = torch.nn.LayerNorm(5, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        tln.weight.copy_(torch.tensor(ln.gamma.asnumpy()))
        tln.bias.copy_(torch.tensor(ln.beta.asnumpy()))
    r = RNG.normal(size=X.shape)
    assert_same(gs_grads(ln, X, r), torch_grads(tln, [tln.weight, tln.bias], X, r))
    assert [p.name for p in ln.get_parameters()] == ["gamma", "beta"]


def test_layernorm_over_two_axes_matches_torch() -> None:
    x = RNG.normal(size=(3, 4, 5))
    ln = nn.LayerNorm((4, 5), begin_norm_axis=1, begin_params_axis=1, epsilon=1e-6, dtype=F64)
    ln.gamma.set_data(RNG.normal(size=(4, 5)))
    tln = torch.nn.LayerNorm((4, 5), eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        tln.weight.copy_(torch.tensor(ln.gamma.asnumpy()))
    r = RNG.normal(size=x.shape)
    assert_same(gs_grads(ln, x, r), torch_grads(tln, [tln.weight, tln.bias], x, r))


def test_embedding_matches_torch_and_zeroes_the_padding_row() -> None:
    table = RNG.normal(size=(10, 4))
    emb = nn.Embedding(10, 4, embedding_table=gs.Tensor(table))
    ids = np.array([[1, 3, 3], [9, 0, 1]], dtype=np.int32)
    temb = torch.nn.Embedding(10, 4, dtype=torch.float64)
    with torch.no_grad():
        temb.weight.copy_(torch.tensor(table))
    r = RNG.normal(size=(2, 3, 4))
    ours = gs_grads(emb, ids, r, inputs=False)
    theirs = torch_grads(lambda t: temb(t.long()), [temb.weight], ids, r, inputs=False)
    assert_same(ours, theirs)
    padded = nn.Embedding(10, 4, padding_idx=2)
    assert padded.embedding_table.name == "embedding_table"
    assert padded.embedding_table.dtype == gs.float32
    assert not padded.embedding_table.asnumpy()[2].any() and padded.embedding_table.asnumpy()[3].any()


def test_flatten_keeps_start_and_end_axes() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    assert nn.Flatten()(gs.Tensor(x)).shape == (2, 60)
    np.testing.assert_array_equal(nn.Flatten(1, 2)(gs.Tensor(x)).asnumpy(), x.reshape(2, 12, 5))
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(2, 1)(gs.Tensor(x))


def test_parameter_names_follow_mindspore() -> None:
    class Net(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.SequentialCell([nn.Dense(2, 3), nn.ReLU(), nn.Dense(3, 1)])
            self.heads = nn.CellList([nn.Dense(1, 1), nn.LayerNorm((1,))])

        def construct(self, x: Any) -> Any:
            return self.heads[1](self.heads[0](self.body(x)))

    net = Net()
    assert [p.name for p in net.get_parameters()] == [
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
        "heads.0.weight", "heads.0.bias", "heads.1.gamma", "heads.1.beta",
    ]
    assert len(net.body) == 3 and isinstance(net.body[1], nn.ReLU) and len(net.body[0:2]) == 2
    assert net(gs.Tensor(np.ones((4, 2), np.float32))).shape == (4, 1)


def test_pinn_second_derivative_in_the_loss_matches_torch() -> None:
    """A tanh MLP u(x) and the loss sum(u''(x)^2) (second derivative w.r.t. the input inside the loss):
    gradients w.r.t. every weight equal PyTorch's double backward."""
    gs.set_seed(3)
    net = nn.SequentialCell(nn.Dense(1, 8, activation="tanh", dtype=F64), nn.Dense(8, 1, dtype=F64))
    du = ops.GradOperation()(net)
    d2u = ops.GradOperation()(lambda x: du(x).sum())

    class Residual(nn.Cell):
        def __init__(self) -> None:
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, x: Any) -> Any:
            return (d2u(x) * d2u(x)).sum()

    x = np.linspace(-1, 1, 6).reshape(6, 1)
    ours = ops.GradOperation(get_by_list=True)(Residual(), gs.ParameterTuple(net.trainable_params()))(gs.Tensor(x))
    l0, l1 = copy_linear(net[0]), copy_linear(net[1])
    tx = torch.tensor(x, requires_grad=True)
    u = l1(torch.tanh(l0(tx)))
    (g1,) = torch.autograd.grad(u.sum(), tx, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), tx, create_graph=True)
    wrt = [l0.weight, l0.bias, l1.weight, l1.bias]
    theirs = torch.autograd.grad((g2 * g2).sum(), wrt, allow_unused=True)  # u'' does not depend on the last bias
    for a, b, w in zip(ours, theirs, wrt):
        np.testing.assert_allclose(a.asnumpy(), np.zeros(w.shape) if b is None else b.numpy(), rtol=TOL, atol=TOL)
    assert np.abs(ours[0].asnumpy()).max() > 1e-3


@pytest.fixture()
def remote_target(clean_context: None) -> Iterator[None]:
    """A one-worker loopback server as the client's target; the client's backends closed afterwards."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
        gs.set_context(target=f"127.0.0.1:{server.port}")
        yield
        for backend in backends._backends.values():
            backend.close()


def test_mlp_with_layernorm_matches_torch_through_a_server(remote_target: None) -> None:
    gs.set_seed(5)
    net = nn.SequentialCell(nn.Dense(5, 6, dtype=F64), nn.LayerNorm((6,), dtype=F64), nn.GELU(), nn.Dense(6, 3, dtype=F64))
    l0, l3 = copy_linear(net[0]), copy_linear(net[3])
    tln = torch.nn.LayerNorm(6, eps=1e-7, dtype=torch.float64)
    module = torch.nn.Sequential(l0, tln, torch.nn.GELU(approximate="tanh"), l3)
    params = [l0.weight, l0.bias, tln.weight, tln.bias, l3.weight, l3.bias]
    assert_same(gs_grads(net, X, R3), torch_grads(module, params, X, R3))


def copy_into_torch(ours: nn.Cell, module: torch.nn.Module) -> list[torch.Tensor]:
    """Copy our parameters into ``module`` by name (torch's LayerNorm weight/bias are our gamma/beta); returns
    torch's parameters in our trainable_params order."""
    theirs = dict(module.named_parameters())
    out = []
    for p in ours.trainable_params():
        name = p.name.replace("gamma", "weight").replace("beta", "bias")
        with torch.no_grad():
            theirs[name].copy_(torch.tensor(p.asnumpy()))
        out.append(theirs[name])
    assert len(out) == len(theirs)
    return out


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_matches_torch(norm_first: bool) -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", norm_first=norm_first, dtype=F64)
    randomize(layer, 1)
    tlayer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation=partial(torch.nn.functional.gelu, approximate="tanh"),
                                              norm_first=norm_first, dtype=torch.float64).eval()
    params = copy_into_torch(layer, tlayer)
    x = RNG.normal(size=(5, 3, 8))
    r = RNG.normal(size=x.shape)
    assert_same(gs_grads(layer, x, r), torch_grads(tlayer, params, x, r))


def test_multihead_attention_with_masks_matches_torch() -> None:
    mha = nn.MultiheadAttention(6, 3, batch_first=True, dtype=F64)
    randomize(mha, 2)
    tmha = torch.nn.MultiheadAttention(6, 3, batch_first=True, dtype=torch.float64)
    params = copy_into_torch(mha, tmha)
    q, k = RNG.normal(size=(2, 4, 6)), RNG.normal(size=(2, 5, 6))
    causal = np.triu(np.ones((4, 5), bool), 2)
    padding = np.zeros((2, 5), bool)
    padding[1, 3:] = True
    r = RNG.normal(size=(2, 4, 6))
    rw = RNG.normal(size=(2, 3, 4, 5))

    class Both(nn.Cell):
        def __init__(self) -> None:
            super().__init__(auto_prefix=False)
            self.mha = mha

        def construct(self, q: Any, k: Any) -> Any:
            out, w = self.mha(q, k, k, gs.Tensor(padding), True, gs.Tensor(causal), False)
            return (out * gs.Tensor(r)).sum() + (w * gs.Tensor(rw)).sum()

    (dq, dk), dw = ops.GradOperation(get_all=True, get_by_list=True)(Both(), gs.ParameterTuple(mha.trainable_params()))(
        gs.Tensor(q), gs.Tensor(k))
    tq, tk = torch.tensor(q, requires_grad=True), torch.tensor(k, requires_grad=True)
    out, w = tmha(tq, tk, tk, key_padding_mask=torch.tensor(padding), attn_mask=torch.tensor(causal),
                  average_attn_weights=False)
    expected = torch.autograd.grad((out * torch.tensor(r)).sum() + (w * torch.tensor(rw)).sum(), [tq, tk] + params)
    for a, b in zip([dq, dk, *dw], expected):
        np.testing.assert_allclose(a.asnumpy(), b.numpy(), rtol=TOL, atol=TOL)
    assert [p.name for p in mha.trainable_params()] == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]


def test_multihead_attention_without_weights_returns_output_and_none(where: str) -> None:
    mha = nn.MultiheadAttention(6, 2, batch_first=True, dtype=F64)
    randomize(mha, 3)
    tmha = torch.nn.MultiheadAttention(6, 2, batch_first=True, dtype=torch.float64)
    copy_into_torch(mha, tmha)
    q = RNG.normal(size=(2, 3, 6))
    result = mha(gs.Tensor(q), gs.Tensor(q), gs.Tensor(q), None, False)
    assert isinstance(result, tuple) and len(result) == 2 and result[1] is None
    with torch.no_grad():
        expected, none = tmha(torch.tensor(q), torch.tensor(q), torch.tensor(q), need_weights=False)
    assert none is None
    np.testing.assert_allclose(result[0].asnumpy(), expected.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("ours", "theirs"), [
    (nn.ConstantPad1d((1, 2), 0.5), torch.nn.ConstantPad1d((1, 2), 0.5)),
    (nn.ConstantPad2d(1, -1.0), torch.nn.ConstantPad2d(1, -1.0)),
    (nn.ConstantPad3d((1, 0, 0, 1, 2, 0), 2.0), torch.nn.ConstantPad3d((1, 0, 0, 1, 2, 0), 2.0)),
    (nn.ZeroPad2d((0, 1, 2, 0)), torch.nn.ZeroPad2d((0, 1, 2, 0))),
    (nn.ReflectionPad1d(2), torch.nn.ReflectionPad1d(2)),
    (nn.ReflectionPad2d((1, 2, 2, 0)), torch.nn.ReflectionPad2d((1, 2, 2, 0))),
    (nn.ReflectionPad3d(1), torch.nn.ReflectionPad3d(1)),
    (nn.ReplicationPad1d((3, 1)), torch.nn.ReplicationPad1d((3, 1))),
    (nn.ReplicationPad2d(2), torch.nn.ReplicationPad2d(2)),
    (nn.ReplicationPad3d((0, 1, 1, 0, 2, 1)), torch.nn.ReplicationPad3d((0, 1, 1, 0, 2, 1))),
    (nn.Pad(((0, 0), (1, 0), (2, 1), (1, 2))), lambda t: torch.nn.functional.pad(t, (1, 2, 2, 1, 1, 0))),
    (nn.Pad(((0, 0), (0, 0), (1, 2), (2, 1)), "REFLECT"), lambda t: torch.nn.functional.pad(t, (2, 1, 1, 2), mode="reflect")),
])
def test_padding_layers_match_torch(ours: nn.Cell, theirs: Any) -> None:
    """Values and input gradients (of a weighted sum, so each padded position's source counts) equal torch's."""
    x = np.random.default_rng(4).normal(size=(2, 3, 4, 5))
    x = x[0] if "1d" in type(ours).__name__ else x  # torch's 1-d padding takes (C, W) or (N, C, W)
    want = theirs(torch.tensor(x)).detach().numpy()
    weights = np.random.default_rng(5).normal(size=want.shape)
    a = torch.tensor(x, requires_grad=True)
    (theirs(a) * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(ours(gs.Tensor(x)).asnumpy(), want, rtol=1e-15)
    got = gs.grad(lambda t: (ours(t) * gs.Tensor(weights)).sum())(gs.Tensor(x))
    np.testing.assert_allclose(got.asnumpy(), a.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_padding_layer_errors() -> None:
    with pytest.raises(ValueError, match=r"nn.ReflectionPad2d: padding must be an int or a tuple of 4 ints, got \(1, 2\)"):
        nn.ReflectionPad2d((1, 2))
    with pytest.raises(ValueError, match=r"nn.Pad: mode must be one of \('CONSTANT', 'REFLECT'\) \('SYMMETRIC' is not supported\)"):
        nn.Pad(((1, 1),), "SYMMETRIC")
    with pytest.raises(ValueError, match=r"nn.Pad: paddings has 1 pairs for an input of rank 2"):
        nn.Pad(((1, 1),))(gs.Tensor(np.ones((2, 3))))
