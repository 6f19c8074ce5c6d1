"""The backend interface: what the SDK sends (register once, then run/grad with arrays), and how a target picks it."""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytest

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, ParameterTuple, Tensor
from gradserve.client import Backend, EmbeddedBackend, GradFlags, backends, context, get_backend, register_backend_factory
from gradserve.engine import Graph


class Recording(EmbeddedBackend):
    """The embedded engine, remembering every call it receives."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.calls: list[tuple[Any, ...]] = []

    def register(self, graph: Graph) -> str:
        assert isinstance(graph, Graph)
        self.calls.append(("register", graph))
        return super().register(graph)

    def run(self, network_id: str, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]) -> Any:
        self.calls.append(("run", network_id, list(inputs), dict(params)))
        return super().run(network_id, inputs, params)

    def grad(self, network_id: str, flags: GradFlags, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]) -> Any:
        self.calls.append(("grad", network_id, flags, list(inputs), dict(params)))
        return super().grad(network_id, flags, inputs, params)


@pytest.fixture
def clean_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No target set, no env var, no factories, no cached backends; all restored afterwards."""
    monkeypatch.setitem(context._state, "target", context._UNSET)
    monkeypatch.delenv(context.ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "_factories", [])
    monkeypatch.setattr(backends, "_backends", {})
    monkeypatch.setattr(backends, "REMOTE_MODULE", "gradserve.client._no_remote_for_tests")
    yield


class Net(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor([2.0, 3.0]), name="w")

    def construct(self, x: Tensor, scale: float) -> Tensor:
        return x * self.w * scale


def test_sdk_registers_once_then_sends_arrays_and_current_parameters(clean_context: None) -> None:
    register_backend_factory(Recording)
    gs.set_context(target="fake:1")
    backend = get_backend()
    assert isinstance(backend, Recording) and backend.target == "fake:1"
    net, x = Net(), Tensor([1.0, 1.0])
    net(x, 2.0)
    w_before = backend.calls[-1][3]["w"]
    net(x, 2.0)
    net.w.set_data(Tensor([5.0, 5.0]))
    out = net(x, 2.0)
    np.testing.assert_array_equal(out.asnumpy(), [10.0, 10.0])
    kinds = [c[0] for c in backend.calls]
    assert kinds == ["register", "run", "run", "run"]
    run1, run2, run3 = backend.calls[1:]
    assert run1[1] == run2[1] == run3[1]
    assert len(run1[2]) == 1 and run1[2][0].dtype == np.float32  # the scalar is not a graph input
    assert run2[3]["w"] is w_before and run3[3]["w"] is not w_before  # unchanged parameters keep their array

    grads = ops.GradOperation(get_all=True, get_by_list=True)(net, net.w)(x, 2.0)
    assert backend.calls[-1][0] == "grad" and backend.calls[-1][1] == run1[1]  # same registered network
    assert backend.calls[-1][2] == GradFlags(get_all=True, get_by_list=True, sens_param=False, weights=("w",))
    np.testing.assert_array_equal(grads[0][0].asnumpy(), [10.0, 10.0])
    np.testing.assert_array_equal(grads[1].asnumpy(), [2.0, 2.0])


def test_sens_arrays_follow_the_inputs(clean_context: None) -> None:
    register_backend_factory(Recording)
    gs.set_context(target="fake:2")

    def two(x: Tensor) -> tuple[Tensor, Tensor]:
        return x * 2.0, x * x

    grad = ops.GradOperation(get_by_list=True, sens_param=True)(two, ParameterTuple([]))
    assert grad(Tensor([3.0]), (Tensor([1.0]), Tensor([10.0]))) == ()
    call = get_backend().calls[-1]
    assert call[0] == "grad" and [a.tolist() for a in call[3]] == [[3.0], [1.0], [10.0]]


def test_env_var_selects_the_target_and_set_context_overrides_it(clean_context: None, monkeypatch: pytest.MonkeyPatch) -> None:
    register_backend_factory(Recording)
    monkeypatch.setenv("GRADSERVE_TARGET", "from-env:50051")
    assert gs.get_context("target") == "from-env:50051"
    assert get_backend().target == "from-env:50051"  # type: ignore[attr-defined]
    gs.set_context(target=None)
    assert gs.get_context("target") is None and type(get_backend()) is EmbeddedBackend


def test_embedded_is_the_default(clean_context: None) -> None:
    assert gs.get_context("target") is None
    assert type(get_backend()) is EmbeddedBackend and get_backend() is get_backend()


def test_a_target_without_a_remote_backend_is_a_clear_error(clean_context: None) -> None:
    gs.set_context(target="localhost:50051")
    with pytest.raises(RuntimeError, match=r"target 'localhost:50051' .*needs a remote backend, but none is available"):
        Net()(Tensor([1.0, 1.0]), 1.0)


def test_context_option_errors(clean_context: None) -> None:
    with pytest.raises(ValueError, match="unknown option 'colour'.*'target'.*'device_target'"):
        gs.set_context(colour=0)
    with pytest.raises(TypeError, match="target must be None or a non-empty 'host:port' string"):
        gs.set_context(target=50051)
    with pytest.raises(ValueError, match="unknown option 'device'.*'target'.*'mode'.*'device_target'"):
        gs.get_context("device")


def test_backend_is_abstract() -> None:
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]
    with pytest.raises(KeyError, match="not registered"):
        EmbeddedBackend().run("nope", [], {})
