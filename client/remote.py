"""The remote backend: runs traced networks on a gradserve server over gRPC.

Each network is registered once per server and later calls send only inputs. Parameter values
travel with the registration, so they are sent again only when they change (the network is then
registered again with the new values). A NOT_FOUND answer (a restarted or evicted server) makes
the backend register again and retry; UNAVAILABLE is retried with backoff by gRPC's own retry
policy, and several targets or a ``dns:///`` name are balanced with ``round_robin``.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy as np

from .. import codec
from ..engine import EngineError, Graph, NotDifferentiableError
from ..v1 import graph_pb2, service_pb2, service_pb2_grpc
from .backend import Backend, GradFlags, OutputTree
from .context import register_backend_factory

SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "gradserve.v1.Gradient"}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.05s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}
"""Every Gradient method is idempotent, so all are retried on UNAVAILABLE."""


class RemoteError(RuntimeError):
    """A server's answer other than OK, for codes that have no engine counterpart."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


def channel_target(target: str) -> str:
    """A gRPC target for ``host:port``, a comma-separated list of them (resolved to addresses, so that
    round_robin spreads calls over all), or any gRPC URI such as ``dns:///name:port``."""
    if "," not in target:
        return target
    addrs = []
    for item in target.split(","):
        host, _, port = item.strip().rpartition(":")
        host = host.strip("[]")
        for *_, sockaddr in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM):
            ip = ipaddress.ip_address(sockaddr[0])
            addrs.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    return "ipv6:" + ",".join(addrs) if any(a.startswith("[") for a in addrs) else "ipv4:" + ",".join(addrs)


@dataclass
class _Network:
    """A network as this client registered it: its wire form, the parameter arrays the server holds, and its id there."""

    graph: Graph
    message: graph_pb2.Graph
    sent: dict[str, np.ndarray]
    server_id: str = ""


class RemoteBackend(Backend):
    """Runs networks on the gradserve server(s) at ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(
            channel_target(target),
            options=[
                ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
                ("grpc.enable_retries", 1),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                ("grpc.per_rpc_retry_buffer_size", 1 << 30),
            ],
        )
        self.stub = service_pb2_grpc.GradientStub(self.channel)
        self._networks: dict[str, _Network] = {}
        self._lock = threading.Lock()

    def register(self, graph: Graph) -> str:
        """Register ``graph`` on the server once; returns this client's id for it."""
        local_id = codec.network_id(graph)
        with self._lock:
            if local_id not in self._networks:
                net = _Network(graph, codec.encode_graph(graph), {p.name: p.data for p in graph.params})
                self._register(net)
                self._networks[local_id] = net
        return local_id

    def _register(self, net: _Network) -> None:
        resp = _call(self.stub.RegisterNetwork, service_pb2.RegisterNetworkRequest(graph=net.message))
        net.server_id = resp.network_id

    def _sync(self, net: _Network, params: Mapping[str, np.ndarray]) -> None:
        """Register again with the current parameter values if any changed since they were sent."""
        changed = {}
        for name, a in params.items():
            old = net.sent.get(name)
            if a is not old:
                if old is None or not np.array_equal(a, old):
                    changed[name] = a
                net.sent[name] = a
        if changed:
            for g in (net.message, *net.message.library.values()):
                for p in g.parameters:
                    if p.name in changed:
                        codec.encode_tensor(changed[p.name], p.value)
            self._register(net)

    def _invoke(self, network_id: str, params: Mapping[str, np.ndarray], make: Callable[[str], Any], method: Any) -> Any:
        """Call ``method(make(server id))``, registering again once if the server answers NOT_FOUND."""
        with self._lock:
            net = self._networks[network_id]
            self._sync(net, params)
        try:
            return _call(method, make(net.server_id), reraise_not_found=True)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        with self._lock:
            self._register(net)
        return _call(method, make(net.server_id))

    def run(self, network_id: str, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]) -> OutputTree:
        """Forward outputs from the server."""
        tensors = [codec.encode_tensor(a) for a in inputs]
        resp = self._invoke(network_id, params, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=tensors), self.stub.Run)
        return codec.decode_tree(resp.outputs)

    def grad(
        self, network_id: str, flags: GradFlags, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]
    ) -> OutputTree:
        """GradOperation computed by the server."""
        n = len(self._networks[network_id].graph.inputs)
        op = codec.encode_grad_operation(flags.get_all, flags.get_by_list, flags.sens_param, flags.weights)
        tensors = [codec.encode_tensor(a) for a in inputs[:n]]
        sens = [codec.encode_tensor(a) for a in inputs[n:]]
        resp = self._invoke(
            network_id, params,
            lambda nid: service_pb2.GradRequest(network_id=nid, grad=op, inputs=tensors, sens=sens), self.stub.Grad,
        )
        return codec.decode_tree(resp.gradients)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def _call(method: Any, request: Any, reraise_not_found: bool = False) -> Any:
    """``method(request)`` with server errors raised as the engine's exceptions where they match."""
    try:
        return method(request)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.NOT_FOUND and reraise_not_found:
            raise
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise NotDifferentiableError(details) from None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise EngineError(details) from None
        raise RemoteError(code, details) from None


register_backend_factory(RemoteBackend)
