"""The four steps a worker (and the local lane) takes with a Grad or Run request, in process: ``plan``,
``args``, ``execute``, ``encode``. Results are compared with closed forms and with the engine run directly."""
from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
import pytest

from gradserve.engine import GraphBuilder, compile_graph, compiler, grad_operation
from gradserve.engine.compiler import STRAIGHT_AFTER
from gradserve.proto import codec
from gradserve.server import compute
from gradserve.server.blobs import BLOB_MIN_BYTES, data_header, splice
from gradserve.server.cache import Cache
from gradserve.server.config import Limits
from gradserve.server.errors import Failure
from gradserve.v1 import graph_pb2, service_pb2

RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 3))
W = RNG.standard_normal(3)


def network(n: int = 3) -> Any:
    """f(x, w) = sum(sin(x * w)) over x: float64[2, n], with the parameter w: float64[n]."""
    b = GraphBuilder("f")
    x = b.input("x", "float64", (2, n))
    w = b.param("w", W if n == 3 else np.ones(n))
    return b.build(b.op("ReduceSum", b.op("Sin", x * w)))


def state(**limits: int) -> tuple[compute.WorkerState, str]:
    """A worker's state holding ``network()``, and the network's id."""
    s = compute.worker_state(Limits(**limits), Cache(16), local_max_elements=1 << 14)
    nid, _ = compute.handle(s, "load", codec.encode_graph(network()).SerializeToString(), [], "")
    return s, nid


def grad_request(x: np.ndarray = X, **grad: Any) -> service_pb2.GradRequest:
    return service_pb2.GradRequest(grad=codec.encode_grad_operation(**grad), inputs=[codec.encode_tensor(x)])


def steps(s: compute.WorkerState, kind: str, req: Any, nid: str) -> tuple[compute.Plan, compute.Args, list[Any], compute.Encoded]:
    key = compute.plan_key(kind, req, nid)
    plan = compute.plan(s, kind, req, nid, key)
    args = compute.checked(s, kind, plan, compute.Tensors.of(req), s.cache.get(nid))
    trees = compute.execute(plan, args)
    return plan, args, trees, compute.encode(plan, kind, trees)


def test_load_answers_the_codecs_network_id() -> None:
    s, nid = state()
    assert nid == codec.network_id(network())
    assert nid in s.cache


def test_grad_steps_give_the_closed_form_gradient() -> None:
    s, nid = state()
    req = grad_request(get_all=True, get_by_list=True, weights=["w"])
    plan, args, trees, encoded = steps(s, "grad", req, nid)
    assert isinstance(args, compute.Args)
    np.testing.assert_array_equal(args.positional[0], X)
    assert args.params == {}
    ((dx,), (dw,)) = trees[0]
    np.testing.assert_allclose(dx, np.cos(X * W) * W, rtol=1e-12)
    np.testing.assert_allclose(dw, (np.cos(X * W) * X).sum(axis=0), rtol=1e-12)
    (body,) = encoded.parts
    reply = service_pb2.GradResponse.FromString(body)
    assert not encoded.arrays and not reply.HasField("forward")
    ((got_dx,), (got_dw,)) = codec.decode_tree(reply.gradients)
    np.testing.assert_array_equal(got_dx, dx)
    np.testing.assert_array_equal(got_dw, dw)
    assert compute.plan(s, "grad", req, nid, compute.plan_key("grad", req, nid)) is plan  # cached


def test_run_steps_match_the_engine_and_take_parameter_overrides() -> None:
    s, nid = state()
    w2 = RNG.standard_normal(3)
    req = service_pb2.RunRequest(inputs=[codec.encode_tensor(X)], parameters={"w": codec.encode_tensor(w2)})
    _, args, trees, encoded = steps(s, "run", req, nid)
    np.testing.assert_array_equal(args.params["w"], w2)
    expected = compile_graph(network())(X, params={"w": w2})
    assert float(trees[0]) == pytest.approx(float(np.sin(X * w2).sum()), rel=1e-12)
    assert float(trees[0]) == float(expected)
    assert float(codec.decode_tree(service_pb2.RunResponse.FromString(encoded.parts[0]).outputs)) == float(expected)


