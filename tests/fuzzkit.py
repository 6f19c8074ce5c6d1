"""Fuzzed gradserve requests, shared by tests/test_server_fuzz.py (drawn by hypothesis) and bench/fuzz.py (drawn
by a seeded ``random.Random``): valid-ish graphs built from the engine's op table, requests for them, mutations
of their protos and of their serialized bytes, the issue-9 reproducers, and a way to send them all.

Generation never runs an op: graphs are checked by the engine's ``GraphBuilder`` (shapes only) with modest
attribute values, and extreme values are put into the protos afterwards, so the generating process never
allocates what the server is asked to refuse.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

import grpc
import numpy as np
from google.rpc import code_pb2

from gradserve.engine import OPS, Graph, GraphBuilder
from gradserve.engine.errors import EngineError
from gradserve.engine.ir import Value, flatten
from gradserve.engine.optable import REQUIRED, Attr, OpDef, infer_node
from gradserve.proto import codec
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2 as spb

T = TypeVar("T")

SERVICE = "/gradserve.v1.Gradient/"
METHODS = ("RegisterNetwork", "Grad", "Run", "GradStream", "ListOps", "ServerInfo")
BAD_CODES = frozenset({"INTERNAL", "UNKNOWN"})
"""The statuses no request may get: every caller mistake has a clear one, and these mean a server bug."""

MAX_ELEMENTS = 4096
"""Largest tensor a generated valid graph holds, so that every valid request is cheap."""

EXTREME_INTS = (-1, 0, 64, 65, 2**31 - 1, 2**31, 2**32, 10**9, 2**62, 2**63 - 1, -(2**63))
DTYPES = ("float32", "float64", "float16", "int32", "int64", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float64", "float16")
SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 1e-30, 1e30, np.inf, -np.inf, np.nan)
GENERATED_OPS = tuple(sorted(n for n, o in OPS.items() if n != "GradOperation"))


class Draw:
    """Where a generator's choices come from: subclasses give ``integer`` and ``binary``; the rest is built on them."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]; shrinking (hypothesis) goes towards ``lo``."""
        raise NotImplementedError

    def binary(self, max_size: int) -> bytes:
        """Up to ``max_size`` arbitrary bytes."""
        raise NotImplementedError

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        """True with probability ``p`` (False is the simpler case)."""
        return self.integer(0, 999) >= 1000 - round(p * 1000)


class RandomDraw(Draw):
    """Choices from a seeded ``random.Random`` (bench/fuzz.py)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


@dataclass
class Call:
    """One gRPC call: a Gradient method and its serialized request(s) (several for GradStream)."""

    method: str
    payloads: list[bytes]
    what: str = ""

    def hex(self) -> str:
        """The call as text a reader can replay: method, then each payload in hex."""
        return "\n".join([f"{self.method} ({self.what})"] + [p.hex() for p in self.payloads])


@dataclass
class Outcome:
    """The status codes a call got (a stream's own status, then each stream answer's error code or OK)."""

    codes: list[str]
    messages: list[str] = field(default_factory=list)

    @property
    def bad(self) -> list[tuple[str, str]]:
        return [(c, m) for c, m in zip(self.codes, self.messages) if c in BAD_CODES]


def server_config(workers: int = 2) -> ServerConfig:
    """A loopback server with modest limits: messages up to 8 MiB (room for the 1 MiB reproducers), a deadline
    of at most 5 s, a short queue, a small registry and small worker caches (so that eviction is exercised and
    what they legitimately hold stays small beside the RSS bounds), 256 MiB and 10^9 FLOPs per request."""
    return ServerConfig(host="127.0.0.1", port=0, workers=workers, worker_cache_size=8, grace_seconds=5.0,
                        limits=Limits(max_message_bytes=8 << 20, max_deadline_ms=5000, max_queue_depth=8,
                                      max_registered_networks=16, max_registry_bytes=16 << 20,
                                      max_worker_cache_bytes=8 << 20, max_queued_bytes=64 << 20,
                                      max_request_peak_bytes=256 << 20, max_request_flops=10**9))


# ---- tensors ----


def random_array(d: Draw, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A small array of ``dtype``: ordinary values, with special ones (0, inf, nan, huge) now and then."""
    rng = np.random.default_rng(d.integer(0, 2**32 - 1))
    n = math.prod(shape)
    mode = d.integer(0, 3)
    if dtype == "bool":
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if dtype in FLOAT_DTYPES:
        vals = rng.uniform(-2, 2, n) if mode != 3 else rng.choice(np.array(SPECIAL_FLOATS), n)
        if mode == 1:
            vals = np.abs(vals) + 0.1
        with np.errstate(over="ignore", invalid="ignore"):
            return vals.astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    lo, hi = (-3, 4) if mode != 3 else (int(info.min), int(info.max))
    return rng.integers(max(lo, info.min), min(hi, info.max), n, endpoint=True).astype(dtype).reshape(shape)


