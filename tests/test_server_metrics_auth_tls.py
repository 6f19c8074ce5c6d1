"""Operations over real loopback gRPC: Prometheus /metrics counting what was called (the same counter
ServerInfo reads), bearer-token authentication (health and reflection stay open), TLS and mutual TLS
with certificates made here, the flags and variables that set them, and the client's connection context."""
from __future__ import annotations

import importlib.metadata
import resource
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from serverkit import TOKEN, parse, rejected, request_counters, slow_request, wait_until

from gradserve.client import backends, context
from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server import cli, metrics
from gradserve.server.app import Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

GRAD = "/gradserve.v1.Gradient/Grad"
X = np.linspace(0.0, 1.0, 4)


def sin_graph() -> service_pb2.RegisterNetworkRequest:
    b = GraphBuilder()
    return service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(b.build(b.op("Sin", b.input("x", "float64", (4,))))))


def grad_ok(stub: service_pb2_grpc.GradientStub, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """An inline sin gradient, checked against cos."""
    resp = stub.Grad(service_pb2.GradRequest(graph=sin_graph().graph, inputs=[codec.encode_tensor(X)]),
                     metadata=metadata, timeout=30)
    np.testing.assert_allclose(codec.decode_tree(resp.gradients), np.cos(X), rtol=1e-12)


# ---- metrics ----

def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def requests_total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[tuple[str, str], int]:
    labels = (dict(lab) for name, lab in samples if name == "gradserve_requests_total")
    return {(d["method"], d["code"]): int(samples[("gradserve_requests_total", tuple(sorted(d.items())))]) for d in labels}


@pytest.fixture()
def metered() -> Iterator[tuple[Server, service_pb2_grpc.GradientStub]]:
    cfg = ServerConfig(host="127.0.0.1", port=0, workers=1, metrics_port=0, limits=Limits(max_queue_depth=1))
    with running(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, service_pb2_grpc.GradientStub(channel)


def test_metrics_count_the_calls_made_and_agree_with_server_info(metered: tuple[Server, service_pb2_grpc.GradientStub]) -> None:
    server, stub = metered
    assert server.metrics_port is not None and server.metrics_port not in (0, server.port)
    nid = stub.RegisterNetwork(sin_graph(), timeout=30).network_id
    for _ in range(3):
        resp = stub.Grad(service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(X)]), timeout=30)
        np.testing.assert_allclose(codec.decode_tree(resp.gradients), np.cos(X), rtol=1e-12)
    assert rejected(lambda: stub.Grad(service_pb2.GradRequest(network_id="nope"), timeout=30)).code() == grpc.StatusCode.NOT_FOUND
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    with channel:
        assert rejected(lambda: channel.unary_unary(GRAD)(b"\xff\xff", timeout=10)).code() == grpc.StatusCode.INVALID_ARGUMENT
    stream = list(stub.GradStream(iter([service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(X)])] * 2), timeout=30))
    assert len(stream) == 2 and not any(r.HasField("error") for r in stream)

    made = {("RegisterNetwork", "OK"): 1, ("Grad", "OK"): 3, ("Grad", "NOT_FOUND"): 1, ("Grad", "INVALID_ARGUMENT"): 1,
            ("GradStream", "OK"): 2}
    assert request_counters(stub) == made
    samples = scrape(server.metrics_port)
    assert requests_total(samples) == {**made, ("ServerInfo", "OK"): 1}
    # Latency is observed for every call that reached its method (the unparsable one did not).
    assert samples[("gradserve_request_duration_seconds_count", (("method", "Grad"),))] == 4
    assert samples[("gradserve_request_duration_seconds_count", (("method", "GradStream"),))] == 2
    assert 0 < samples[("gradserve_request_duration_seconds_sum", (("method", "Grad"),))] < 30
    assert samples[("gradserve_request_duration_seconds_bucket", (("le", "+Inf"), ("method", "Grad")))] == 4
    state = {name: samples[(name, ())] for name in ("gradserve_workers", "gradserve_workers_busy", "gradserve_queue_depth",
                                                     "gradserve_worker_replacements_total", "gradserve_registered_networks")}
    assert state == {"gradserve_workers": 1, "gradserve_workers_busy": 0, "gradserve_queue_depth": 0,
                     "gradserve_worker_replacements_total": 0, "gradserve_registered_networks": 1}
    # The first gradient built the plan in the worker, which found it tiny; the other four ran in the server process.
    assert samples[("gradserve_local_requests_total", ())] == 4


