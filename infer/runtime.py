"""How a model runs: one options type and one argparse group for every job.

``r21d score``, ``extract``, ``bench`` and ``train`` all take :func:`add_runtime_arguments`,
so ``--backend``, ``--device``, ``--precision``, ``--channels-last``, ``--threads``,
``--batch-size`` and ``--workers`` have the same names, choices and defaults everywhere. The
benchmarks' variant strings (``torch:bf16:cl``) are sugar for :meth:`RuntimeOptions.parse`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from r21d.errors import BadOptionError, RuntimeUnavailableError

if TYPE_CHECKING:
    from pathlib import Path

    from r21d.infer.backends import Backend

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")
"""``auto`` picks the backend from the model file's suffix."""
PRECISIONS = ("fp32", "bf16", "fp16")
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")


def default_workers() -> int:
    """Decode processes by default: two, or one on a single-core machine."""
    return min(2, os.cpu_count() or 1)


def parse_device(device: str) -> str:
    """``auto`` (a CUDA GPU if torch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``
    -> ``cpu`` or ``cuda:N``."""
    if device == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        return "cuda:0"
    kind, _, index = device.partition(":")
    if kind == "cuda" and index.isdigit():
        return device
    raise BadOptionError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def require_device(device: str) -> str:
    """:func:`parse_device`, and an error if it names a GPU this torch build cannot see."""
    device = parse_device(device)
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailableError(
                f"device {device} asked for, but this torch build ({torch.__version__}) sees no "
                "CUDA GPU; use --device cpu or install a CUDA build of torch"
            )
        if int(device.partition(":")[2]) >= torch.cuda.device_count():
            raise RuntimeUnavailableError(
                f"device {device} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
            )
    return device


@dataclass(frozen=True)
class RuntimeOptions:
    """Backend, device, precision, memory format, threads, batch size and decode workers.

    ``precision=None`` is the model's own (fp32 for checkpoints, the graph's for ONNX and
    TensorRT). ``channels_last=None`` means channels_last_3d for the torch backend (faster
    convolutions on CPUs and GPUs alike; benchmarks/results/model.md) and nothing elsewhere;
    ``True`` with another backend is an error. ``batch_size=None`` is the backend's default.
    """

    backend: str = "auto"
    device: str = "auto"
    precision: str | None = None
    channels_last: bool | None = None
    threads: int | None = None
    batch_size: int | None = None
    workers: int = dataclasses.field(default_factory=default_workers)
    ort_provider: str | None = None
    allow_cpu_fallback: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise BadOptionError(f"--backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise BadOptionError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device != "auto":
            parse_device(self.device)
        if self.channels_last and self.backend not in ("auto", "torch"):
            raise BadOptionError("--channels-last applies to the torch backend only")
        if self.ort_provider is not None and self.ort_provider not in ORT_PROVIDERS:
            raise BadOptionError(
                f"--ort-provider must be one of {ORT_PROVIDERS}, got {self.ort_provider!r}"
            )
        for flag, value in (("--threads", self.threads), ("--batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise BadOptionError(f"{flag} must be >= 1, got {value}")
        if self.workers < 0:
            raise BadOptionError(f"--workers must be >= 0, got {self.workers}")

    def replace(self, **changes) -> RuntimeOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """``backend:precision[:cl]``, the benchmarks' name for these options."""
        precision = self.precision or "fp32"
        return f"{self.backend}:{precision}" + (":cl" if self.channels_last else "")

    @classmethod
    def parse(cls, text: str, **others) -> RuntimeOptions:
        """``backend:precision[:cl]`` (e.g. ``torch:bf16:cl``, ``onnxruntime:fp32``) as options;
        the channels_last choice is explicit either way."""
        parts = text.strip().split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "cl"):
            raise BadOptionError(f"variant {text!r} is not backend:precision[:cl]")
        backend, precision = parts[:2]
        if backend not in BACKENDS[1:]:
            raise BadOptionError(f"variant {text!r}: backend must be one of {BACKENDS[1:]}")
        if precision not in PRECISIONS:
            raise BadOptionError(f"variant {text!r}: precision must be one of {PRECISIONS}")
        if len(parts) == 3 and backend != "torch":
            raise BadOptionError(
                f"variant {text!r}: channels_last applies to the torch backend only"
            )
        return cls(backend=backend, precision=precision, channels_last=len(parts) == 3, **others)

    def open(self, model_path: str | Path) -> Backend:
        """The backend for ``model_path`` as these options describe it."""
        from r21d.infer.backends import open_backend

        return open_backend(
            model_path,
            self.backend,
            self.device,
            self.precision,
            channels_last=self.channels_last,
            ort_provider=self.ort_provider,
            allow_cpu_fallback=self.allow_cpu_fallback,
            threads=self.threads,
        )


def add_runtime_arguments(
    parser: argparse.ArgumentParser,
    *,
    batch_help: str | None = None,
    suppress_defaults: bool = False,
) -> argparse._ArgumentGroup:
    """The shared ``runtime`` option group. With ``suppress_defaults`` an option not given is
    left out of the namespace (so a config file's value can stand, as ``r21d train`` needs)."""
    default = RuntimeOptions()

    def value(name):
        return argparse.SUPPRESS if suppress_defaults else getattr(default, name)

    group = parser.add_argument_group("runtime (the same for score, extract, bench and train)")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=value("backend"),
        help="default auto: from the model file's suffix",
    )
    group.add_argument(
        "--device",
        default=value("device"),
        help="auto, cpu, cuda or cuda:N (default auto: a CUDA GPU if torch sees one)",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=value("precision"),
        help="default: the model's own (fp32 for checkpoints; the graph's for ONNX/TensorRT)",
    )
    group.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=value("channels_last"),
        help="torch: channels_last_3d memory format (default: on for torch)",
    )
    group.add_argument(
        "--threads",
        type=int,
        default=value("threads"),
        help="CPU threads for the model (default: all cores)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=value("batch_size"),
        help=batch_help
        or "clips per model call (default on CPU: 1 at fp32, 4 at bf16; 32 on GPU; or the "
        "model's fixed size)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=argparse.SUPPRESS if suppress_defaults else default_workers(),
        help=f"decode processes (default {default_workers()}; 0 decodes in this process)",
    )
    group.add_argument(
        "--ort-provider",
        choices=ORT_PROVIDERS,
        default=value("ort_provider"),
        help="onnxruntime execution provider (default: from --device)",
    )
    group.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        default=value("allow_cpu_fallback"),
        help="warn instead of failing when a GPU provider falls back to the CPU",
    )
    return group


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeOptions))


def runtime_from_args(args: argparse.Namespace, **overrides) -> RuntimeOptions:
    """The :class:`RuntimeOptions` parsed by :func:`add_runtime_arguments`."""
    given = {name: getattr(args, name) for name in RUNTIME_FIELDS if hasattr(args, name)}
    return RuntimeOptions(**{**given, **overrides})