def random_shape(d: Draw, max_rank: int = 3) -> tuple[int, ...]:
    return tuple(d.choice((1, 2, 3, 2, 0, 4)) for _ in range(d.integer(0, max_rank)))


# ---- attributes (modest values: the ones an engine builder may check locally) ----


def _axes(d: Draw, rank: int) -> tuple[int, ...]:
    return tuple(sorted({d.integer(-rank, max(rank - 1, 0)) for _ in range(d.integer(0, max(rank, 1)))}))


def _shape_like(d: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A target shape for Reshape/BroadcastTo-like attributes: a refactoring of ``shape``, with extra leading
    dims, ones inserted, a -1, or a few small dims."""
    n = math.prod(shape)
    kind = d.integer(0, 4)
    if kind == 0 and n:
        dims, rest = [], n
        for p in (2, 3):
            while rest % p == 0 and d.chance(0.6):
                dims.append(p)
                rest //= p
        return tuple(dims + [rest]) if rest > 1 or not dims else tuple(dims)
    if kind == 1:
        return (d.integer(1, 3),) + shape
    if kind == 2:
        return tuple(d.choice((1, d_)) for d_ in shape) + (1,) * d.integer(0, 1)
    if kind == 3 and shape:
        return (-1,) + shape[1:]
    return random_shape(d)


def modest_attr(d: Draw, key: str, spec: Attr, first: tuple[int, ...] | None) -> Any:
    """A value of attribute ``key`` likely (not certain) to suit an input of shape ``first``."""
    shape = first or ()
    rank = len(shape)
    k = spec.kind
    if k == "bool":
        return d.chance(0.5)
    if k == "int":
        if "mask" in key:
            return d.integer(0, 2 ** max(rank, 1) - 1) if d.chance(0.4) else 0
        if key == "output_num":
            return d.choice((1, 2, 3))
        if key == "num_segments":
            return d.integer(0, 4)
        return d.integer(-rank - 1, rank)
    if k == "float":
        return d.choice((1e-7, 1e-5, 0.0, 1.0, 0.1))
    if k == "ints":
        if key == "perm":
            perm = list(range(rank))
            random.Random(d.integer(0, 999)).shuffle(perm)
            return tuple(perm)
        if key in ("axis",):
            return _axes(d, rank)
        if key in ("shape",):
            return _shape_like(d, shape)
        if key in ("multiples",):
            return tuple(d.integer(1, 2) for _ in range(rank + d.integer(0, 1)))
        if key in ("begin", "end"):
            return tuple(d.integer(-3, 3) for _ in range(rank))
        if key == "strides":
            return tuple(d.choice((1, 1, 2, -1)) for _ in range(rank))
        return tuple(d.integer(-2, 3) for _ in range(d.integer(0, 3)))
    if k == "floats":
        return tuple(d.choice(SPECIAL_FLOATS) for _ in range(d.integer(0, 3)))
    if k == "dtype":
        return np.dtype(d.choice(DTYPES))
    if k == "tensor":
        return random_array(d, d.choice(DTYPES), random_shape(d, 2))
    if k == "strs":
        return ()
    return ""


# ---- graphs ----


@dataclass
class Built:
    """A generated network: the engine graph (valid by construction) and what a request for it needs."""

    graph: Graph

    @property
    def inputs(self) -> list[Value]:
        return list(self.graph.inputs)

    @property
    def params(self) -> list[str]:
        return [p.name for p in self.graph.params]

    @property
    def leaves(self) -> list[Value]:
        return flatten(self.graph.outputs)


def _try_node(d: Draw, b: GraphBuilder, opdef: OpDef, args: list[Value], attrs: dict[str, Any]) -> list[Value] | None:
    """Add ``opdef`` to ``b`` if the engine accepts it and its outputs stay small; None otherwise."""
    try:
        _, types = infer_node(opdef, "probe", args, dict(attrs), b)
    except EngineError:
        return None
    if any(t.size > MAX_ELEMENTS or len(t.shape) > 6 for t in types):
        return None
    name = None if d.chance(0.7) else d.choice(("n", "näme", "node with spaces", "x" * d.integer(1, 80)))
    try:
        return list(b.add_node(opdef.name, args, attrs, name=name, stop_gradient=d.chance(0.1)))
    except EngineError:  # a duplicate chosen name
        return None


def _args_for(d: Draw, opdef: OpDef, values: list[Value]) -> list[Value]:
    n = len(opdef.inputs) - (1 if opdef.variadic else 0) + (d.integer(0, 2) if opdef.variadic else 0)
    recent = values[-3:]
    out = []
    for _ in range(n):
        pool = recent if d.chance(0.6) else values
        out.append(d.choice(pool))
    return out


def build_graph(d: Draw, name: str = "main", library: dict[str, Graph] | None = None, max_nodes: int = 6) -> Built:
    """A valid network of a few ops drawn from the op table over small inputs and parameters (and, with
    a library, GradOperation nodes over its functions, nested when those contain some)."""
    library = {} if library is None else library
    b = GraphBuilder(name, library)
    values: list[Value] = []
    for i in range(d.integer(1, 3)):
        values.append(b.input(f"{name}_in{i}", d.choice(DTYPES[:3] if d.chance(0.8) else DTYPES), random_shape(d)))
    for i in range(d.integer(0, 2)):
        dt = d.choice(FLOAT_DTYPES[:2])
        values.append(b.param(f"{name}_p{i}", random_array(d, dt, random_shape(d, 2)), requires_grad=d.chance(0.8)))
    for _ in range(d.integer(1, max_nodes)):
        for _attempt in range(6):
            if library and d.chance(0.25):
                made = _try_grad_op(d, b, library, values)
            else:
                opdef = OPS[d.choice(GENERATED_OPS)]
                args = _args_for(d, opdef, values)
                first = args[0].shape if args else None
                attrs = {k: modest_attr(d, k, spec, first) for k, spec in opdef.attrs.items()
                         if spec.default is REQUIRED or d.chance(0.4)}
                made = _try_node(d, b, opdef, args, attrs)
            if made:
                values.extend(made)
                break
    tail = values[-1]
    if d.chance(0.3) and len(values) > 1:
        outputs: Any = (tail, d.choice(values)) if d.chance(0.7) else ((tail,), (d.choice(values),))
    else:
        outputs = tail
    return Built(b.build(outputs))


def _try_grad_op(d: Draw, b: GraphBuilder, library: dict[str, Graph], values: list[Value]) -> list[Value] | None:
    """A GradOperation node over a library function whose inputs match values of ``b``."""
    fn = d.choice(sorted(library))
    g = library[fn]
    args = []
    for v in g.inputs:
        same = [u for u in values if u.type == v.type]
        if not same:
            return None
        args.append(d.choice(same))
    attrs: dict[str, Any] = {"fn": fn, "get_all": d.chance(0.5), "sens_param": d.chance(0.2)}
    params = [p.name for p in g.params]
    if params and d.chance(0.5):
        attrs["get_by_list"] = True
        attrs["weights"] = tuple(p for p in params if d.chance(0.7)) or (params[0],)
    if attrs["sens_param"]:
        for leaf in flatten(g.outputs):
            same = [u for u in values if u.type == leaf.type]
            if not same:
                return None
            args.append(d.choice(same))
    return _try_node(d, b, OPS["GradOperation"], args, attrs)


def build_network(d: Draw) -> Built:
    """A main graph, sometimes with a library of one or two functions (the second may differentiate the first)."""
    library: dict[str, Graph] = {}
    for i in range(d.choice((0, 0, 1, 2))):
        library[f"fn{i}"] = build_graph(d, f"fn{i}", library, max_nodes=3).graph
    # Main's inputs are drawn independently; share the first function's input types now and then so that
    # GradOperation nodes find arguments.
    return build_graph(d, "main", library) if not library or d.chance(0.4) else _main_over(d, library)


def _main_over(d: Draw, library: dict[str, Graph]) -> Built:
    fn = d.choice(sorted(library))
    b = GraphBuilder("main", library)
    values = [b.input(f"x{i}", v.dtype, v.shape) for i, v in enumerate(library[fn].inputs)]
    made = _try_grad_op(d, b, library, values)
    if made:
        values.extend(made)
        if d.chance(0.5):
            made2 = _try_node(d, b, OPS["ReduceSum"], [made[0]], {})
            values.extend(made2 or [])
    return Built(b.build(values[-1]))


# ---- requests ----


def _tensor_for(d: Draw, dtype: Any, shape: tuple[int, ...]) -> pb.Tensor:
    """A tensor of the type wanted, or (now and then) one of a wrong dtype, shape or byte count."""
    dt, sh = np.dtype(dtype).name, tuple(shape)
    r = d.integer(0, 19)
    if r == 0:
        dt = d.choice(DTYPES)
    elif r == 1:
        sh = random_shape(d)
    msg = codec.encode_tensor(random_array(d, dt, sh))
    if r == 2:
        msg.data = msg.data[: max(0, len(msg.data) - 1)] + b"\x00\x00"
    return msg


def grad_operation(d: Draw, built: Built) -> pb.GradOperation:
    params = built.params
    op = pb.GradOperation(get_all=d.chance(0.5), sens_param=d.chance(0.2))
    if params and d.chance(0.4):
        op.get_by_list = True
        op.weights.extend(p for p in params if d.chance(0.7))
        if len(op.weights) == 1 and d.chance(0.5):
            op.bare_weight = True
    elif d.chance(0.03):
        op.weights.append("no_such_weight")
    return op


def _fill(d: Draw, req: Any, built: Built, by_id: bool) -> None:
    if by_id:
        req.network_id = codec.network_id(built.graph) if d.chance(0.95) else "sha256:" + "0" * 64
    else:
        req.graph.CopyFrom(codec.encode_graph(built.graph))
    inputs = built.inputs
    if d.chance(0.05) and inputs:
        inputs = inputs[:-1] if d.chance(0.5) else inputs + inputs[:1]
    req.inputs.extend(_tensor_for(d, v.dtype, v.shape) for v in inputs)
    for p in built.graph.params:
        if d.chance(0.15):
            req.parameters[p.name].CopyFrom(_tensor_for(d, p.data.dtype, p.data.shape))
    if d.chance(0.03):
        req.parameters["no_such_parameter"].CopyFrom(codec.encode_tensor(np.zeros(1, np.float32)))
    req.request_id = f"fuzz-{d.integer(0, 9999)}"


def grad_request(d: Draw, built: Built, by_id: bool) -> spb.GradRequest:
    req = spb.GradRequest(return_forward=d.chance(0.3))
    _fill(d, req, built, by_id)
    req.grad.CopyFrom(grad_operation(d, built))
    if req.grad.sens_param:
        req.sens.extend(_tensor_for(d, v.dtype, v.shape) for v in built.leaves)
    return req


def run_request(d: Draw, built: Built, by_id: bool) -> spb.RunRequest:
    req = spb.RunRequest()
    _fill(d, req, built, by_id)
    return req


def network_calls(d: Draw, built: Built) -> list[Call]:
    """A RegisterNetwork (sometimes) and a Grad, Run or GradStream call for ``built``."""
    by_id = d.chance(0.3)
    calls = [Call("RegisterNetwork", [spb.RegisterNetworkRequest(graph=codec.encode_graph(built.graph)).SerializeToString()],
                  "register")] if by_id or d.chance(0.1) else []
    kind = d.choice(("Grad", "Grad", "Run", "GradStream"))
    if kind == "Run":
        calls.append(Call("Run", [run_request(d, built, by_id).SerializeToString()], "run"))
    elif kind == "Grad":
        calls.append(Call("Grad", [grad_request(d, built, by_id).SerializeToString()], "grad"))
    else:
        calls.append(Call("GradStream", [grad_request(d, built, by_id).SerializeToString() for _ in range(d.integer(1, 3))],
                          "stream"))
    return calls


# ---- semantic mutations of a request's graph ----


def _nodes(g: pb.Graph) -> list[pb.Node]:
    return list(g.nodes) + [n for f in g.library.values() for n in f.nodes]


def mutate_graph(d: Draw, g: pb.Graph) -> str:
    """Break ``g`` in one way a caller might (extreme or wrong attributes, dangling or duplicate names, long
    names, bad declared types, missing outputs or functions); returns what was done."""
    nodes = _nodes(g)
    how = d.integer(0, 11)
    if nodes and how <= 3:
        n = d.choice(nodes)
        opdef = OPS.get(n.op)
        if opdef is None or not opdef.attrs:
            n.attrs["bogus"].int_value = d.choice(EXTREME_INTS)
            return "unknown attribute"
        key = d.choice(sorted(opdef.attrs))
        kind = opdef.attrs[key].kind
        a = n.attrs[key]
        if how == 0 and kind == "int":
            a.int_value = d.choice(EXTREME_INTS)
        elif how <= 1 and kind == "ints":
            a.ints.SetInParent()
            del a.ints.values[:]
            a.ints.values.extend(d.choice(EXTREME_INTS) if d.chance(0.3) else d.integer(-2, 3)
                                 for _ in range(d.choice((0, 1, 2, 3, 40, 65, 300))))
        elif how == 2:
            a.string_value = "wrong kind"
        else:
            del n.attrs[key]
        return f"attribute {key}"
    if nodes and how == 4:
        n = d.choice(nodes)
        if n.inputs:
            n.inputs[d.integer(0, len(n.inputs) - 1)] = d.choice(("undefined", n.outputs[0] if n.outputs else ""))
        return "input reference"
    if nodes and how == 5:
        n = d.choice(nodes)
        n.op = d.choice(GENERATED_OPS + ("NoSuchOp", "", "GradOperation"))
        return "op swapped"
    if nodes and how == 6:
        n = d.choice(nodes)
        n.name = d.choice(("\x00", "\u00e9" * 3, "n" * d.choice((65, 1000, 20_000))))
        n.inputs.append("missing_value")
        return "long name with a bad input"
    if how == 7 and g.inputs:
        i = d.choice(list(g.inputs))
        if d.chance(0.5):
            del i.shape[:]
            i.shape.extend(d.choice(EXTREME_INTS) for _ in range(d.integer(1, 3)))
        else:
            i.dtype = d.choice((0, 2, 99))
        return "declared input"
    if how == 8:
        g.outputs.Clear() if d.chance(0.5) else setattr(g.outputs, "value", "nowhere")
        return "outputs"
    if how == 9 and nodes:
        n = d.choice(nodes)
        n.outputs.append(n.outputs[0] if n.outputs and d.chance(0.5) else "extra")
        return "output names"
    if how == 10:
        n = g.nodes.add(op="GradOperation", inputs=[i.name for i in g.inputs][:1], outputs=["gg"])
        n.attrs["fn"].string_value = d.choice(sorted(g.library) + ["missing_fn"]) if g.library else "missing_fn"
        return "GradOperation reference"
    if g.parameters:
        p = d.choice(list(g.parameters))
        p.value.data = p.value.data[: len(p.value.data) // 2]
        return "parameter bytes"
    return "none"


# ---- byte mutations ----


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def top_fields(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of each top-level protobuf field of ``raw``, as far as it parses."""
    spans, i = [], 0
    try:
        while i < len(raw):
            start = i
            key, i = _read_varint(raw, i)
            wire = key & 7
            if wire == 0:
                _, i = _read_varint(raw, i)
            elif wire == 1:
                i += 8
            elif wire == 2:
                size, i = _read_varint(raw, i)
                i += size
            elif wire == 5:
                i += 4
            else:
                break
            if i > len(raw):
                break
            spans.append((start, i))
    except IndexError:
        pass
    return spans


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = raw[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            return n, i


def mutate_bytes(d: Draw, raw: bytes) -> tuple[bytes, str]:
    """``raw`` with bits flipped, cut short, a field repeated, a huge varint or length put in, or replaced."""
    how = d.integer(0, 6)
    if how == 0 and raw:
        out = bytearray(raw)
        for _ in range(d.integer(1, 4)):
            out[d.integer(0, len(out) - 1)] ^= 1 << d.integer(0, 7)
        return bytes(out), "bit flips"
    if how == 1 and raw:
        return raw[: d.integer(0, len(raw) - 1)], "truncated"
    if how == 2:
        spans = top_fields(raw)
        if spans:
            s, e = d.choice(spans)
            return raw[:e] + raw[s:e] * d.integer(1, 3) + raw[e:], "field repeated"
    if how == 3:
        number = d.integer(1, 9)
        return raw + varint(number << 3) + varint(d.choice(EXTREME_INTS)), "huge varint field"
    if how == 4:
        number = d.integer(1, 9)
        return raw + varint(number << 3 | 2) + varint(d.choice((2**31, 2**32, 2**63 - 1, 10**6))) + b"\x01\x02", "huge length"
    if how == 5:
        return d.binary(64), "random bytes"
    spans = top_fields(raw)
    if spans:
        s, e = d.choice(spans)
        return raw[s:e] + raw[:s] + raw[e:], "field moved"
    return raw, "unchanged"


# ---- cases ----


def random_case(d: Draw) -> list[Call]:
    """One fuzz case: valid calls for a generated network, the same with its graph broken, bytes of them
    mutated, or an argument-free method."""
    kind = d.integer(0, 9)
    if kind == 0:
        method = d.choice(("ListOps", "ServerInfo"))
        return [Call(method, [b"" if d.chance(0.7) else mutate_bytes(d, b"")[0]], method)]
    built = build_network(d)
    calls = network_calls(d, built)
    if kind <= 4:
        return calls
    if kind <= 6:
        call = calls[-1]
        cls = spb.RunRequest if call.method == "Run" else spb.GradRequest
        req = cls.FromString(call.payloads[-1])
        if req.HasField("graph"):
            what = mutate_graph(d, req.graph)
        else:
            reg = spb.RegisterNetworkRequest.FromString(calls[0].payloads[0])
            what = mutate_graph(d, reg.graph)
            calls[0] = Call("RegisterNetwork", [reg.SerializeToString()], f"register, {what}")
        call.payloads[-1] = req.SerializeToString()
        call.what += f", {what}"
        return calls
    call = d.choice(calls)
    i = d.integer(0, len(call.payloads) - 1)
    call.payloads[i], what = mutate_bytes(d, call.payloads[i])
    if d.chance(0.2):
        call.method = d.choice(METHODS)
    call.what += f", {what}"
    return calls


# ---- the reproducers listed in issue 9 ----


def _graph(*nodes: pb.Node, inputs: Sequence[tuple[str, int, Sequence[int]]], out: str) -> pb.Graph:
    g = pb.Graph(inputs=[pb.GraphInput(name=n, dtype=dt, shape=list(s)) for n, dt, s in inputs], nodes=list(nodes))
    g.outputs.value = out
    return g


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "", **attrs: Any) -> pb.Node:
    n = pb.Node(op=op, inputs=list(inputs), outputs=list(outputs), name=name)
    for k, v in attrs.items():
        if isinstance(v, (list, tuple)):
            n.attrs[k].ints.values.extend(v)
        elif isinstance(v, bool):
            n.attrs[k].bool_value = v
        else:
            n.attrs[k].int_value = v
    return n


F32, F64 = pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64


def _run(g: pb.Graph, *arrays: Any) -> spb.RunRequest:
    return spb.RunRequest(graph=g, inputs=[codec.encode_tensor(a) for a in arrays])


def _grad(g: pb.Graph, *arrays: Any) -> spb.GradRequest:
    return spb.GradRequest(graph=g, inputs=[codec.encode_tensor(a) for a in arrays])


@dataclass(frozen=True)
class Reproducer:
    """A request from the issue, the status codes the fixed server may answer, and (for names echoed back)
    the most bytes its message may have."""

    name: str
    call: Call
    expected: frozenset[str]
    max_message_bytes: int = 16 << 10


def reproducers() -> list[Reproducer]:
    """Each small request issue 9 found to crash, burn or wrongly answer a worker, as sent on main."""
    x = np.array(0.5)
    out: list[tuple[str, str, Any, set[str]]] = []
    # 182 bytes: a float64 scalar broadcast to 2**28 elements, Sin, Cos and Exp of it alive at once, summed.
    g = _graph(_node("BroadcastTo", ["x"], ["b"], shape=[2**28]), _node("Sin", ["b"], ["s"]), _node("Cos", ["b"], ["c"]),
               _node("Exp", ["b"], ["e"]), _node("Add", ["s", "c"], ["sc"]), _node("Add", ["sc", "e"], ["sce"]),
               _node("ReduceSum", ["sce"], ["y"]), inputs=[("x", F64, ())], out="y")
    out.append(("BroadcastTo 2**28, Sin+Cos+Exp summed (Run)", "Run", _run(g, x), {"RESOURCE_EXHAUSTED"}))
    # An empty axis divides into any number of pieces: the check of the output names comes after the slots.
    g = _graph(_node("Split", ["x"], ["p"], output_num=10**9), inputs=[("x", F32, (0,))], out="p")
    out.append(("Split output_num=10**9 (RegisterNetwork)", "RegisterNetwork", spb.RegisterNetworkRequest(graph=g),
                {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}))
    g = _graph(_node("BroadcastTo", ["x"], ["b"], shape=[8192, 8192]), _node("MatMul", ["b", "b"], ["m"]),
               _node("ReduceSum", ["m"], ["y"]), inputs=[("x", F32, ())], out="y")
    out.append(("BroadcastTo [8192,8192] + MatMul (Run)", "Run", _run(g, np.float32(1)), {"RESOURCE_EXHAUSTED"}))
    empty = np.zeros((2, 0), np.float32)
    for op in ("ReduceMax", "Softmax", "LogSoftmax"):
        g = _graph(_node(op, ["x"], ["r"]), _node("ReduceSum", ["r"], ["y"]), inputs=[("x", F32, (2, 0))], out="y")
        out.append((f"{op} of an empty tensor (Run)", "Run", _run(g, empty), {"INVALID_ARGUMENT"}))
        out.append((f"{op} of an empty tensor (Grad)", "Grad", _grad(g, empty), {"INVALID_ARGUMENT"}))
    # Found by this fuzzer (not in the list): a scalar squeezed on axis 0, softmax cross-entropy over no classes.
    g = _graph(_node("Squeeze", ["x"], ["y"], axis=[0]), inputs=[("x", F32, ())], out="y")
    out.append(("Squeeze axis=[0] of a scalar (Run)", "Run", _run(g, np.float32(1)), {"INVALID_ARGUMENT"}))
    g = _graph(_node("SoftmaxCrossEntropyWithLogits", ["x", "l"], ["loss", "bp"]), inputs=[("x", F32, (2, 0)), ("l", F32, (2, 0))],
               out="loss")
    out.append(("SoftmaxCrossEntropyWithLogits over no classes (Run)", "Run", _run(g, empty, empty), {"INVALID_ARGUMENT"}))
    one = np.ones(1, np.float32)
    # A rank over max_tensor_rank may be refused as that limit (RESOURCE_EXHAUSTED) before NumPy's 64 matters.
    rank_codes = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
    g = _graph(_node("Reshape", ["x"], ["y"], shape=[1] * 65), inputs=[("x", F32, (1,))], out="y")
    out.append(("Reshape to rank 65 (Run)", "Run", _run(g, one), rank_codes))
    g = _graph(_node("Reshape", ["x"], ["r"], shape=[1] * 64), _node("ExpandDims", ["r"], ["y"], axis=0),
               inputs=[("x", F32, (1,))], out="y")
    out.append(("ExpandDims to rank 65 (Run)", "Run", _run(g, one), rank_codes))
    g = _graph(_node("Tile", ["x"], ["y"], multiples=[1] * 65), inputs=[("x", F32, (1,))], out="y")
    out.append(("Tile to rank 65 (Run)", "Run", _run(g, one), rank_codes))
    g = _graph(_node("Reshape", ["x"], ["y"], shape=[2**32, 2**32, 0]), inputs=[("x", F32, (0,))], out="y")
    out.append(("Reshape [0] to [2**32, 2**32, 0] (Run)", "Run", _run(g, np.zeros(0, np.float32)), {"INVALID_ARGUMENT"}))
    big = "n" * (1 << 20)
    g = _graph(_node("Sin", ["missing"], ["y"], name=big), inputs=[("x", F32, (1,))], out="y")
    out.append(("1 MiB node name, dangling input (Run)", "Run", _run(g, one), {"INVALID_ARGUMENT"}))
    g = _graph(_node("Sin", [big], ["y"]), inputs=[("x", F32, (1,))], out="y")
    out.append(("1 MiB undefined value name (RegisterNetwork)", "RegisterNetwork", spb.RegisterNetworkRequest(graph=g),
                {"INVALID_ARGUMENT"}))
    g = _graph(_node(big, ["x"], ["y"]), inputs=[("x", F32, (1,))], out="y")
    out.append(("1 MiB op name (RegisterNetwork)", "RegisterNetwork", spb.RegisterNetworkRequest(graph=g), {"INVALID_ARGUMENT"}))
    n = _node("Sin", ["x"], ["y"])
    n.attrs[big].int_value = 1
    g = _graph(n, inputs=[("x", F32, (1,))], out="y")
    out.append(("1 MiB attribute name (RegisterNetwork)", "RegisterNetwork", spb.RegisterNetworkRequest(graph=g),
                {"INVALID_ARGUMENT"}))
    out.append(("1 MiB network_id (Grad)", "Grad", spb.GradRequest(network_id=big), {"NOT_FOUND", "INVALID_ARGUMENT"}))
    g = _graph(_node("Sin", ["x"], ["y"]), inputs=[("x", F32, (1,))], out="y")
    req = _grad(g, one)
    req.parameters[big].CopyFrom(codec.encode_tensor(one))
    out.append(("1 MiB parameter override name (Grad)", "Grad", req, {"INVALID_ARGUMENT"}))
    n = _node("GradOperation", ["x"], ["y"])
    n.attrs["fn"].string_value = big
    g = _graph(n, inputs=[("x", F32, (1,))], out="y")
    out.append(("1 MiB GradOperation fn name (RegisterNetwork)", "RegisterNetwork", spb.RegisterNetworkRequest(graph=g),
                {"INVALID_ARGUMENT"}))
    # A 1 MB attribute list: a million one-byte varints.
    for op, key in (("Reshape", "shape"), ("Transpose", "perm"), ("ReduceSum", "axis"), ("Tile", "multiples"),
                    ("Softmax", "axis"), ("Squeeze", "axis")):
        n = _node(op, ["x"], ["y"])
        n.attrs[key].ints.values.extend([1] * 10**6)
        g = _graph(n, inputs=[("x", F32, (1,))], out="y")
        out.append((f"1 MB {op}.{key} list (Run)", "Run", _run(g, one), {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}))
    return [Reproducer(name, Call(method, [msg.SerializeToString()], name), frozenset(codes))
            for name, method, msg, codes in out]


# ---- sending ----


def _code_name(code: int) -> str:
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else f"code {code}"


def send(channel: grpc.Channel, call: Call, timeout: float) -> Outcome:
    """Make ``call`` with identity serializers; the codes it got (a stream's answers' errors included)."""
    path = SERVICE + call.method
    try:
        if call.method == "GradStream":
            answers = list(channel.stream_stream(path)(iter(call.payloads), timeout=timeout))
            codes, messages = ["OK"], [""]
            for raw in answers:
                resp = spb.GradResponse.FromString(raw)
                codes.append(_code_name(resp.error.code) if resp.HasField("error") else "OK")
                messages.append(resp.error.message)
            return Outcome(codes, messages)
        channel.unary_unary(path)(call.payloads[0], timeout=timeout)
        return Outcome(["OK"], [""])
    except grpc.RpcError as exc:
        return Outcome([exc.code().name], [exc.details() or ""])


def run_calls(channel: grpc.Channel, calls: Sequence[Call], timeout: float) -> list[tuple[Call, Outcome]]:
    return [(c, send(channel, c, timeout)) for c in calls]


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS), or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def total_rss(pids: Sequence[int]) -> int:
    return sum(rss_bytes(p) for p in pids)

