"""``import gradserve.nn as nn``: Cell, MindSpore's layers, losses, optimizers, learning-rate lists and training cells."""
from gradserve.client import nn as _layers
from gradserve.client.cell import Cell
from gradserve.client.nn import *  # noqa: F403  (the names are listed once, in gradserve.client.nn.__all__)

__all__ = ["Cell", *_layers.__all__]
