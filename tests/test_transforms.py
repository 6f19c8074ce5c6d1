"""The functional transforms (grad, value_and_grad, vjp, jvp, jacfwd, jacrev, hessian) and their transform nodes.

Oracles: MindSpore's documented examples for the return structures, and torch.func in float64 (to 1e-9) for
the values, first to third order, on random functions and a small network, embedded and on a server."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.func as tf

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, Tensor
from gradserve.engine import GraphBuilder, compile_graph, jacobian, jvp, vjp

RTOL = 1e-9


def arr(t: Any) -> Any:
    """Tensors (in nested tuples) as NumPy arrays, other leaves (ids) as they are."""
    if isinstance(t, tuple):
        return tuple(arr(x) for x in t)
    return t.asnumpy() if isinstance(t, Tensor) else t


def assert_tree(got: Any, want: Any, rtol: float = RTOL) -> None:
    """Same nesting of tuples (lists are array leaves), equal int and str leaves, close arrays (torch tensors
    become NumPy)."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"expected {len(want)} items, got {got!r}"
        for g, w in zip(got, want):
            assert_tree(g, w, rtol)
    elif isinstance(want, (int, str)):
        assert got == want
    else:
        w = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
        assert isinstance(got, Tensor), f"expected a Tensor, got {got!r}"
        np.testing.assert_allclose(got.asnumpy(), w, rtol=rtol, atol=rtol * (1 + float(np.max(np.abs(w), initial=0.0))))


# ---- MindSpore's documented structures ----

