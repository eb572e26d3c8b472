"""Export: checkpoint -> fully-convolutional ONNX graph (+ TensorRT engine).

:mod:`r21d.export.fully_conv` holds the graph every backend runs; :mod:`r21d.export.onnx`
writes and validates ONNX files, :mod:`r21d.export.inspect` reads them back,
:mod:`r21d.export.tensorrt` builds engines (``tensorrt`` is imported only when asked for).
"""

from r21d.export.fully_conv import FullyConvolutional, check_input_shape, min_spatial_size

__all__ = ["FullyConvolutional", "check_input_shape", "min_spatial_size"]
