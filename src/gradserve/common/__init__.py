"""``gradserve.common``: MindSpore's ``mindspore.common`` names (``initializer``)."""
from . import initializer

__all__ = ["initializer"]
