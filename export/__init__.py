"""Export: checkpoint -> fully-convolutional ONNX graph (+ TensorRT engine).

:mod:`r21d.export.onnx` writes and validates ONNX files (the graph is the model with its head,
:mod:`r21d.models.heads`); :mod:`r21d.export.tensorrt` builds engines (``tensorrt`` is imported
only when asked for). Reading artefacts back is the core's job (:mod:`r21d.artefacts`).
"""
