"""Each bad input gets the right status code and a BadRequest naming the field, while the server keeps
answering health checks SERVING and serving good requests."""
from __future__ import annotations

import json
import re

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from serverkit import parse, rejected

from gradserve.engine import GraphBuilder, NotDifferentiableError
from gradserve.proto import codec
from gradserve.server.app import running
from gradserve.server.compute import classify
from gradserve.server.config import Limits, ServerConfig
from gradserve.server.errors import MESSAGE_LIMIT, VIOLATION_LIMIT, VIOLATIONS_LIMIT, Failure
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

LIMITS = Limits(max_graph_nodes=8, max_tensor_elements=1000, max_nesting_depth=3, max_message_bytes=1 << 20)


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, workers=1, limits=LIMITS)


@pytest.fixture(scope="module")
def channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", -1)]


def sin_net(shape: tuple[int, ...] = (3,)) -> graph_pb2.Graph:
    b = GraphBuilder()
    return codec.encode_graph(b.build(b.op("Sin", b.input("x", "float32", shape))))


def tensor(shape: tuple[int, ...] = (3,)) -> graph_pb2.Tensor:
    return codec.encode_tensor(np.ones(shape, np.float32))


def broken(mutate: object) -> graph_pb2.Graph:
    g = sin_net()
    mutate(g)  # type: ignore[operator]
    return g


def nested(depth: int) -> graph_pb2.ValueTree:
    tree = graph_pb2.ValueTree(value="x")
    for _ in range(depth):
        tree = graph_pb2.ValueTree(tuple=graph_pb2.ValueTuple(items=[tree]))
    return tree


CASES = {
    "unknown op": (
        service_pb2.GradRequest(graph=broken(lambda g: setattr(g.nodes[0], "op", "Sinn")), inputs=[tensor()]),
        grpc.StatusCode.INVALID_ARGUMENT, "graph.nodes[0].op"),
    "dangling value": (
        service_pb2.GradRequest(graph=broken(lambda g: g.nodes[0].inputs.__setitem__(0, "nope")), inputs=[tensor()]),
        grpc.StatusCode.INVALID_ARGUMENT, "graph.nodes[0].inputs[0]"),
    "input shape": (
        service_pb2.GradRequest(graph=sin_net(), inputs=[tensor((4,))]),
        grpc.StatusCode.INVALID_ARGUMENT, "inputs[0]"),
    "data length": (
        service_pb2.GradRequest(graph=sin_net(), inputs=[graph_pb2.Tensor(dtype=graph_pb2.DATA_TYPE_FLOAT32, shape=[3], data=b"12")]),
        grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].data"),
    "dtype unset": (
        service_pb2.GradRequest(graph=sin_net(), inputs=[graph_pb2.Tensor(shape=[3], data=bytes(12))]),
        grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].dtype"),
    "weights without get_by_list": (
        service_pb2.GradRequest(graph=sin_net(), grad=graph_pb2.GradOperation(weights=["w"]), inputs=[tensor()]),
        grpc.StatusCode.INVALID_ARGUMENT, "grad.weights"),
    "no network": (
        service_pb2.GradRequest(inputs=[tensor()]),
        grpc.StatusCode.INVALID_ARGUMENT, "network"),
    "unknown network id": (
        service_pb2.GradRequest(network_id="sha256:0", inputs=[tensor()]),
        grpc.StatusCode.NOT_FOUND, "network_id"),
    "too many nodes": (
        service_pb2.GradRequest(graph=broken(lambda g: [g.nodes.add(op="Sin", inputs=["x"], outputs=[f"s{i}"]) for i in range(8)]),
                                inputs=[tensor()]),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "graph.nodes"),
    "too many elements": (
        service_pb2.GradRequest(graph=sin_net((2000,)), inputs=[tensor((2000,))]),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "graph.inputs[0].shape"),
    "nesting too deep": (
        service_pb2.GradRequest(graph=broken(lambda g: g.outputs.CopyFrom(nested(4))), inputs=[tensor()]),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "graph.outputs"),
}


