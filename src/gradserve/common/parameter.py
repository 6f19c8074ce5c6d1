"""``gradserve.common.parameter``: MindSpore's ``mindspore.common.parameter`` (``Parameter``, ``ParameterTuple``)."""
from gradserve.client.parameter import Parameter, ParameterTuple

__all__ = ["Parameter", "ParameterTuple"]
