"""The one interface between the SDK and whatever runs graphs: the embedded engine or a remote server."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from gradserve.engine import Graph

OutputTree = Any
"""A NumPy array, or a (nested) tuple of them."""


@dataclass(frozen=True)
class GradFlags:
    """MindSpore's GradOperation flags plus the weights by parameter name (always a tuple; the SDK unwraps a
    single bare Parameter itself)."""

    get_all: bool = False
    get_by_list: bool = False
    sens_param: bool = False
    weights: tuple[str, ...] = ()


class Call(NamedTuple):
    """One prepared call: ``grad`` with ``flags`` (``run`` when ``flags`` is None) of a registered network on these
    arrays; what a stream or a split batch sends. A named tuple: made on every call, and a frozen dataclass's
    ``__init__`` costs several times as much."""

    network_id: str
    flags: GradFlags | None
    inputs: Sequence[np.ndarray]
    params: Mapping[str, np.ndarray]


class Backend(ABC):
    """Runs traced networks. ``register`` once per graph, then ``run`` or ``grad`` with input arrays and
    the current parameter values; parameter arrays are read-only and a parameter whose array is the same
    object as in the previous call has not changed."""

    @abstractmethod
    def register(self, graph: Graph) -> str:
        """Make ``graph`` (with its function library) known; returns its id. Idempotent for equal graphs."""

    @abstractmethod
    def run(self, network_id: str, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]) -> OutputTree:
        """The forward outputs of a registered network, in its output tree."""

    @abstractmethod
    def grad(
        self, network_id: str, flags: GradFlags, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]
    ) -> OutputTree:
        """GradOperation of a registered network. ``inputs`` are the network's inputs, followed by one sens array
        per output leaf when ``flags.sens_param``. Returns MindSpore's structure: the first input's gradient; a
        tuple over all inputs (get_all); a tuple over ``flags.weights`` (get_by_list); or both as a pair."""

    def call(self, call: Call) -> OutputTree:
        """``grad`` or ``run`` as ``call`` says."""
        if call.flags is None:
            return self.run(call.network_id, call.inputs, call.params)
        return self.grad(call.network_id, call.flags, call.inputs, call.params)

    def stream(self, calls: Iterable[Call], in_flight: int) -> Iterator[OutputTree]:
        """The result of each call, in order; ``calls`` is read at most ``in_flight`` calls ahead of the results
        given. Here one call at a time; a remote backend keeps up to ``in_flight`` of them on one GradStream."""
        for c in calls:
            yield self.call(c)

    def replicas(self) -> int:
        """How many servers can compute at once for one caller (a split batch uses them all): 1 in process."""
        return 1

    def call_on(self, replica: int, call: Call) -> OutputTree:
        """``call`` computed by replica ``replica`` first (another one when it fails); here, in process."""
        return self.call(call)

    def close(self) -> None:  # noqa: B027  (an optional hook: most backends hold nothing to release)
        """Release what the backend holds (a remote backend's channels)."""