def test_return_forward_gives_gradients_then_forward_outputs() -> None:
    s, nid = state()
    req = grad_request()
    req.return_forward = True
    plan, _, trees, encoded = steps(s, "grad", req, nid)
    assert plan.forward and len(trees) == 2
    np.testing.assert_allclose(trees[0], compile_graph(grad_operation(network()))(X), rtol=1e-12)
    assert float(trees[1]) == pytest.approx(float(np.sin(X * W).sum()), rel=1e-12)
    reply = service_pb2.GradResponse.FromString(encoded.parts[0])
    assert float(codec.decode_tree(reply.forward)) == float(trees[1])


def test_args_taken_as_sent_when_types_match_else_decoded_by_the_codec() -> None:
    s, nid = state()
    req = grad_request()
    key = compute.plan_key("grad", req, nid)
    plan = compute.plan(s, "grad", req, nid, key)
    assert plan.take(compute.Tensors.of(req)) is not None
    wrong = grad_request(X.astype(np.float32))
    assert plan.take(compute.Tensors.of(wrong)) is None
    with pytest.raises(codec.WireError, match=r"inputs\[0\].*float64.*float32"):
        compute.checked(s, "grad", plan, compute.Tensors.of(wrong), s.cache.get(nid))
    extra = grad_request()
    extra.inputs.append(codec.encode_tensor(X))
    with pytest.raises(codec.WireError, match="expected 1 tensors"):
        compute.checked(s, "grad", plan, compute.Tensors.of(extra), s.cache.get(nid))


def test_a_request_laid_out_as_the_first_taken_is_read_from_its_bytes_and_any_other_is_taken_or_decoded() -> None:
    """The lane hands ``checked`` a request's bytes when they hold all of it: the first request ``Plan.take`` took teaches the
    plan its Reading (once its limits are checked), which then gives later requests of that layout the same arguments
    ``take`` gives, as views of their bytes carrying the plan's dtype objects; a request laid out otherwise is taken or
    decoded as before."""
    s, nid = state()

    def request(x: np.ndarray, w: np.ndarray, sens: float, rid: str = "") -> service_pb2.GradRequest:
        req = grad_request(x, sens_param=True)
        req.sens.append(codec.encode_tensor(np.array(sens)))
        req.parameters["w"].CopyFrom(codec.encode_tensor(w))
        req.request_id = rid
        return req

    first = request(X, W, 1.0)
    key = compute.plan_key("grad", first, nid)
    plan = compute.plan(s, "grad", first, nid, key)
    network = s.cache.get(nid)
    compute.checked(s, "grad", plan, compute.Tensors.of(first), network, first.SerializeToString())
    assert plan.reading is not None and plan.read_taught
    x2, w2 = RNG.standard_normal((2, 3)), RNG.standard_normal(3)
    second = request(x2, w2, 2.5)
    raw = second.SerializeToString()
    read = plan.reading.read(raw)
    assert read is not None
    taken = plan.take(compute.Tensors.of(second))
    assert taken is not None
    for got, want, spec in zip(read.positional, taken.positional, plan.args):
        np.testing.assert_array_equal(got, want)
        assert spec is not None and got.dtype is spec.dtype and not got.flags.writeable
    np.testing.assert_array_equal(read.params["w"], w2)
    spec = plan.params["w"]
    assert read.params.keys() == {"w"} and spec is not None and read.params["w"].dtype is spec.dtype
    assert plan.read(raw) is not None and plan.read(None) is None
    trees = compute.execute(plan, read)
    np.testing.assert_allclose(trees[0], 2.5 * np.cos(x2 * w2) * w2, rtol=1e-12)
    for other in (request(x2, w2, 2.5, "an id"), request(x2[:1], w2, 2.5), request(X.astype(np.float32), W, 1.0)):
        assert plan.read(other.SerializeToString()) is None
    third = request(X.astype(np.float32), W, 1.0)
    with pytest.raises(codec.WireError, match=r"inputs\[0\].*float64.*float32"):
        compute.checked(s, "grad", plan, compute.Tensors.of(third), network, third.SerializeToString())
    inline = request(X, W, 1.0)
    inline.graph.CopyFrom(codec.encode_graph(network))
    assert compute.learn_reading(plan, "grad", inline.SerializeToString()) is None
    limited, nid = state(max_request_flops=1)  # a plan refused by the limits never reads a request
    plan = compute.plan(limited, "grad", first, nid, key)
    with pytest.raises(Failure, match="max_request_flops"):
        compute.checked(limited, "grad", plan, compute.Tensors.of(first), network, first.SerializeToString())
    assert plan.reading is None


