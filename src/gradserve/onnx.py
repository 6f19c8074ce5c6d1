"""``gradserve.onnx``: ONNX models as Cells (``load``); ``onnx`` itself is the optional extra ``gradserve[onnx]``."""
from gradserve.client.onnx import OnnxCell, load
from gradserve.engine.onnx_import import OnnxImportError, supported_ops

__all__ = ["OnnxCell", "OnnxImportError", "load", "supported_ops"]
