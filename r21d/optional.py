"""Optional runtime packages, imported only when a user asks for what needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from r21d.errors import missing_package

OPTIONAL = {
    "tensorrt": ("TensorRT", "tensorrt"),
    "openvino": ("OpenVINO", "openvino"),
    "ray": ("Ray", "ray"),
}
"""Import name -> (display name, the r21d extra that installs it)."""


def import_optional(name: str) -> ModuleType:
    """``import name``, or a one-line :class:`~r21d.errors.MissingPackageError` saying how to
    install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        display, extra = OPTIONAL.get(name, (name, None))
        raise missing_package(display, name, extra) from None
