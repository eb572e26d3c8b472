"""Every error a user can cause or fix, under one base, each kind with its exit code.

The ``r21d`` command prints an :class:`R21dError` as one line and exits with the kind's
``exit_code``; any other exception is a bug in r21d and keeps its traceback. Library code
raises the most specific kind, so a caller can catch ``R21dError`` (anything the user can
fix) apart from everything else.

Exit codes (also in the README):

====  ==========================================================================
 0    success
 1    ``score``/``extract``: the run finished, but some videos failed (error records)
 2    a bad option or argument, or an input that does not exist (also argparse's usage errors)
 3    a model file that cannot be used (checkpoint, ONNX graph, engine, spec)
 4    weights that cannot be imported (missing, extra or misshaped tensors, unsafe pickle)
 5    a runtime or device that is not available (package missing, no GPU, fallback)
 6    a download that failed or did not match its pinned hash
 7    an export whose validation failed (parity outside tolerance)
 8    videos that cannot be decoded, where they are the whole job (one video, a training set)
130   interrupted (Ctrl-C)
141   stdout closed by its reader (``r21d info X | head -1``): one line, no traceback
====  ==========================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 128 + 13
"""The reader of stdout went away (``r21d info X | head -1``): 128 + SIGPIPE, what a shell
reports for a command killed by SIGPIPE."""


class R21dError(Exception):
    """An error the user can fix: printed as one line, no traceback."""

    exit_code = 2


class BadOptionError(R21dError, ValueError):
    """An option, argument or setting that cannot work."""

    exit_code = 2


class InputNotFoundError(R21dError, FileNotFoundError):
    """A path the user named does not exist."""

    exit_code = 2


class BadModelFileError(R21dError, ValueError):
    """A checkpoint, ONNX graph, TensorRT engine or spec that cannot be used."""

    exit_code = 3


class BadWeightsError(R21dError, ValueError):
    """Foreign weights that do not import exactly into the architecture."""

    exit_code = 4


class RuntimeUnavailableError(R21dError, RuntimeError):
    """A runtime package, device or execution provider that is missing or would be bypassed."""

    exit_code = 5


class MissingPackageError(RuntimeUnavailableError, ImportError):
    """An optional package (tensorrt, onnxruntime-gpu, openvino, ray) that is not installed."""


class DownloadError(R21dError, RuntimeError):
    """A download failed, or its file does not match the pinned hash."""

    exit_code = 6


class ValidationError(R21dError, RuntimeError):
    """An exported model disagrees with its source beyond the stated tolerance."""

    exit_code = 7


class BadVideoError(R21dError, ValueError):
    """A video that cannot be opened or decoded (in a batch it becomes an error record)."""

    exit_code = 8


class UnusableDataError(R21dError, RuntimeError):
    """A data set whose videos cannot be used (e.g. too many of them fail to decode)."""

    exit_code = 8


class OutputInUseError(R21dError, RuntimeError):
    """An output file that another run is writing (it holds the file lock)."""

    exit_code = 2


def missing_package(display: str, package: str, extra: str | None = None) -> MissingPackageError:
    """The error for an optional package that is not installed, saying how to install it."""
    how = (
        f"pip install r21d[{extra}] (or pip install {package})"
        if extra
        else f"pip install {package}"
    )
    return MissingPackageError(f"{display} is not installed: {how}")