def test_a_request_longer_than_a_template_apart_from_its_data_teaches_no_reading() -> None:
    """A request id as long as a message would stay in the plan's Reading (its bytes outside the data), uncounted by the
    cache: a request holding more than ``TEMPLATE_MAX_BYTES`` outside its tensors' data teaches none, and its run is
    the same."""
    s, nid = state()
    request = grad_request(X)
    key = compute.plan_key("grad", request, nid)
    plan = compute.plan(s, "grad", request, nid, key)
    network = s.cache.get(nid)
    for n, learned in ((compute.TEMPLATE_MAX_BYTES + 1, False), (compute.TEMPLATE_MAX_BYTES - 200, True)):
        request.request_id = "i" * n
        raw = request.SerializeToString()
        assert (compute.learn_reading(plan, "grad", raw) is not None) == learned
        given = compute.checked(s, "grad", plan, compute.Tensors.of(request), network, raw)
        assert plan.read_taught and (plan.reading is not None) == learned
        np.testing.assert_allclose(compute.execute(plan, given)[0], np.cos(X * W) * W, rtol=1e-12)
        plan.reading, plan.read_taught = None, False


def test_bad_input_is_named_even_when_the_cache_drops_the_network_for_the_plan() -> None:
    s = compute.worker_state(Limits(), Cache(1), local_max_elements=1 << 14)  # room for one entry: the plan evicts the network
    nid, _ = compute.handle(s, "load", codec.encode_graph(network()).SerializeToString(), [], "")
    wrong = grad_request(X.astype(np.float32))
    with pytest.raises(codec.WireError, match=r"inputs\[0\].*float64.*float32"):
        compute.run(s, "grad", wrong, compute.Tensors.of(wrong), nid, compute.plan_key("grad", wrong, nid))


def test_sens_are_positional_after_the_inputs() -> None:
    s, nid = state()
    req = grad_request(sens_param=True)
    req.sens.append(codec.encode_tensor(np.array(2.5)))
    _, args, trees, _ = steps(s, "grad", req, nid)
    assert len(args.positional) == 2 and float(args.positional[1]) == 2.5
    np.testing.assert_allclose(trees[0], 2.5 * np.cos(X * W) * W, rtol=1e-12)


def test_shared_memory_buffers_stand_in_for_stripped_data() -> None:
    s, nid = state()
    req = grad_request()
    data = memoryview(bytearray(req.inputs[0].data))
    req.inputs[0].ClearField("data")
    tensors = compute.Tensors.of(req, [("inputs", 0)], [data])
    assert isinstance(tensors.inputs[0], compute.Blob) and tensors.inputs[0].data is data
    plan = compute.plan(s, "grad", req, nid, compute.plan_key("grad", req, nid))
    args = compute.checked(s, "grad", plan, tensors, s.cache.get(nid))
    np.testing.assert_allclose(compute.execute(plan, args)[0], np.cos(X * W) * W, rtol=1e-12)


