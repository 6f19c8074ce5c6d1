"""Initializers: set_seed reproduces weights; each distribution's bound or spread is MindSpore's (the bound from the
fan-in/fan-out definition, the spread measured on 40,000 seeded draws); Dense's defaults are PyTorch Linear's."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gradserve as gs
from gradserve import nn
from gradserve.common.initializer import (
    Constant,
    HeNormal,
    HeUniform,
    Normal,
    One,
    TruncatedNormal,
    Uniform,
    XavierNormal,
    XavierUniform,
    Zero,
    initializer,
)

SHAPE = (200, 50, 2, 2)
FAN_IN, FAN_OUT = 50 * 4, 200 * 4


def draw(init: object) -> np.ndarray:
    gs.set_seed(11)
    return initializer(init, SHAPE, gs.float64).asnumpy()


def test_same_seed_same_weights_and_other_seed_other_weights() -> None:
    gs.set_seed(3)
    a = nn.SequentialCell(nn.Dense(4, 5), nn.Dense(5, 2), nn.Embedding(6, 3))
    gs.set_seed(3)
    b = nn.SequentialCell(nn.Dense(4, 5), nn.Dense(5, 2), nn.Embedding(6, 3))
    gs.set_seed(4)
    c = nn.SequentialCell(nn.Dense(4, 5), nn.Dense(5, 2), nn.Embedding(6, 3))
    for pa, pb, pc in zip(a.get_parameters(), b.get_parameters(), c.get_parameters()):
        np.testing.assert_array_equal(pa.asnumpy(), pb.asnumpy())
        assert not np.array_equal(pa.asnumpy(), pc.asnumpy())


@pytest.mark.parametrize("init, bound", [
    (Uniform(0.3), 0.3),
    (XavierUniform(gain=2.0), 2.0 * math.sqrt(6 / (FAN_IN + FAN_OUT))),
    (HeUniform(), math.sqrt(2) * math.sqrt(3 / FAN_IN)),
    (HeUniform(negative_slope=math.sqrt(5)), math.sqrt(1 / FAN_IN)),
    (HeUniform(mode="fan_out", nonlinearity="relu"), math.sqrt(2) * math.sqrt(3 / FAN_OUT)),
])
def test_uniform_initializers_fill_their_interval(init: object, bound: float) -> None:
    w = draw(init)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.999 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound


@pytest.mark.parametrize("init, mean, std", [
    (Normal(), 0.0, 0.01),
    (Normal(sigma=0.5, mean=1.0), 1.0, 0.5),
    (XavierNormal(), 0.0, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    (HeNormal(), 0.0, math.sqrt(2 / FAN_IN)),
])
def test_normal_initializers_have_their_spread(init: object, mean: float, std: float) -> None:
    w = draw(init)
    assert abs(w.mean() - mean) < 0.02 * std
    assert abs(w.std() - std) < 0.02 * std


def test_truncated_normal_stays_within_a_and_b() -> None:
    w = draw(TruncatedNormal(sigma=1.0, a=-1.5, b=0.5))
    assert w.min() >= -1.5 and w.max() <= 0.5
    assert w.min() < -1.49 and w.max() > 0.49


def test_constants_names_numbers_and_tensors() -> None:
    assert not initializer(Zero(), (2, 3)).asnumpy().any()
    np.testing.assert_array_equal(initializer(One(), (2,)).asnumpy(), [1, 1])
    np.testing.assert_array_equal(initializer(Constant(2.5), (2,)).asnumpy(), [2.5, 2.5])
    np.testing.assert_array_equal(initializer(7, (1,), gs.int32).asnumpy(), [7])
    assert initializer("ones", (2, 2)).dtype == gs.float32
    assert initializer("xavier_uniform", (3, 4), gs.float64).dtype == gs.float64
    t = gs.Tensor(np.ones((2, 2)))
    assert initializer(t, (2, 2)) is t
    with pytest.raises(ValueError, match="shape"):
        initializer(t, (3,))
    with pytest.raises(ValueError, match="unknown initializer 'glorot'"):
        initializer("glorot", (2, 2))
    with pytest.raises(ValueError, match="at least 2 axes"):
        initializer(HeUniform(), (5,))


def test_dense_defaults_are_kaiming_uniform_sqrt5_and_uniform_bias() -> None:
    """MindSpore 2.x Dense (like torch.nn.Linear): weight in +-1/sqrt(in), bias in +-1/sqrt(in)."""
    gs.set_seed(0)
    d = nn.Dense(400, 300)
    bound = 1 / math.sqrt(400)
    for p in (d.weight, d.bias):
        a = p.asnumpy()
        assert p.dtype == gs.float32 and np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
    assert d.weight.shape == (300, 400)
    emb = nn.Embedding(300, 400)
    assert abs(emb.embedding_table.asnumpy().std() - 0.01) < 2e-4
