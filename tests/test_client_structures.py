"""Structured outputs (dicts, lists, tuples with Python scalars and strings) and inputs (tuples and lists of
Tensors), and GradOperation without weights, embedded and on a server.

Oracles: NumPy closed forms and torch float64 gradients; MindSpore's test_pynative_requires_grad_without_params
for the weights of a Cell with frozen Parameters."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, Tensor

RNG = np.random.default_rng(11)
X = RNG.normal(size=(2, 3))
Y = RNG.normal(size=(2, 3))
Z = RNG.normal(size=(2, 3))
W = RNG.normal(size=(2, 3))


def close(got: Any, want: Any) -> None:
    """A Tensor close to a NumPy array or a torch tensor (float64, to 1e-9)."""
    assert isinstance(got, Tensor), f"expected a Tensor, got {got!r}"
    w = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(got.asnumpy(), w, rtol=1e-9, atol=1e-12)


class Frozen(nn.Cell):
    """out = 2 x p1 + x p2 + x p3, with p1 and p2 frozen (requires_grad=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.p1 = Parameter(Tensor(np.array([1.0])), name="p1", requires_grad=False)
        self.p2 = Parameter(Tensor(np.array([2.0])), name="p2", requires_grad=False)
        self.p3 = Parameter(Tensor(np.array([3.0])), name="p3")

    def construct(self, x: Tensor) -> Tensor:
        return 2 * x * self.p1 + x * self.p2 + x * self.p3


def test_get_by_list_without_weights_differentiates_every_parameter_of_the_cell(where: str) -> None:
    net, x = Frozen(), Tensor(np.array([1.5]))
    (dx,), (d1, d2, d3) = ops.GradOperation(get_all=True, get_by_list=True)(net)(x)
    close(dx, np.array([2 * 1.0 + 2.0 + 3.0]))
    close(d1, np.zeros(1))
    close(d2, np.zeros(1))
    close(d3, np.array([1.5]))
    _, _, w3 = ops.GradOperation(get_by_list=True)(net)(x)
    close(w3, np.array([1.5]))
    explicit = ops.GradOperation(get_by_list=True)(net, [net.p1, net.p2, net.p3])(x)
    assert [g.asnumpy().tolist() for g in explicit] == [[0.0], [0.0], [1.5]]


class DictNet(nn.Cell):
    """A dict output with a string, a list holding a float, and a tuple holding None."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(W), name="w")

    def construct(self, x: Tensor, y: Tensor) -> Any:
        return {"loss": (x * self.w).sum(), "name": "mlp", "parts": [x * x, 2.0], "pair": (ops.sin(y), None)}


def test_a_dict_output_keeps_its_keys_constants_and_containers(where: str) -> None:
    out = DictNet()(Tensor(X), Tensor(Y))
    assert isinstance(out, dict) and list(out) == ["loss", "name", "parts", "pair"]
    assert out["name"] == "mlp"
    assert isinstance(out["parts"], list) and out["parts"][1] == 2.0
    assert isinstance(out["pair"], tuple) and out["pair"][1] is None
    close(out["loss"], np.asarray((X * W).sum()))
    close(out["parts"][0], X * X)
    close(out["pair"][0], np.sin(Y))


def test_gradients_of_a_dict_output_sum_over_its_tensor_leaves(where: str) -> None:
    net, x, y = DictNet(), Tensor(X), Tensor(Y)
    dx, dy = ops.GradOperation(get_all=True)(net)(x, y)
    close(dx, W + 2 * X)
    close(dy, np.cos(Y))
    s0, s1, s2 = RNG.normal(), RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))
    sens = {"loss": Tensor(np.asarray(s0)), "name": "ignored", "parts": [Tensor(s1), 0.0], "pair": (Tensor(s2), None)}
    (dx, dy), (dw,) = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)(net)(x, y, sens)
    close(dx, s0 * W + 2 * X * s1)
    close(dy, s2 * np.cos(Y))
    close(dw, s0 * X)


def test_sens_for_a_dict_output_must_be_a_dict_with_its_keys(where: str) -> None:
    grad = ops.GradOperation(sens_param=True)(DictNet())
    with pytest.raises(TypeError, match=r"returns a dict with keys \['loss', 'name', 'parts', 'pair'\].*got a tuple"):
        grad(Tensor(X), Tensor(Y), (Tensor(np.asarray(1.0)),))
    with pytest.raises(ValueError, match=r"sens\['parts'\]\[0\] has shape \(3,\)"):
        grad(Tensor(X), Tensor(Y), {"loss": Tensor(np.asarray(1.0)), "name": 0, "parts": [Tensor(np.ones(3)), 0],
                                    "pair": (Tensor(Y), None)})


class ListInput(nn.Cell):
    """out = xs[0] * xs[1] + z * exp(xs[2]) for a list (or tuple) xs."""

    def construct(self, xs: Any, z: Tensor) -> Tensor:
        return xs[0] * xs[1] + z * ops.exp(xs[2])


def test_a_list_input_is_flattened_and_its_gradient_is_a_list(where: str) -> None:
    net, z = ListInput(), Tensor(Z)
    xs = [Tensor(X), Tensor(Y), Tensor(W)]
    close(net(xs, z), X * Y + Z * np.exp(W))
    (gxs, gz) = ops.GradOperation(get_all=True)(net)(xs, z)
    assert isinstance(gxs, list) and len(gxs) == 3
    close(gxs[0], Y)
    close(gxs[1], X)
    close(gxs[2], Z * np.exp(W))
    close(gz, np.exp(W))
    first = ops.GradOperation()(net)(tuple(xs), z)
    assert isinstance(first, tuple) and len(first) == 3
    close(first[2], Z * np.exp(W))


def nested(inputs: Any, c: Tensor) -> Any:
    """Nested tuples in and out: (((a*b, (exp(c),)), "tag"), a + c) for inputs ((a, b),)."""
    ((a, b),) = inputs
    return ((a * b, (ops.exp(c) * a,)), "tag"), a + c


def test_nested_tuples_match_torch_with_and_without_sens(where: str) -> None:
    a, b, c = (torch.tensor(v, requires_grad=True) for v in (X, Y, Z))
    inputs, ct = ((Tensor(X), Tensor(Y)),), Tensor(Z)
    out = nested(inputs, ct)
    got = gs.jit(nested)(inputs, ct)
    assert got[0][1] == "tag" and isinstance(got[0][0][1], tuple)
    close(got[0][0][0], out[0][0][0].asnumpy())
    close(got[1], X + Z)
    s = [RNG.normal(size=(2, 3)) for _ in range(3)]
    for sens_param in (False, True):
        weights = s if sens_param else [np.ones((2, 3))] * 3
        loss = ((a * b) * torch.tensor(weights[0])).sum() + (torch.exp(c) * a * torch.tensor(weights[1])).sum() \
            + ((a + c) * torch.tensor(weights[2])).sum()
        ga, gb, gc = torch.autograd.grad(loss, (a, b, c))
        grad = ops.GradOperation(get_all=True, sens_param=sens_param)(nested)
        sens = (((Tensor(s[0]), (Tensor(s[1]),)), "tag"), Tensor(s[2]))
        ((gab,), gcc) = grad(inputs, ct, sens) if sens_param else grad(inputs, ct)
        assert isinstance(gab, tuple) and len(gab) == 2
        close(gab[0], ga)
        close(gab[1], gb)
        close(gcc, gc)


def test_functional_grad_of_a_tuple_input_is_a_tuple(where: str) -> None:
    def f(pair: Any, z: Tensor) -> Any:
        return {"value": (pair[0] * pair[1] * z).sum(), "kind": "product"}

    pair, z = (Tensor(X), Tensor(Y)), Tensor(Z)
    g = gs.grad(f, grad_position=0)(pair, z)
    assert isinstance(g, tuple) and len(g) == 2
    close(g[0], Y * Z)
    close(g[1], X * Z)
    value, (gp, gz) = gs.value_and_grad(f, grad_position=(0, 1))(pair, z)
    assert value["kind"] == "product"
    close(value["value"], np.asarray((X * Y * Z).sum()))
    close(gp[1], X * Z)
    close(gz, X * Y)


class GradInside(nn.Cell):
    """Takes the gradients of DictNet inside its own construct (a GradOperation node over structured outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = DictNet()
        self.grad = ops.GradOperation(get_all=True, sens_param=True)

    def construct(self, xy: Any, s: Tensor) -> Any:
        sens = {"loss": s, "name": "", "parts": [xy[0], 0.0], "pair": (xy[1], None)}
        return self.grad(self.net)(xy[0], xy[1], sens)


def test_a_nested_gradoperation_over_structures(where: str) -> None:
    s = RNG.normal()
    dx, dy = GradInside()((Tensor(X), Tensor(Y)), Tensor(np.asarray(s)))
    close(dx, s * W + 2 * X * X)
    close(dy, Y * np.cos(Y))


def test_outputs_other_than_tensors_numbers_strings_and_none_are_named() -> None:
    with pytest.raises(TypeError, match=r"returned a numpy.ndarray among its outputs"):
        gs.jit(lambda x: (x, np.ones(2)))(Tensor(X))
    with pytest.raises(TypeError, match=r"returned a str; a network must return a Tensor or a tuple, list or dict"):
        gs.jit(lambda x: "no")(Tensor(X))
    with pytest.raises(TypeError, match=r"input 0 is a tuple holding a builtins.object"):
        ListInput()((Tensor(X), object(), Tensor(Y)), Tensor(Z))


def torch_vjp(fn: Any, inputs: tuple[np.ndarray, ...], cots: list[np.ndarray]) -> list[np.ndarray]:
    """PyTorch's gradients of sum(<leaf_i, cot_i>) over fn's Tensor output leaves (float64)."""
    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    leaves = fn(*ts)
    loss = sum((leaf * torch.tensor(c)).sum() for leaf, c in zip(leaves, cots))
    return [g.numpy() for g in torch.autograd.grad(loss, ts)]


def structured(x: Tensor, y: Tensor) -> Any:
    """A dict holding a nested tuple and a list, with constants among the outputs."""
    return {"p": x * y, "q": (ops.sin(x), [y * y, "tag"]), "n": None, "r": ops.exp(x) * 2.0}


def test_vjp_takes_cotangents_in_the_outputs_structure(where: str) -> None:
    x, y = Tensor(X), Tensor(Y)
    out, vjp_fn = gs.vjp(structured, x, y)
    assert out["q"][1][1] == "tag" and out["n"] is None
    cots = [RNG.normal(size=(2, 3)) for _ in range(4)]
    v = {"p": Tensor(cots[0]), "q": (Tensor(cots[1]), [Tensor(cots[2]), "unused"]), "n": None, "r": Tensor(cots[3])}
    dx, dy = vjp_fn(v)
    want = torch_vjp(lambda a, b: (a * b, torch.sin(a), b * b, torch.exp(a) * 2.0), (X, Y), cots)
    close(dx, want[0])
    close(dy, want[1])
    # a tuple output: its cotangents as one tuple, or (as MindSpore also takes them) as separate arguments
    pair = lambda a, b: (a * b, [ops.cos(b), (a + b,)])  # noqa: E731
    _, pair_fn = gs.vjp(pair, x, y)
    nested_v = (Tensor(cots[0]), [Tensor(cots[1]), (Tensor(cots[2]),)])
    want = torch_vjp(lambda a, b: (a * b, torch.cos(b), a + b), (X, Y), cots[:3])
    for got in (pair_fn(nested_v), pair_fn(*nested_v)):
        close(got[0], want[0])
        close(got[1], want[1])
    with pytest.raises(TypeError, match=r"returns a dict with keys \['p', 'q', 'n', 'r'\] here, so v must be a dict"):
        vjp_fn((Tensor(cots[0]),))
    with pytest.raises(ValueError, match=r"v\['q'\]\[1\]\[0\] has shape \(3,\)"):
        vjp_fn({**v, "q": (Tensor(cots[1]), [Tensor(np.ones(3)), 0])})
    with pytest.raises(TypeError, match=r"v\['r'\] must be a Tensor"):
        vjp_fn({**v, "r": 1.0})


def test_vjp_of_tuple_and_dict_inputs_with_constants(where: str) -> None:
    def f(pair: Any, cfg: Any) -> Any:
        return pair[0] * cfg["w"] * cfg["k"] + ops.sin(pair[2]) * float(cfg["shift"].sum())

    cfg = {"w": Tensor(W), "k": 3.0, "name": "cfg", "shift": np.array([0.5, 1.5])}
    out, vjp_fn = gs.vjp(f, (Tensor(X), None, Tensor(Y)), cfg)
    close(out, X * W * 3.0 + np.sin(Y) * 2.0)
    ct = RNG.normal(size=(2, 3))
    (gpair, gcfg) = vjp_fn(Tensor(ct))
    assert isinstance(gpair, tuple) and len(gpair) == 2 and list(gcfg) == ["w"]
    close(gpair[0], ct * W * 3.0)
    close(gpair[1], ct * np.cos(Y) * 2.0)
    close(gcfg["w"], ct * X * 3.0)


def aux_fns() -> list[Any]:
    return [
        lambda x: ((x * x).sum(), 3.0, "label"),
        lambda x: ((x * x).sum(), None),
        lambda x: ((x * x).sum(), Tensor(np.array([5.0])), {"note": "constant"}),
    ]


@pytest.mark.parametrize("k", range(3))
def test_has_aux_returns_constant_aux_values(where: str, k: int) -> None:
    fn, x = aux_fns()[k], Tensor(X)
    aux_out = fn(x)[1:]
    want_aux = aux_out[0] if len(aux_out) == 1 else aux_out

    def same_aux(got: Any, want: Any) -> None:
        if isinstance(want, Tensor):
            close(got, want.asnumpy())
        elif isinstance(want, tuple):
            assert isinstance(got, tuple) and len(got) == len(want)
            for g, w in zip(got, want):
                same_aux(g, w)
        else:
            assert got == want

    g, aux = gs.grad(fn, has_aux=True)(x)
    close(g, 2 * X)
    same_aux(aux, tuple(aux_out))
    value, g = gs.value_and_grad(fn, has_aux=True)(x)  # MindSpore: all of fn's outputs, then the gradient
    close(value[0], np.asarray((X * X).sum()))
    same_aux(value[1:], tuple(aux_out))
    close(g, 2 * X)
    out, vjp_fn, aux = gs.vjp(fn, x, has_aux=True)
    same_aux(aux, want_aux)
    close(vjp_fn(Tensor(np.asarray(2.0)))[0], 4 * X)
    v = RNG.normal(size=X.shape)
    out, dot, aux = gs.jvp(fn, x, Tensor(v), has_aux=True)
    close(dot, np.asarray((2 * X * v).sum()))
    same_aux(aux, want_aux)
    jac, aux = gs.jacrev(fn, has_aux=True)(x)
    close(jac, 2 * X)
    same_aux(aux, want_aux)


def test_has_aux_needs_a_tensor_first_and_another_output() -> None:
    with pytest.raises(ValueError, match="with has_aux=True the function must return at least two outputs, the first a Tensor"):
        gs.grad(lambda x: (x * x).sum(), has_aux=True)(Tensor(X))
    with pytest.raises(ValueError, match="the first a Tensor"):
        gs.grad(lambda x: (1.0, (x * x).sum()), has_aux=True)(Tensor(X))


def jac_net(pair: Any, z: Tensor) -> Any:
    """Two outputs of a tuple input (a, 2.0, b) and z."""
    a, k, b = pair
    return a * b.sum() * k, ops.sin(a) * z.sum()


def torch_jac(i: int, j: int) -> np.ndarray:
    """d output i / d torch input j (a, b, z) by torch.autograd.functional.jacobian."""
    def f(a: torch.Tensor, b: torch.Tensor, z: torch.Tensor) -> Any:
        return (a * b.sum() * 2.0, torch.sin(a) * z.sum())[i]

    return torch.autograd.functional.jacobian(f, tuple(torch.tensor(v) for v in (X, Y, Z)))[j].numpy()


@pytest.mark.parametrize("jac", [gs.jacfwd, gs.jacrev], ids=["jacfwd", "jacrev"])
def test_jacobians_of_tuple_inputs_in_mindspores_structure(where: str, jac: Any) -> None:
    args = ((Tensor(X), 2.0, Tensor(Y)), Tensor(Z))
    both = jac(jac_net, grad_position=(0, 1))(*args)
    # two outputs and two positions: per output, per position; the tuple input's Jacobian is one per Tensor it holds
    assert isinstance(both, tuple) and len(both) == 2
    for i in range(2):
        (ja, jb), jz = both[i]
        assert ja.shape == (2, 3, 2, 3) and jz.shape == (2, 3, 2, 3)
        close(ja, torch_jac(i, 0))
        close(jb, torch_jac(i, 1))
        close(jz, torch_jac(i, 2))
    first = jac(jac_net, grad_position=0)(*args)  # one position: a flat tuple over the outputs
    assert isinstance(first, tuple) and len(first) == 2 and isinstance(first[1], tuple)
    close(first[1][0], torch_jac(1, 0))
    single = jac(lambda p, z: jac_net(p, z)[0], grad_position=(0, 1))(*args)  # one output: a tuple over positions
    assert isinstance(single, tuple) and len(single) == 2
    close(single[0][1], torch_jac(0, 1))
    close(single[1], torch_jac(0, 2))
    bare = jac(lambda p, z: jac_net(p, z)[1], grad_position=1)(*args)  # one output, one position: bare
    close(bare, torch_jac(1, 2))


def with_constants(pair: Any, cfg: Any) -> Tensor:
    """pair = (x, k, None, "tag", arr), cfg = {"y": y, "scale": s, "nested": [y2, 4]}."""
    x, k, none, tag, arr = pair
    assert none is None and tag == "tag" and isinstance(arr, np.ndarray)
    return (x * k * Tensor(arr) + cfg["y"] * cfg["scale"] + cfg["nested"][0] * cfg["nested"][1]).sum()


def test_constants_inside_input_containers_pass_through(where: str) -> None:
    arr = np.array([1.0, -2.0, 0.5])
    pair = (Tensor(X), 3.0, None, "tag", arr)
    cfg = {"y": Tensor(Y), "scale": 0.5, "nested": [Tensor(Z), 4]}
    close(gs.jit(with_constants)(pair, cfg), np.asarray((X * 3.0 * arr + Y * 0.5 + Z * 4).sum()))
    (gp, gc) = gs.grad(with_constants, grad_position=(0, 1))(pair, cfg)
    assert isinstance(gp, tuple) and len(gp) == 1  # constants get no gradient: they are dropped, as at top level
    close(gp[0], np.broadcast_to(3.0 * arr, X.shape))
    assert list(gc) == ["y", "nested"] and isinstance(gc["nested"], list) and len(gc["nested"]) == 1
    close(gc["y"], np.full_like(Y, 0.5))
    close(gc["nested"][0], np.full_like(Z, 4.0))
    (gp, gc) = ops.GradOperation(get_all=True)(with_constants)(pair, cfg)
    close(gc["nested"][0], np.full_like(Z, 4.0))
    # a changed constant is a new trace, never a stale one
    arr2 = np.array([2.0, 2.0, 2.0])
    close(gs.grad(with_constants)((Tensor(X), 1.5, None, "tag", arr2), cfg)[0], np.full_like(X, 3.0))
    cfg2 = {**cfg, "nested": [Tensor(Z), 7]}
    close(gs.grad(with_constants, grad_position=1)(pair, cfg2)["nested"][0], np.full_like(Z, 7.0))


def test_vjp_with_structured_outputs_inside_a_trace_and_under_grad(where: str) -> None:
    def fd(a: Tensor, b: Tensor) -> Any:
        return {"p": a * b, "q": (ops.sin(a), [b * b, "s"])}

    @gs.jit
    def inside(a: Tensor, b: Tensor) -> Any:
        _, vjp_fn = gs.vjp(fd, a, b)
        return vjp_fn({"p": a, "q": (b, [a, None])})

    da, db = inside(Tensor(X), Tensor(Y))
    close(da, Y * X + np.cos(X) * Y)
    close(db, X * X + 2 * Y * X)
    g = gs.grad(lambda a, b: inside(a, b)[0].sum(), grad_position=(0, 1))(Tensor(X), Tensor(Y))
    close(g[0], Y - np.sin(X) * Y)
    close(g[1], X + np.cos(X))