def test_large_results_leave_as_arrays_with_their_leaf_numbers() -> None:
    n = BLOB_MIN_BYTES // 16 + 1  # a [2, n] float64 gradient of at least BLOB_MIN_BYTES
    b = GraphBuilder("g")
    x = b.input("x", "float64", (2, n))
    b.param("w", np.ones(n))
    s = compute.worker_state(Limits(), Cache(16), local_max_elements=0)
    nid, _ = compute.handle(s, "load", codec.encode_graph(b.build(b.op("ReduceSum", b.op("Sin", x)))).SerializeToString(), [], "")
    xs = RNG.standard_normal((2, n))
    plan, _, _, encoded = steps(s, "grad", grad_request(xs, get_all=True), nid)
    assert not plan.local
    (array,) = encoded.arrays
    np.testing.assert_allclose(array, np.cos(xs), rtol=1e-12)
    assert len(encoded.parts) == 2  # the response is cut where the array's frame goes
    whole = service_pb2.GradResponse.FromString(splice(encoded.parts, [data_header(array.nbytes) + array.tobytes()]))
    tensor = whole.gradients.tuple.items[0].tensor
    assert list(tensor.shape) == [2, n] and tensor.dtype == graph_pb2.DATA_TYPE_FLOAT64
    (dx,) = codec.decode_tree(whole.gradients)
    np.testing.assert_allclose(dx, np.cos(xs), rtol=1e-12)


def test_a_second_response_is_filled_into_the_template_with_the_same_bytes() -> None:
    s, nid = state()
    req = grad_request()
    plan, _, _, _ = steps(s, "grad", req, nid)
    assert plan.layout is not None
    x2 = RNG.standard_normal((2, 3))
    _, _, trees2, second = steps(s, "grad", grad_request(x2), nid)
    message = service_pb2.GradResponse()
    codec.encode_tree(trees2[0], message.gradients)
    assert second.parts == [message.SerializeToString()]
    np.testing.assert_allclose(codec.decode_tree(service_pb2.GradResponse.FromString(second.parts[0]).gradients),
                               np.cos(x2 * W) * W, rtol=1e-12)


def test_a_response_with_large_leaves_is_filled_into_the_template_with_the_same_bytes() -> None:
    """Large leaves stay arrays (frames); the pieces between them come from the template, as protobuf would write them."""
    s = compute.worker_state(Limits(), Cache(16), local_max_elements=0)
    n = BLOB_MIN_BYTES // 8
    nid, _ = compute.handle(s, "load", codec.encode_graph(network(n)).SerializeToString(), [], "")
    flags = {"get_all": True, "get_by_list": True, "weights": ["w"]}
    plan, _, _, first = steps(s, "grad", grad_request(RNG.standard_normal((2, n)), **flags), nid)
    assert plan.layout is not None and len(first.arrays) == 2
    x2 = RNG.standard_normal((2, n))
    _, _, trees, second = steps(s, "grad", grad_request(x2, **flags), nid)
    assert len(second.parts) == 3 and [a.shape for a in second.arrays] == [(2, n), (n,)]
    message = service_pb2.GradResponse()
    codec.encode_tree(trees[0], message.gradients)
    whole = splice(second.parts, [data_header(a.nbytes) + a.tobytes() for a in second.arrays])
    assert whole == message.SerializeToString()
    (dx,), (dw,) = codec.decode_tree(service_pb2.GradResponse.FromString(whole).gradients)
    np.testing.assert_allclose(dx, np.cos(x2), rtol=1e-12)
    np.testing.assert_allclose(dw, (np.cos(x2) * x2).sum(axis=0), rtol=1e-12)


def test_a_plan_over_the_flops_limit_is_refused_before_running_and_stays_cached() -> None:
    s, nid = state(max_request_flops=10)
    req = grad_request()
    key = compute.plan_key("grad", req, nid)
    plan = compute.plan(s, "grad", req, nid, key)
    assert plan.program.flops > 10
    with pytest.raises(Failure) as refused:
        compute.run(s, "grad", req, compute.Tensors.of(req), nid, key)
    assert refused.value.code == "RESOURCE_EXHAUSTED" and f"{plan.program.flops} floating-point" in refused.value.message
    assert s.cache.get(key) is plan


