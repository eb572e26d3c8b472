"""A restricted unpickler for weight files: numpy arrays and builtin containers, nothing else.

Released Caffe2 models and the DeepMind I3D checkpoint are pickles. A pickle can call any
importable function while it loads, so a hostile file could run code. This unpickler resolves
only the handful of globals that rebuild numpy arrays; anything else is refused before it is
imported, let alone called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from r21d.errors import BadWeightsError

ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        # Python 3 pickles of byte strings at protocol 2 go through codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    }
)


class UnsafePickleError(BadWeightsError, pickle.UnpicklingError):
    """The file asked for a global that weight files never need."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: weight files may only contain numpy arrays "
                "and builtin containers (the file is malformed or malicious)"
            )
        return super().find_class(module, name)


def safe_load_pickle(path: str | Path) -> Any:
    """Load a (Python 2 or 3) pickle of numpy arrays with latin1 decoding, refusing all else."""
    data = Path(path).read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle: the stdlib raises many kinds for it
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BadWeightsError(
            f"{path}: not a readable weight pickle (truncated, corrupted or another format: "
            f"{type(e).__name__}{': ' + reason if reason else ''})"
        ) from None
