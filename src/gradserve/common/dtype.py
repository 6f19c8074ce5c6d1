"""``gradserve.common.dtype``: MindSpore's ``mindspore.common.dtype`` (``import mindspore.common.dtype as mstype``)."""
from gradserve.client.dtype import *  # noqa: F403  (the names are listed once, in gradserve.client.dtype.__all__)
from gradserve.client.dtype import __all__ as __all__