def test_plans_touching_few_elements_are_local() -> None:
    s, nid = state()
    req = grad_request()
    plan = compute.plan(s, "grad", req, nid, compute.plan_key("grad", req, nid))
    assert plan.local and plan.program.elements <= s.local_max_elements
    small = compute.worker_state(Limits(), Cache(16), local_max_elements=plan.program.elements - 1)
    small.network(nid, codec.encode_graph(network()).SerializeToString())
    assert not compute.plan(small, "grad", req, nid, compute.plan_key("grad", req, nid)).local


def test_handle_answers_a_grad_job_from_its_serialized_request() -> None:
    s, nid = state()
    req = grad_request()
    job = compute.Request(req.SerializeToString(), [], compute.plan_key("grad", req, nid))
    answer, arrays = compute.handle(s, "grad", job, [], nid)
    assert isinstance(answer, compute.Answer) and len(answer.parts) == 1 and arrays == []
    np.testing.assert_allclose(codec.decode_tree(service_pb2.GradResponse.FromString(answer.parts[0]).gradients),
                               np.cos(X * W) * W, rtol=1e-12)
    assert answer.plan == compute.export_plan(s.cache.get(job.key))  # local: the plan comes along, pickled once
    again, _ = compute.handle(s, "grad", job._replace(export=False), [], nid)  # the lane holds it already
    assert again.plan == b"" and again.parts == answer.parts


def test_plans_within_the_flops_and_peak_bounds_are_bounded_and_the_others_stay_in_workers() -> None:
    s, nid = state()
    req = grad_request()
    key = compute.plan_key("grad", req, nid)
    program = compute.plan(s, "grad", req, nid, key).program
    raw = codec.encode_graph(network()).SerializeToString()
    top = max(program.peak_bytes, len(raw))  # its tensors at once, and its network (decoded in the server process)
    for flops, peak, local_max_elements, expected in [
            (program.flops, top, 1, (True, True)),
            (program.flops - 1, top, 1, (False, False)),
            (program.flops, top - 1, 1, (False, False)),
            (program.flops, top, 0, (False, False))]:  # 0 elements: the lane is off
        other = compute.worker_state(Limits(), Cache(16), local_max_elements, flops, peak)
        other.network(nid, raw)
        plan = compute.plan(other, "grad", req, nid, key)
        assert (plan.local, plan.bounded) == expected, (flops, peak, local_max_elements)


def test_an_exported_plan_runs_in_another_state_without_building() -> None:
    s, nid = state()
    req = grad_request(get_all=True, get_by_list=True, weights=["w"])
    key = compute.plan_key("grad", req, nid)
    plan, _, _, _ = steps(s, "grad", req, nid)
    assert plan.local and plan.layout is not None
    copy = compute.import_plan(compute.export_plan(plan))
    assert copy is not plan and copy.layout == plan.layout and not copy.exported
    lane = compute.worker_state(Limits(), Cache(16), local_max_elements=0)  # holds no network: nothing to build from
    lane.cache.put(key, copy, copy.held)
    x2 = RNG.standard_normal((2, 3))
    _, encoded = compute.run(lane, "grad", req, compute.Tensors.of(grad_request(x2)), nid, key)
    ((dx,), (dw,)) = codec.decode_tree(service_pb2.GradResponse.FromString(encoded.parts[0]).gradients)
    np.testing.assert_allclose(dx, np.cos(x2 * W) * W, rtol=1e-12)
    np.testing.assert_allclose(dw, (np.cos(x2 * W) * x2).sum(axis=0), rtol=1e-12)