class XYZ(nn.Cell):
    """x * y * z: the network of MindSpore's grad examples."""

    def construct(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return x * y * z


def doc_fn(x: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """x * exp(y) * z**2 and z: the has_aux example."""
    return x * ops.exp(y) * ops.pow(z, Tensor(2.0, gs.float32)), z


F32 = gs.float32


def test_grad_structures_follow_mindspore(where: str) -> None:
    """Several positions give a tuple, one (int or 1-tuple) a bare gradient; has_aux returns outputs[1:] as a tuple;
    return_ids pairs each gradient with its position; value_and_grad returns all outputs first."""
    x, y, z = Tensor([1, 2], F32), Tensor([-2, 3], F32), Tensor([0, 3], F32)
    net = XYZ()
    assert_tree(gs.grad(net, grad_position=(1, 2))(x, y, z), ([0, 6], [-2, 6]))
    assert_tree(gs.grad(net, grad_position=1)(x, y, z), [0, 6])
    assert_tree(gs.grad(net, grad_position=(1,))(x, y, z), [0, 6])
    assert_tree(gs.grad(net, grad_position=(1, 2), return_ids=True)(x, y, z), ((1, [0, 6]), (2, [-2, 6])))
    assert_tree(gs.value_and_grad(net, grad_position=1)(x, y, z), ([-0.0, 18], [0, 6]))
    a, b, c = Tensor([3, 3], F32), Tensor([0, 0], F32), Tensor([5, 5], F32)
    assert_tree(gs.grad(doc_fn, (1, 2), None, True)(a, b, c), (([75, 75], [30, 30]), ([5, 5],)))
    assert_tree(gs.value_and_grad(doc_fn, (1, 2), None, True)(a, b, c), (([75, 75], [5, 5]), ([75, 75], [30, 30])))
    with pytest.raises(ValueError, match="can not both be None"):
        gs.grad(net, None)


class Dense(nn.Cell):
    """x @ w + b with named parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(np.arange(6.0).reshape(3, 2) / 4), name="w")
        self.b = Parameter(Tensor(np.array([0.5, -1.0])), name="b")

    def construct(self, x: Tensor) -> Tensor:
        return ops.tanh(ops.matmul(x, self.w) + self.b)


def test_grad_with_weights(where: str) -> None:
    """Weights as a list, a ParameterTuple or one Parameter (bare); with positions, the pair (inputs, weights);
    return_ids names each weight; values against torch.func.grad."""
    net = Dense()
    x = np.array([[0.3, -0.2, 0.9], [1.1, 0.4, -0.7]])

    def loss(xx: Any, w: Any, b: Any) -> Any:
        return torch.tanh(xx @ w + b).sum()

    want = tf.grad(loss, argnums=(0, 1, 2))(*(torch.tensor(a) for a in (x, net.w.asnumpy(), net.b.asnumpy())))
    params = net.trainable_params()
    assert_tree(gs.grad(net, None, params)(Tensor(x)), (want[1], want[2]))
    assert_tree(gs.grad(net, None, gs.ParameterTuple(params))(Tensor(x)), (want[1], want[2]))
    assert_tree(gs.grad(net, None, net.b)(Tensor(x)), want[2])
    assert_tree(gs.grad(net, 0, params)(Tensor(x)), (want[0], (want[1], want[2])))
    assert_tree(gs.grad(net, 0, params, return_ids=True)(Tensor(x)), ((0, want[0]), (("w", want[1]), ("b", want[2]))))


def test_jvp_vjp_and_jacobians_follow_mindspore(where: str) -> None:
    """MindSpore's jvp, vjp and jacfwd/jacrev examples: outputs, products and aux as documented."""
    x = Tensor(np.array([[1, 2], [3, 4]]).astype(np.float32))
    y = Tensor(np.array([[1, 2], [3, 4]]).astype(np.float32))
    v = Tensor(np.array([[1, 1], [1, 1]]).astype(np.float32))

    def cube(a: Tensor, b: Tensor) -> Tensor:
        return a ** 3 + b

    assert_tree(gs.jvp(cube, (x, y), (v, v)), ([[2, 10], [30, 68]], [[4, 13], [28, 49]]))
    out, jvp_out, aux = gs.jvp(lambda a, b: (a ** 3 + b, b), (x, y), (v, v), has_aux=True)
    assert_tree((out, jvp_out, aux), ([[2, 10], [30, 68]], [[4, 13], [28, 49]], [[1, 2], [3, 4]]))
    outputs, vjp_fn = gs.vjp(cube, x, y)
    assert_tree(outputs, [[2, 10], [30, 68]])
    assert_tree(vjp_fn(v), ([[3, 12], [27, 48]], [[1, 1], [1, 1]]))
    outputs, vjp_fn, aux = gs.vjp(lambda a, b: (2 * a + b, b ** 3), x, y, has_aux=True)
    assert_tree((outputs, aux, vjp_fn(v)), ([[3, 6], [9, 12]], [[1, 8], [27, 64]], ([[2, 2], [2, 2]], [[1, 1], [1, 1]])))
    z = Tensor(np.array([[1, 1], [1, 1]]).astype(np.float32))

    def multi(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        return a ** 2 + b ** 2 + c ** 2, a * b * c

    eye = np.eye(4).reshape(2, 2, 2, 2)
    for jac in (gs.jacfwd, gs.jacrev):
        got, aux = jac(multi, grad_position=0, has_aux=True)(x, y, z)
        assert_tree((got, aux), (eye * 2 * x.asnumpy()[:, :, None, None], [[1, 4], [9, 16]]))
        both = jac(multi, grad_position=(0, 1))(x, y, z)
        diag = [eye * 2 * x.asnumpy()[:, :, None, None], eye * 2 * y.asnumpy()[:, :, None, None]]
        assert_tree(both, ((diag[0], diag[1]), (eye * (y.asnumpy() * z.asnumpy())[:, :, None, None], eye * (x.asnumpy() * z.asnumpy())[:, :, None, None])))


# ---- values against torch.func, first to third order ----

class Namespace:
    """The few functions the random formulas use, for one library."""

    def __init__(self, sin: Any, tanh: Any, exp: Any, total: Any) -> None:
        self.sin, self.tanh, self.exp, self.total = sin, tanh, exp, total


GS = Namespace(ops.sin, ops.tanh, ops.exp, ops.reduce_sum)
TORCH = Namespace(torch.sin, torch.tanh, torch.exp, torch.sum)


def formula(seed: int) -> Callable[[Namespace], Callable[..., Any]]:
    """A random smooth scalar function of (x, y), with random constant coefficients, for either library."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.5, 1.5, 4)

    def make(m: Namespace) -> Callable[..., Any]:
        def f(x: Any, y: Any) -> Any:
            return m.total(m.sin(x * c[0]) * m.tanh(y * c[1]) + m.exp(x * y * c[2]) * c[3] + x * x * y)

        return f

    return make


def point(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)


def both(seed: int) -> tuple[Callable[..., Any], Callable[..., Any], list[Tensor], list[torch.Tensor]]:
    """The gradserve and torch versions of random function ``seed`` and a random point for each."""
    make = formula(seed)
    xs = point(seed)
    return make(GS), make(TORCH), [Tensor(a) for a in xs], [torch.tensor(a) for a in xs]


@pytest.mark.parametrize("seed", [0, 1])
def test_first_order_transforms_match_torch(where: str, seed: int) -> None:
    """grad, value_and_grad, jvp, vjp, jacfwd and jacrev of a random function against torch.func."""
    f, g, xs, ts = both(seed)
    assert_tree(gs.grad(f, (0, 1))(*xs), tf.grad(g, argnums=(0, 1))(*ts))
    assert_tree(gs.value_and_grad(f)(*xs), (g(*ts), tf.grad(g)(*ts)))
    vs = [np.random.default_rng(seed).standard_normal(3) for _ in range(2)]
    assert_tree(gs.jvp(f, tuple(xs), tuple(Tensor(v) for v in vs)), tf.jvp(g, tuple(ts), tuple(torch.tensor(v) for v in vs)))
    out, vjp_fn = gs.vjp(f, *xs)
    want_out, want_fn = tf.vjp(g, *ts)
    assert_tree((out, vjp_fn(Tensor(np.float64(1.5)))), (want_out, want_fn(torch.tensor(1.5, dtype=torch.float64))))

    def vec(m: Namespace, fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda x, y: (m.sin(x) * y, fn(x, y))

    for jac, oracle in ((gs.jacfwd, tf.jacfwd), (gs.jacrev, tf.jacrev)):
        assert_tree(jac(vec(GS, f), (0, 1))(*xs), oracle(vec(TORCH, g), argnums=(0, 1))(*ts))


@pytest.mark.parametrize("seed", [2, 3])
def test_higher_orders_and_compositions_match_torch(where: str, seed: int) -> None:
    """Second and third order through every composition: grad of grad of grad, hessian, jacfwd of jacrev of grad,
    forward over reverse, grad of value_and_grad, GradOperation inside grad and grad inside GradOperation."""
    f, g, xs, ts = both(seed)
    x, t = xs[0], ts[0]
    y_, ty = xs[1], ts[1]

    def fx(a: Tensor) -> Tensor:
        return f(a, y_)

    def gx(a: torch.Tensor) -> torch.Tensor:
        return g(a, ty)

    def total_grad(fn: Callable[..., Any], m: Namespace, grad: Callable[..., Any]) -> Callable[..., Any]:
        return lambda a: m.total(grad(fn)(a))

    second = tf.grad(total_grad(gx, TORCH, tf.grad))
    third = tf.grad(lambda a: second(a).sum())
    assert_tree(gs.grad(total_grad(fx, GS, gs.grad))(x), second(t))
    assert_tree(gs.grad(lambda a: ops.reduce_sum(gs.grad(total_grad(fx, GS, gs.grad))(a)))(x), third(t))
    assert_tree(gs.hessian(fx)(x), tf.hessian(gx)(t))
    assert_tree(gs.jacfwd(gs.jacrev(gs.grad(fx)))(x), tf.jacfwd(tf.jacrev(tf.grad(gx)))(t))
    v = np.random.default_rng(seed).standard_normal(3)
    assert_tree(gs.jvp(gs.grad(fx), x, Tensor(v)), tf.jvp(tf.grad(gx), (t,), (torch.tensor(v),)))
    assert_tree(gs.grad(lambda a: ops.reduce_sum(gs.value_and_grad(fx)(a)[1]))(x), second(t))
    assert_tree(gs.grad(lambda a: ops.reduce_sum(ops.GradOperation()(fx)(a)))(x), second(t))
    assert_tree(ops.GradOperation()(lambda a: ops.reduce_sum(gs.grad(fx)(a)))(x), second(t))
    assert_tree(gs.jacrev(gs.jacfwd(fx))(x), tf.hessian(gx)(t))


class MLP(nn.Cell):
    """A two-layer tanh network with a scalar loss against a target."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.w1 = Parameter(Tensor(rng.standard_normal((3, 4)) / 2), name="w1")
        self.b1 = Parameter(Tensor(rng.standard_normal(4) / 4), name="b1")
        self.w2 = Parameter(Tensor(rng.standard_normal((4, 2)) / 2), name="w2")

    def construct(self, x: Tensor, target: Tensor) -> Tensor:
        h = ops.tanh(ops.matmul(x, self.w1) + self.b1)
        d = ops.matmul(h, self.w2) - target
        return ops.reduce_sum(d * d)


def test_network_gradients_and_hessian_vector_products_match_torch(where: str) -> None:
    """A small network: value_and_grad over its weights, and the input Hessian-vector product by forward over reverse."""
    rng = np.random.default_rng(7)
    net = MLP(rng)
    x, target, v = rng.standard_normal((5, 3)), rng.standard_normal((5, 2)), rng.standard_normal((5, 3))
    names = ("w1", "b1", "w2")

    def loss(xx: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        d = torch.tanh(xx @ w1 + b1) @ w2 - torch.tensor(target)
        return (d * d).sum()

    tw = [torch.tensor(getattr(net, n).asnumpy()) for n in names]
    tx = torch.tensor(x)
    value, grads = gs.value_and_grad(net, None, net.trainable_params())(Tensor(x), Tensor(target))
    assert_tree((value, grads), (loss(tx, *tw), tf.grad(loss, argnums=(1, 2, 3))(tx, *tw)))
    _, hvp = gs.jvp(gs.grad(net), (Tensor(x), Tensor(target)), (Tensor(v), Tensor(np.zeros_like(target))))
    _, want = tf.jvp(lambda a: tf.grad(loss)(a, *tw), (tx,), (torch.tensor(v),))
    assert_tree(hvp, want)


def test_a_repeated_call_reuses_its_trace(clean_context: None) -> None:
    """A transform called again with the same input signature is not traced again; jvp and vjp, which take the
    function at each call, reuse theirs too."""
    from gradserve.client import trace_count

    f, _, xs, _ = both(4)
    gf = gs.grad(f, (0, 1))
    first = arr(gf(*xs))
    second = arr(gf(*xs))
    np.testing.assert_array_equal(first[0], second[0])
    assert sum(trace_count(s) for s in gf._staged.values()) == 1
    v = tuple(Tensor(np.ones(3)) for _ in xs)
    for _ in range(3):
        gs.jvp(f, tuple(xs), v)
        gs.vjp(f, *xs)[1](Tensor(np.float64(1.0)))
    for kind in ("jvp", "vjp"):
        (transform,) = vars(f)[f"_gradserve_{kind}"].values()
        assert sum(trace_count(s) for s in transform._staged.values()) == 1


def test_transform_errors_name_the_fault(clean_context: None) -> None:
    """Bad arguments are clear errors: types, positions, has_aux without aux, mismatched tangents."""
    f, _, xs, _ = both(5)
    with pytest.raises(TypeError, match="grad_position must be an int"):
        gs.grad(f, "0")
    with pytest.raises(ValueError, match="repeats a position"):
        gs.grad(f, (0, 0))
    with pytest.raises(TypeError, match="weights must be a Parameter"):
        gs.grad(f, 0, weights=[1.0])
    with pytest.raises(ValueError, match="has_aux=True the function must return at least two outputs"):
        gs.grad(f, 0, has_aux=True)(*xs)
    with pytest.raises(ValueError, match=r"v\[0\] has shape \(2,\)"):
        gs.jvp(f, tuple(xs), (Tensor(np.zeros(2)), xs[1]))
    with pytest.raises(TypeError, match="input 1 is differentiated but is not a Tensor"):
        gs.grad(lambda a, k: a * k, 1)(xs[0], 2.0)


# ---- the engine's transforms directly ----

def test_engine_jvp_vjp_and_jacobians_match_torch() -> None:
    """Engine graphs: jvp, vjp with cotangents and weights-free positions, and both Jacobian modes of a two-output
    function, against torch.func."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((3, 2))
    b = GraphBuilder("f")
    x = b.input("x", "float64", (4, 3))
    y = b.input("y", "float64", (2,))
    h = b.op("Tanh", b.op("MatMul", x, b.param("w", w)) + y)
    g = b.build((h, b.op("ReduceSum", h * h)))

    def tg(xx: torch.Tensor, yy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hh = torch.tanh(xx @ torch.tensor(w) + yy)
        return hh, (hh * hh).sum()

    xa, ya = rng.standard_normal((4, 3)), rng.standard_normal(2)
    txs = (torch.tensor(xa), torch.tensor(ya))
    dx, dy = rng.standard_normal((4, 3)), rng.standard_normal(2)
    (out, dots) = compile_graph(jvp(g, (0, 1)))(xa, ya, dx, dy)
    want_out, want_dots = tf.jvp(tg, txs, (torch.tensor(dx), torch.tensor(dy)))
    assert_tree(tuple(Tensor(a) for a in (*out, *dots)), (*want_out, *want_dots))
    c0, c1 = rng.standard_normal((4, 2)), rng.standard_normal(())
    _, grads = compile_graph(vjp(g, (0, 1), sens_param=True))(xa, ya, c0, np.asarray(c1))
    assert_tree(tuple(Tensor(a) for a in grads), tf.vjp(tg, *txs)[1]((torch.tensor(c0), torch.tensor(c1))))
    want_jac = tf.jacrev(tg, argnums=(0, 1))(*txs)
    for mode in ("forward", "reverse"):
        _, jacs = compile_graph(jacobian(g, (0, 1), mode))(xa, ya)
        assert_tree(tuple(Tensor(a) for a in jacs), tuple(j for pair in want_jac for j in pair))


def test_transform_nodes_compose_in_one_graph() -> None:
    """A Jvp node over a library function holding a Grad node (forward over reverse) in one engine graph: the
    Hessian-vector product of sum(sin(x) * x) against its closed form."""
    lib: dict[str, Any] = {}
    b = GraphBuilder("f", lib)
    x = b.input("x", "float64", (3,))
    lib["f"] = b.build(b.op("ReduceSum", b.op("Sin", x) * x))
    b = GraphBuilder("df", lib)
    x = b.input("x", "float64", (3,))
    lib["df"] = b.build(b.op("Grad", x, fn="f")[1])
    b = GraphBuilder("main", lib)
    x, v = b.input("x", "float64", (3,)), b.input("v", "float64", (3,))
    main = b.build(tuple(b.op("Jvp", x, v, fn="df")))
    xa, va = np.array([0.3, -1.2, 2.0]), np.array([1.0, 0.5, -2.0])
    grad_f, hvp = compile_graph(main)(xa, va)
    np.testing.assert_allclose(grad_f, np.cos(xa) * xa + np.sin(xa), rtol=1e-12)
    np.testing.assert_allclose(hvp, (2 * np.cos(xa) - np.sin(xa) * xa) * va, rtol=1e-12)


# ---- transform nodes on the wire ----

def wire_network(outer: str = "Jacobian", fn: str = "a_inner", size: int = 3) -> Any:
    """A network whose main graph applies ``outer`` to library function "z_outer", which applies Grad to ``fn``:
    the outer function's name sorts after the inner one's, so decoding must follow the references."""
    from gradserve.proto import codec

    lib: dict[str, Any] = {}
    b = GraphBuilder("a_inner", lib)
    x = b.input("x", "float64", (size,))
    lib["a_inner"] = b.build(b.op("ReduceSum", b.op("Sin", x) * x))
    b = GraphBuilder("z_outer", lib)
    x = b.input("x", "float64", (size,))
    lib["z_outer"] = b.build(b.op("Grad", x, fn="a_inner")[1])
    b = GraphBuilder("main", lib)
    x = b.input("x", "float64", (size,))
    msg = codec.encode_graph(b.build(tuple(b.op(outer, x, fn="z_outer"))))
    msg.library["z_outer"].nodes[0].attrs["fn"].string_value = fn
    return msg


def test_transform_nodes_decode_in_reference_order_and_are_limited() -> None:
    """The codec follows every op's library references (not only GradOperation's): a Jacobian of a gradient decodes
    and gives the Hessian; a missing function is named at its attribute; the expansion counts against the node limit."""
    from gradserve.proto import codec

    g = codec.decode_graph(wire_network())
    xa = np.array([0.3, -1.2, 2.0])
    _, hess = compile_graph(g)(xa)
    np.testing.assert_allclose(hess, np.diag(2 * np.cos(xa) - np.sin(xa) * xa), rtol=1e-12, atol=1e-15)
    with pytest.raises(codec.WireError, match="refers to function 'missing'") as e:
        codec.decode_graph(wire_network(fn="missing"))
    assert e.value.field == 'graph.library["z_outer"].nodes[0].attrs["fn"]'
    with pytest.raises(codec.LimitError, match="expanding GradOperation and other transform nodes") as e:
        codec.decode_graph(wire_network(), codec.Limits(max_graph_nodes=40))
    assert e.value.field == "graph.nodes[0]"


def test_an_unrolled_jacobian_is_bounded_before_it_is_built() -> None:
    """A Jacobian of too many input elements is refused by the engine with a message naming the count."""
    from gradserve.proto import codec

    msg = wire_network(outer="Grad", size=5000)
    msg.nodes[0].op = "Jacobian"
    for key in ("has_aux", "weights"):
        if key in msg.nodes[0].attrs:
            del msg.nodes[0].attrs[key]
    with pytest.raises(codec.WireError, match="5000 input elements would each need a pass; at most 4096"):
        codec.decode_graph(msg)


def test_the_documented_jvp_node_runs() -> None:
    """docs/wire-format.md's Jvp example parses as a Graph, decodes and gives sin x and v cos x."""
    from pathlib import Path

    from google.protobuf import text_format

    from gradserve.proto import codec
    from gradserve.v1 import graph_pb2 as pb

    doc = (Path(__file__).resolve().parents[1] / "docs" / "wire-format.md").read_text()
    section = doc[doc.index("### Example: a Jacobian-vector product of Sin"):]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    header, _, body = block.partition("\n")
    assert header == "# proto-message: gradserve.v1.Graph"
    y, dy = compile_graph(codec.decode_graph(text_format.Parse(body, pb.Graph())))(np.array([0.5]), np.array([2.0]))
    np.testing.assert_allclose((y, dy), ([np.sin(0.5)], [2 * np.cos(0.5)]), rtol=1e-15)


class UserRule(nn.Cell):
    """2x + y with a user bprop (2 dout, 2 y dout): forward mode must follow the user's rule, transposed."""

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return 2 * x + y

    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return 2 * dout, 2 * y * dout


def test_forward_mode_follows_a_user_bprop(where: str) -> None:
    """jvp through a Cell with bprop is the transpose of the user's VJP (2 vx + 2 y vy), not the true derivative."""
    x, y, vx, vy = (np.array(a) for a in ([1.0, 2.0], [0.5, -1.0], [1.0, 3.0], [2.0, 1.0]))
    out, dot = gs.jvp(UserRule(), (Tensor(x), Tensor(y)), (Tensor(vx), Tensor(vy)))
    assert_tree((out, dot), (2 * x + y, 2 * vx + 2 * y * vy))
