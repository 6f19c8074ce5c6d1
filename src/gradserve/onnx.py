"""``gradserve.onnx``: ONNX models as Cells (``load``), and networks and gradient programs as ONNX models (``export``);
``onnx`` itself is the optional extra ``gradserve[onnx]``."""
from gradserve.client.onnx import OnnxCell, load
from gradserve.client.onnx_export import export
from gradserve.engine.onnx_import import OnnxImportError, supported_ops

__all__ = ["OnnxCell", "OnnxImportError", "export", "load", "supported_ops"]