def violations(exc: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    fields = []
    for detail in status.details if status else []:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            fields += [v.field for v in br.field_violations]
    return fields


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_its_code_and_field_while_health_stays_serving(channel: grpc.Channel, case: str) -> None:
    request, code, field = CASES[case]
    stub = service_pb2_grpc.GradientStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Grad(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert any(f.startswith(field) for f in violations(info.value)), (violations(info.value), info.value.details())
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ok = stub.Grad(service_pb2.GradRequest(graph=sin_net(), inputs=[tensor()]), timeout=30)
    np.testing.assert_allclose(codec.decode_tree(ok.gradients), np.cos(np.ones(3, np.float32)))


def test_an_unknown_network_id_is_echoed_whole(channel: grpc.Channel) -> None:
    nid = "sha256:" + "0" * 64
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GradientStub(channel).Grad(service_pb2.GradRequest(network_id=nid, inputs=[tensor()]), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"network_id {nid!r} is not registered" in info.value.details()


def test_register_rejects_a_bad_graph_naming_the_node(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GradientStub(channel).RegisterNetwork(
            service_pb2.RegisterNetworkRequest(graph=broken(lambda g: setattr(g.nodes[0], "op", "Sinn"))))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Sinn" in info.value.details() and violations(info.value) == ["graph.nodes[0].op"]


def test_a_message_over_the_size_limit_is_resource_exhausted(channel: grpc.Channel) -> None:
    big = codec.encode_tensor(np.ones(300_000, np.float32))  # 1.2 MB > max_message_bytes
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GradientStub(channel).Grad(service_pb2.GradRequest(graph=sin_net(), inputs=[big]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_engine_errors_map_to_codes_and_only_bugs_are_internal() -> None:
    assert classify(NotDifferentiableError("Foo has no gradient")).code == "UNIMPLEMENTED"
    wire = classify(codec.WireError("inputs[1]", "bad"))
    assert (wire.code, wire.violations) == ("INVALID_ARGUMENT", [("inputs[1]", "bad")])
    assert classify(codec.LimitError("graph.nodes", "too many")).code == "RESOURCE_EXHAUSTED"
    assert classify(MemoryError()).code == "RESOURCE_EXHAUSTED"
    assert classify(KeyError("bug")).code == "INTERNAL"


# ---- what the server logs about each call, and how long echoed caller strings may be ----

def log_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_every_request_log_line_and_the_access_log_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, access_log=True)
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=sin_net()), metadata=[("x-request-id", "reg-1")],
                                   timeout=30).network_id
        stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[tensor()], request_id="ok-1"), timeout=30)
        err = rejected(lambda: stub.Run(service_pb2.RunRequest(network_id="sha256:gone", inputs=[tensor()], request_id="run-7"),
                                        timeout=30))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=30)
    lines = log_lines(capsys.readouterr().err)
    (error,) = [x for x in lines if x["event"] == "request_error"]
    assert (error["method"], error["code"], error["request_id"], error["network_id"]) == ("Run", "NOT_FOUND", "run-7", "sha256:gone")
    access = {(x["method"], x["request_id"]): x for x in lines if x["event"] == "access"}
    assert (access[("RegisterNetwork", "reg-1")]["code"], access[("RegisterNetwork", "reg-1")]["network_id"]) == ("OK", nid)
    assert (access[("Run", "ok-1")]["code"], access[("Run", "ok-1")]["network_id"]) == ("OK", nid)
    assert access[("Run", "run-7")]["code"] == "NOT_FOUND"
    (info,) = [x for x in access.values() if x["method"] == "ServerInfo"]
    assert re.fullmatch(r"[0-9a-f]{16}", str(info["request_id"])), "a call without an id gets one made up"
    assert all(isinstance(x["duration_ms"], float) and x["duration_ms"] >= 0 for x in access.values())


def test_huge_caller_strings_are_cut_in_statuses_and_logs(capsys: pytest.CaptureFixture[str]) -> None:
    huge = "n" * 200_000
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        err = rejected(lambda: stub.Grad(service_pb2.GradRequest(network_id=huge, inputs=[tensor()], request_id=huge), timeout=30))
        assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) < 1024
        assert "(200000 characters)" in err.details()
        bad = broken(lambda g: g.nodes[0].inputs.__setitem__(0, huge))
        err = rejected(lambda: stub.Grad(service_pb2.GradRequest(graph=bad, inputs=[tensor()]), timeout=30))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.details()) < 1024
    for line in capsys.readouterr().err.splitlines():
        assert len(line) < 4096, line[:200]


def test_failure_messages_are_capped_keeping_start_and_end() -> None:
    f = Failure("INVALID_ARGUMENT", "start " + "x" * 100_000 + " the end", [("f" * 10_000, "d" * 10_000)] * 10)
    assert len(f.message) < 2 * MESSAGE_LIMIT and f.message.startswith("start ") and f.message.endswith(" the end")
    assert f"({len('start ') + 100_000 + len(' the end')} characters)" in f.message
    assert len(f.violations) == VIOLATIONS_LIMIT and all(len(k) < 2 * VIOLATION_LIMIT for k, _ in f.violations)


def test_access_log_is_a_switch_flag_and_a_variable() -> None:
    assert parse([], {}).access_log is False
    assert parse(["--access-log"], {}).access_log is True
    assert parse([], {"GRADSERVE_ACCESS_LOG": "true"}).access_log is True
    assert parse(["--access-log", "off"], {"GRADSERVE_ACCESS_LOG": "1"}).access_log is False
    with pytest.raises(SystemExit, match="GRADSERVE_ACCESS_LOG='maybe' is not a valid boolean"):
        parse([], {"GRADSERVE_ACCESS_LOG": "maybe"})
    assert parse(["--max-request-flops", "5", "--stop-grace-ms", "7"], {"GRADSERVE_MAX_QUEUED_BYTES": "9"}).limits == \
        Limits(max_request_flops=5, stop_grace_ms=7, max_queued_bytes=9)
