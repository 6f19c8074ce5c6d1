"""The default backend: the engine in this process, one compiled program cached per graph and flag set."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from gradserve.engine import Graph, Program, compile_graph, grad_operation

from .backend import Backend, GradFlags, OutputTree


class EmbeddedBackend(Backend):
    """Runs graphs with the in-process NumPy engine."""

    def __init__(self) -> None:
        self._graphs: dict[str, Graph] = {}
        self._programs: dict[tuple[str, GradFlags | None], Program] = {}
        self._last: tuple[str, GradFlags | None, Program] | None = None

    def register(self, graph: Graph) -> str:
        """Keep ``graph`` under its structural hash."""
        network_id = graph.structural_hash()
        self._graphs.setdefault(network_id, graph)
        return network_id

    def run(self, network_id: str, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]) -> OutputTree:
        """Run the network's forward program."""
        return self._program(network_id, None)(*inputs, params=params if type(params) is dict else dict(params))

    def grad(
        self, network_id: str, flags: GradFlags, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]
    ) -> OutputTree:
        """Run the program of GradOperation(flags) over the network (the last one run is found without a call)."""
        last = self._last
        prog = last[2] if last is not None and last[0] is network_id and last[1] is flags else self._program(network_id, flags)
        return prog(*inputs, params=params if type(params) is dict else dict(params))

    def _program(self, network_id: str, flags: GradFlags | None) -> Program:
        """The compiled program of the network under ``flags``; the last one asked for is found by identity, without
        hashing the flags (a loop calls one gradient function over and over)."""
        last = self._last
        if last is not None and last[0] is network_id and last[1] is flags:
            return last[2]
        prog = self._programs.get((network_id, flags))
        if prog is None:
            try:
                graph = self._graphs[network_id]
            except KeyError:
                raise KeyError(f"network {network_id!r} is not registered with the embedded backend") from None
            if flags is not None:
                graph = grad_operation(graph, flags.get_all, flags.get_by_list, flags.sens_param, flags.weights)
            prog = compile_graph(graph)
            self._programs[(network_id, flags)] = prog
        self._last = (network_id, flags, prog)
        return prog
