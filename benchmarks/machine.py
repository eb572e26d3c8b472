"""What a result was measured on: CPU, cores, memory, GPU, library versions, system load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "av", "numpy", "tensorrt", "r21d")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo as a dict (empty where it does not exist)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    info: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _ram_gib() -> float | None:
    path = Path("/proc/meminfo")
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def package_versions() -> dict[str, str | None]:
    """Installed versions (read from package metadata; nothing is imported, so an installed
    but broken TensorRT cannot fail a CPU run)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_info() -> dict | None:
    """Name, memory and compute capability of the current CUDA device, or None."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16": torch.cuda.is_bf16_supported(),
        # "fp32" convolutions use TF32 tensor cores when cudnn.allow_tf32 is on (torch's
        # default), fp32 matmuls only when matmul.allow_tf32 is: the ceiling is a true fp32 one.
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def machine_info() -> dict:
    """Everything a reader needs to judge a number: hardware, software and how busy it was."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": _ram_gib(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": gpu_info(),
        "onnxruntime_providers": onnxruntime_providers(),
        "versions": package_versions(),
        "argv": sys.argv,
    }


def device_label(device: str) -> str:
    """A short folder-safe name for the device results were taken on (``cpu``, ``h100``...)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device)).lower()
        for word in ("nvidia", "geforce", "tesla", "pcie", "sxm5", "sxm"):
            name = name.replace(word, " ")
        return "-".join(name.split()) or "cuda"
    return "cpu"