def test_a_plan_run_past_its_straight_line_switch_is_still_sent_whole() -> None:
    """A worker's plan run ``STRAIGHT_AFTER`` times before anyone asked for it holds its generated straight-line
    function; the plan sent for the lane leaves that out, and the lane's copy gives the same gradient."""
    s, nid = state()
    req = grad_request()
    job = compute.Request(req.SerializeToString(), [], compute.plan_key("grad", req, nid), export=False)
    for _ in range(STRAIGHT_AFTER + 1):
        compute.handle(s, "grad", job, [], nid)
    answer, _ = compute.handle(s, "grad", job._replace(export=True), [], nid)
    copy = compute.import_plan(answer.plan)
    _, encoded = compute.run(s, "grad", req, compute.Tensors.of(req), nid, job.key, found=copy)
    np.testing.assert_allclose(codec.decode_tree(service_pb2.GradResponse.FromString(encoded.parts[0]).gradients),
                               np.cos(X * W) * W, rtol=1e-12)


def test_a_plan_that_does_not_pickle_is_answered_without_it_logged_once_and_not_pickled_again(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exporting a plan is only the lane's shortcut: when pickling it fails, the job still gets the closed-form
    gradient, without the plan, the failure is one warning, and the plan is not pickled again."""
    tried = []

    def refuse(self: pickle.Pickler, obj: Any) -> None:
        tried.append(obj)
        raise pickle.PicklingError("refused for the test")

    monkeypatch.setattr(compute._PlanPickler, "dump", refuse)
    s, nid = state()
    req = grad_request()
    job = compute.Request(req.SerializeToString(), [], compute.plan_key("grad", req, nid))
    capsys.readouterr()
    for _ in range(2):
        answer, arrays = compute.handle(s, "grad", job, [], nid)
        assert answer.plan == b"" and arrays == []
        np.testing.assert_allclose(codec.decode_tree(service_pb2.GradResponse.FromString(answer.parts[0]).gradients),
                                   np.cos(X * W) * W, rtol=1e-12)
    assert len(tried) == 1
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["event"]) for e in logged] == [("warning", "plan_not_exported")]
    assert logged[0]["error"] == "PicklingError: refused for the test"
    assert logged[0]["graph"] == repr(s.cache.get(job.key).program.graph.name)


def test_plans_of_large_networks_are_not_local() -> None:
    n = compute.LOCAL_MAX_NETWORK_BYTES // 8 + 1  # a float64 parameter larger than the bound
    s = compute.worker_state(Limits(), Cache(16), local_max_elements=1 << 30)
    raw = codec.encode_graph(network(n)).SerializeToString()
    assert len(raw) > compute.LOCAL_MAX_NETWORK_BYTES
    nid, _ = compute.handle(s, "load", raw, [], "")
    req = grad_request(np.ones((2, n)))
    answer, _ = compute.handle(s, "grad", compute.Request(req.SerializeToString(), [], compute.plan_key("grad", req, nid)), [], nid)
    assert answer.plan == b"" and not s.cache.get(compute.plan_key("grad", req, nid)).local


def test_the_codec_reads_the_servers_limits_zero_being_no_limit() -> None:
    assert isinstance(Limits(), codec.Limits)
    raw = codec.encode_graph(network()).SerializeToString()  # Mul, Sin, ReduceSum
    tight = compute.worker_state(Limits(max_graph_nodes=2), Cache(4), 0)
    with pytest.raises(codec.LimitError, match="2"):
        compute.handle(tight, "load", raw, [], "")
    unbounded = compute.worker_state(Limits(max_graph_nodes=0, max_tensor_elements=0, max_tensor_rank=0, max_nesting_depth=0), Cache(4), 0)
    assert unbounded.limits.max_graph_nodes > 1 << 60 and unbounded.limits.max_tensor_rank >= 1 << 30
    assert compute.handle(unbounded, "load", raw, [], "")[0] == codec.network_id(network())



def nested(a: Any, depth: int) -> Any:
    """``a`` inside ``depth`` one-item tuples."""
    for _ in range(depth):
        a = (a,)
    return a


def test_a_response_too_deep_for_a_template_is_walked_once_and_then_built_by_protobuf(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result tree nested past what a Template walks (``templates.MAX_DEPTH``) teaches its plan no layout, and the
    plan does not walk every later response again to find that out: they are protobuf's serialization."""
    depth = codec.templates.MAX_DEPTH // 2  # a TensorTree and a TensorTuple each, below the response
    found = compute.Plan(None, [], 0, {})  # type: ignore[arg-type]  # encode reads only the layout
    learned: list[int] = []
    learn = codec.Template.learn

    def counted(raw: Any, descriptor: Any) -> codec.Template | None:
        learned.append(len(raw))
        return learn(raw, descriptor)

    monkeypatch.setattr(codec.Template, "learn", counted)
    for x in (X[0], X[1], -X[0]):
        encoded = compute.encode(found, "run", [nested(x, depth)])
        message = service_pb2.RunResponse()
        codec.encode_tree(nested(x, depth), message.outputs)
        assert encoded.parts == [message.SerializeToString()] and not encoded.arrays
    assert found.layout is None and len(learned) == 1


def test_a_deep_result_tree_the_server_allows_is_joined_by_its_template() -> None:
    """With ``max_nesting_depth`` raised, an output tree nested 40 deep (as deep as protobuf parses such graphs and
    responses) is answered by its plan's Template after the first call, as protobuf serializes it."""
    depth = 40
    b = GraphBuilder()
    s = compute.worker_state(Limits(max_nesting_depth=depth + 1), Cache(16), local_max_elements=1 << 14)
    graph = b.build(nested(b.op("Sin", b.input("x", "float64", (3,))), depth))
    nid, _ = compute.handle(s, "load", codec.encode_graph(graph).SerializeToString(), [], "")
    for x in (X[0], X[1]):
        plan, _, _, encoded = steps(s, "run", service_pb2.RunRequest(inputs=[codec.encode_tensor(x)]), nid)
        message = service_pb2.RunResponse()
        codec.encode_tree(nested(np.sin(x), depth), message.outputs)
        assert service_pb2.RunResponse.FromString(encoded.parts[0]) == message
        assert plan.layout is not None


def test_a_request_that_matches_its_plan_skips_the_full_check_in_the_worker_and_in_the_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The straight-line plan compares an input's or parameter's dtype with its own by identity (an equal dtype that is
    another object takes the full check): the arrays ``Plan.take`` makes carry the program's dtype objects, in the
    worker and in the copy ``export_plan`` sends, so a request that matches its plan is never checked twice."""
    checked: list[str] = []
    compiler_check = compiler._check

    def check(a: Any, v: Any, what: str) -> np.ndarray:
        checked.append(f"{what} {v.name}")
        return compiler_check(a, v, what)

    monkeypatch.setattr(compiler, "_check", check)
    s, nid = state()
    req = grad_request(get_all=True, get_by_list=True, weights=["w"])
    w2 = W + 1
    req.parameters["w"].CopyFrom(codec.encode_tensor(w2))
    job = compute.Request(req.SerializeToString(), [], compute.plan_key("grad", req, nid))
    for _ in range(STRAIGHT_AFTER + 1):  # a worker's runs, asking its Stop hook between steps
        answer, _ = compute.handle(s, "grad", job, [], nid, lambda: False)
    copy = compute.import_plan(answer.plan)
    for _ in range(STRAIGHT_AFTER + 1):  # the lane's runs (tiny plans run unchecked there)
        compute.run(s, "grad", req, compute.Tensors.of(req), nid, job.key, found=copy)
    assert s.cache.get(job.key).program._straight_checked is not None and copy.program._straight is not None
    checked.clear()
    for found, stop in ((s.cache.get(job.key), lambda: False), (copy, None)):
        _, encoded = compute.run(s, "grad", req, compute.Tensors.of(req), nid, job.key, stop, found=found)
        ((dx,), (dw,)) = codec.decode_tree(service_pb2.GradResponse.FromString(encoded.parts[0]).gradients)
        np.testing.assert_allclose(dx, np.cos(X * w2) * w2, rtol=1e-12)
        np.testing.assert_allclose(dw, (np.cos(X * w2) * X).sum(axis=0), rtol=1e-12)
    assert checked == []
