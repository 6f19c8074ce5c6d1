"""``gradserve.common.tensor``: MindSpore's ``mindspore.common.tensor`` (``from mindspore.common.tensor import Tensor``)."""
from gradserve.client.tensor import Tensor

__all__ = ["Tensor"]
