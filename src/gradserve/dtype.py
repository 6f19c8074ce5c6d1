"""``from gradserve import dtype as mstype``: MindSpore's dtype names and aliases."""
from gradserve.client import dtype as _dtypes
from gradserve.client.dtype import *  # noqa: F403  (the names are listed once, in that module's __all__)

__all__ = _dtypes.__all__
