"""``gradserve.parallel``: a gradient over a batch split across several replicas, and streams of calls."""
from gradserve.client.parallel import DataParallel, data_parallel, loss_reduction
from gradserve.client.streaming import stream

__all__ = ["DataParallel", "data_parallel", "loss_reduction", "stream"]
