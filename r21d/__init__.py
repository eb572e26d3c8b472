"""r21d: R(2+1)D video action recognition faithful to the Caffe2 originals."""

from r21d.spec import ModelSpec, SpecError

__version__ = "0.1.0"
__all__ = ["ModelSpec", "SpecError", "__version__"]
