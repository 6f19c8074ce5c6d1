"""``import gradserve.nn as nn``: the Cell base class."""
from gradserve.client.cell import Cell

__all__ = ["Cell"]