def test_latency_histogram_buckets_count_each_observation_under_the_first_bound_not_below_it() -> None:
    pool = SimpleNamespace(queued=0, busy_pids=list, size=1, replaced=0)
    m = metrics.Metrics(pool, lambda: 0, lambda: 0, lambda: 0)  # type: ignore[arg-type]
    for seconds in (0.0004, 0.001, 0.0011, 0.3, 1000.0):
        m.record("Grad", "OK", seconds)
    m.record("Grad", "INVALID_ARGUMENT")  # refused before the method: counted, no latency
    bucket = {le: m.registry.get_sample_value("gradserve_request_duration_seconds_bucket", {"method": "Grad", "le": le})
              for le in ("0.001", "0.0025", "0.25", "0.5", "600.0", "+Inf")}
    assert bucket == {"0.001": 2, "0.0025": 3, "0.25": 3, "0.5": 4, "600.0": 4, "+Inf": 5}
    assert m.registry.get_sample_value("gradserve_request_duration_seconds_count", {"method": "Grad"}) == 5
    assert m.registry.get_sample_value("gradserve_request_duration_seconds_sum", {"method": "Grad"}) == pytest.approx(1000.3025)
    assert m.snapshot() == [("Grad", "INVALID_ARGUMENT", 1), ("Grad", "OK", 5)]
    assert m.registry.get_sample_value("gradserve_requests_total", {"method": "Grad", "code": "OK"}) == 5


def test_metrics_show_busy_workers_queue_depth_and_replacements(metered: tuple[Server, service_pb2_grpc.GradientStub]) -> None:
    server, stub = metered
    assert server.metrics_port is not None
    request = slow_request(stub, n=2000)
    running_call = stub.Grad.future(request, timeout=60)
    wait_until(lambda: bool(server.pool.busy_pids()))
    queued_call = stub.Grad.future(request, timeout=60)
    wait_until(lambda: server.pool.queued == 1)
    samples = scrape(server.metrics_port)
    assert (samples[("gradserve_workers_busy", ())], samples[("gradserve_queue_depth", ())]) == (1, 1)
    queued_call.cancel()
    running_call.cancel()
    wait_until(lambda: not server.pool.busy_pids() and server.pool.queued == 0)
    samples = scrape(server.metrics_port)
    assert samples[("gradserve_worker_replacements_total", ())] == 0, "a cancelled call stops its worker, which stays"
    assert (samples[("gradserve_workers_busy", ())], samples[("gradserve_queue_depth", ())]) == (0, 0)
    assert samples[("gradserve_registered_networks", ())] == 1


def test_metrics_carry_process_and_build_info_and_only_the_metrics_path_answers(
        metered: tuple[Server, service_pb2_grpc.GradientStub]) -> None:
    server, _ = metered
    assert server.metrics_port is not None
    samples = scrape(server.metrics_port)
    # process_* describe the server process, this one: its open-file limit is exact, its CPU time and memory are not.
    assert samples[("process_max_fds", ())] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert samples[("process_resident_memory_bytes", ())] > 0 and samples[("process_cpu_seconds_total", ())] > 0
    assert samples[("gradserve_build_info", (("version", importlib.metadata.version("gradserve")),))] == 1
    base = f"http://127.0.0.1:{server.metrics_port}"
    for path in ("/", "/metrics/", "/metricsz", "/favicon.ico", "/other/metrics"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=10)
        assert info.value.code == 404, path
    with urllib.request.urlopen(base + "/metrics?name[]=gradserve_build_info", timeout=10) as resp:
        families = [f.name for f in text_string_to_metric_families(resp.read().decode())]
    assert families == ["gradserve_build_info"]


def test_metrics_endpoint_is_off_by_default_and_closed_on_stop() -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as plain:
        assert plain.metrics_port is None
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, metrics_port=0)) as server:
        port = server.metrics_port
        assert port is not None and ("gradserve_workers", ()) in scrape(port)
    with pytest.raises(urllib.error.URLError):
        scrape(port)


# ---- bearer token ----

