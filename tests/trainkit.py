"""Training problems shared by the tests: a four-weight least-squares problem with its closed-form gradient (weights
travelling with the call, client and server side) and a loss network whose call writes Parameters."""
from __future__ import annotations

import numpy as np

import gradserve.nn as nn
from gradserve.engine import Graph, GraphBuilder

STEPS = 1000
LR = 0.05
X = np.array([0.5, -1.0, 1.5, 2.0])
T = np.array([1.0, 2.0, -1.0, 0.5])
W0 = np.array([0.3, -0.2, 0.1, 0.4])
B = np.array([0.25, -0.5, 0.75, 1.0])
"""A parameter never trained: it is never sent after the registration."""


def squared_error(w: np.ndarray = W0) -> Graph:
    """sum((x * w + b - t)^2) over float64[4], parameters w (traced as ``w``) and b: d/dw = 2 (x w + b - t) x."""
    g = GraphBuilder()
    r = g.input("x", "float64", (4,)) * g.param("w", w) + g.param("b", B) - g.input("t", "float64", (4,))
    return g.build(g.op("ReduceSum", r * r, axis=(0,)))


def closed_form(w: np.ndarray) -> np.ndarray:
    """d/dw of ``squared_error`` at ``w``."""
    return 2 * (X * w + B - T) * X


def normed(features: int, hidden: int) -> nn.Cell:
    """A loss network (seeded) that writes Parameters: BatchNorm's moving statistics and Dropout's step counter."""
    nn.set_seed(9)
    net = nn.SequentialCell([nn.Dense(features, hidden), nn.BatchNorm1d(hidden), nn.Dropout(p=0.3), nn.Dense(hidden, 3)])
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    loss.set_train()
    return loss