@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[Server, grpc.Channel]]:
    cfg = ServerConfig(host="127.0.0.1", port=0, workers=1, auth_token=TOKEN)
    with running(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, channel


BEARER = (("authorization", f"Bearer {TOKEN}"),)


@pytest.mark.parametrize("metadata,says", [
    ((), "requires a bearer token; send the metadata 'authorization: Bearer <token>'"),
    ((("authorization", "Bearer wrong"),), "the bearer token is not valid for this server"),
    ((("authorization", f"Bearer {TOKEN}x"),), "the bearer token is not valid for this server"),
    ((("authorization", f"Basic {TOKEN}"),), "is not of the form 'Bearer <token>'"),
    ((("authorization", TOKEN),), "is not of the form 'Bearer <token>'"),
], ids=["none", "wrong", "longer", "other scheme", "no scheme"])
def test_gradient_calls_without_the_token_are_unauthenticated(guarded: tuple[Server, grpc.Channel],
                                                             metadata: tuple[tuple[str, str], ...], says: str) -> None:
    _, channel = guarded
    stub = service_pb2_grpc.GradientStub(channel)
    before = request_counters(stub, BEARER).get(("Grad", "UNAUTHENTICATED"), 0)
    err = rejected(lambda: grad_ok(stub, metadata))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details().startswith(f"{GRAD}: ") and says in err.details(), err.details()
    assert TOKEN not in err.details()
    assert request_counters(stub, BEARER)[("Grad", "UNAUTHENTICATED")] == before + 1


def test_every_gradient_method_needs_the_token_and_works_with_it(guarded: tuple[Server, grpc.Channel]) -> None:
    _, channel = guarded
    stub = service_pb2_grpc.GradientStub(channel)
    calls = {
        "RegisterNetwork": lambda md: stub.RegisterNetwork(sin_graph(), metadata=md, timeout=30),
        "ListOps": lambda md: stub.ListOps(service_pb2.ListOpsRequest(), metadata=md, timeout=30),
        "ServerInfo": lambda md: stub.ServerInfo(service_pb2.ServerInfoRequest(), metadata=md, timeout=30),
        "Run": lambda md: stub.Run(service_pb2.RunRequest(graph=sin_graph().graph, inputs=[codec.encode_tensor(X)]),
                                   metadata=md, timeout=30),
        "GradStream": lambda md: list(stub.GradStream(iter([service_pb2.GradRequest(
            graph=sin_graph().graph, inputs=[codec.encode_tensor(X)])]), metadata=md, timeout=30)),
    }
    for name, call in calls.items():
        assert rejected(lambda: call(())).code() == grpc.StatusCode.UNAUTHENTICATED, name
    np.testing.assert_allclose(codec.decode_tree(calls["Run"](BEARER).outputs), np.sin(X), rtol=1e-12)
    [answer] = calls["GradStream"](BEARER)
    np.testing.assert_allclose(codec.decode_tree(answer.gradients), np.cos(X), rtol=1e-12)
    assert calls["RegisterNetwork"](BEARER).network_id
    grad_ok(stub, BEARER)


def test_unauthenticated_bytes_are_refused_before_parsing(guarded: tuple[Server, grpc.Channel]) -> None:
    _, channel = guarded
    err = rejected(lambda: channel.unary_unary(GRAD)(b"\xff\xff", timeout=10))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = rejected(lambda: channel.unary_unary(GRAD)(b"\xff\xff", metadata=BEARER, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_stay_open_without_a_token(guarded: tuple[Server, grpc.Channel]) -> None:
    _, channel = guarded
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "gradserve.v1.Gradient"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    reply = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    assert "gradserve.v1.Gradient" in {s.name for s in reply.list_services_response.service}


# ---- client connection context ----

def test_client_context_attaches_the_token(guarded: tuple[Server, grpc.Channel], clean_context: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = guarded
    target = f"127.0.0.1:{server.port}"
    with context.open_channel(target) as channel:
        assert rejected(lambda: grad_ok(service_pb2_grpc.GradientStub(channel))).code() == grpc.StatusCode.UNAUTHENTICATED
    monkeypatch.setenv("GRADSERVE_TOKEN", TOKEN)
    assert context.get_context("token") == TOKEN
    with context.open_channel(target) as channel:
        grad_ok(service_pb2_grpc.GradientStub(channel))
        list(service_pb2_grpc.GradientStub(channel).GradStream(iter([]), timeout=10))  # streams carry it too
    context.set_context(token="wrong")
    with context.open_channel(target) as channel:
        assert rejected(lambda: grad_ok(service_pb2_grpc.GradientStub(channel))).code() == grpc.StatusCode.UNAUTHENTICATED


def test_client_context_options_and_backend_per_setting(clean_context: None, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    monkeypatch.setattr(backends, "_factories", [lambda t: made.append(t) or backends.EmbeddedBackend()])
    context.set_context(target="h:1", token="a")
    first = backends.get_backend()
    assert backends.get_backend() is first and made == ["h:1"]
    context.set_context(token="b")
    assert backends.get_backend() is not first and made == ["h:1", "h:1"]
    with pytest.raises(TypeError, match="tls_ca must be None or a non-empty string"):
        context.set_context(tls_ca="")
    with pytest.raises(ValueError, match="unknown option 'ca'.*'tls_ca'"):
        context.set_context(ca="x")
    context.set_context(tls_cert="c.pem")
    with pytest.raises(ValueError, match="tls_cert and tls_key .* go together, and need tls_ca"):
        context.open_channel("h:1")


# ---- TLS ----

def secure(port: int, pki: dict[str, str], client_cert: bool = False) -> grpc.Channel:
    ca = Path(pki["ca.pem"]).read_bytes()
    key, chain = (Path(pki["client.key"]).read_bytes(), Path(pki["client.pem"]).read_bytes()) if client_cert else (None, None)
    return grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca, key, chain))


def test_tls_server_answers_over_tls_only(pki: dict[str, str], clean_context: None, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ServerConfig(host="127.0.0.1", port=0, workers=1, tls_cert=pki["server.pem"], tls_key=pki["server.key"],
                       auth_token=TOKEN)
    with running(cfg) as server:
        with secure(server.port, pki) as channel:
            stub = service_pb2_grpc.GradientStub(channel)
            grad_ok(stub, BEARER)
            assert rejected(lambda: grad_ok(stub)).code() == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            err = rejected(lambda: grad_ok(service_pb2_grpc.GradientStub(channel), BEARER))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        context.set_context(tls_ca=pki["ca.pem"], token=TOKEN)
        with context.open_channel(f"127.0.0.1:{server.port}") as channel:
            grad_ok(service_pb2_grpc.GradientStub(channel))
        assert cli.main(["health", "--target", f"127.0.0.1:{server.port}", "--tls-ca", pki["ca.pem"]]) == 0
    assert "SERVING" in capsys.readouterr().out


def test_mutual_tls_needs_a_client_certificate_signed_by_the_client_ca(pki: dict[str, str], clean_context: None) -> None:
    cfg = ServerConfig(host="127.0.0.1", port=0, workers=1, tls_cert=pki["server.pem"], tls_key=pki["server.key"],
                       tls_client_ca=pki["ca.pem"])
    with running(cfg) as server:
        with secure(server.port, pki) as channel:
            assert rejected(lambda: grad_ok(service_pb2_grpc.GradientStub(channel))).code() == grpc.StatusCode.UNAVAILABLE
        with secure(server.port, pki, client_cert=True) as channel:
            grad_ok(service_pb2_grpc.GradientStub(channel))
        context.set_context(tls_ca=pki["ca.pem"], tls_cert=pki["client.pem"], tls_key=pki["client.key"])
        with context.open_channel(f"127.0.0.1:{server.port}") as channel:
            grad_ok(service_pb2_grpc.GradientStub(channel))


# ---- flags and variables ----

def test_ops_flags_and_variables(tmp_path: Path, pki: dict[str, str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = parse(["--metrics-port", "9100", "--auth-token-file", str(token_file)],
                {"GRADSERVE_TLS_CERT": pki["server.pem"], "GRADSERVE_TLS_KEY": pki["server.key"]})
    assert (cfg.metrics_port, cfg.bearer_token(), cfg.tls_cert) == (9100, TOKEN, pki["server.pem"])
    assert cfg.tls_files() == (Path(pki["server.pem"]).read_bytes(), Path(pki["server.key"]).read_bytes(), None)
    env = parse([], {"GRADSERVE_AUTH_TOKEN": TOKEN, "GRADSERVE_METRICS_PORT": "0"})
    assert (env.metrics_port, env.bearer_token()) == (0, TOKEN) and TOKEN not in repr(env)
    off = parse([], {})
    assert (off.metrics_port, off.bearer_token(), off.tls_files()) == (None, "", None)


@pytest.mark.parametrize("argv,says", [
    (["--metrics-port", "70000"], "--metrics-port must be 0 to 65535"),
    (["--auth-token", "a", "--auth-token-file", "/nonexistent"], "not both"),
    (["--auth-token-file", "/nonexistent/token"], "cannot read --auth-token-file /nonexistent/token"),
    (["--auth-token", "has space"], "printable ASCII without spaces"),
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "cannot read --tls-cert /nonexistent/c.pem"),
])
def test_bad_ops_settings_exit_with_a_message(argv: list[str], says: str) -> None:
    with pytest.raises(SystemExit, match=f"gradserve: .*{says}"):
        parse(argv, {})
