"""The machine's measured compute ceiling: a large matmul on the same device, in the same run.

Model GFLOP/s mean little alone; next to what a square matmul (the friendliest workload
there is) reaches on the same device, at the same time, they say how much of the machine the
model uses.
"""

from __future__ import annotations

import torch

from r21d.benchmarks.timing import time_call
from r21d.errors import BadOptionError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_supported(precision: str, device: str) -> bool:
    """Whether ``device`` runs ``precision`` natively (no slow emulation)."""
    if precision == "fp32":
        return True
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    if precision == "bf16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    # CPU fp16: the torch backend refuses it (PyTorch's CPU half kernels are slow or missing);
    # an fp16 ONNX graph on the CPU is tried by the parity benchmark only.
    return False


def matmul_ceiling(
    device: str = "cpu",
    precision: str = "fp32",
    n: int | None = None,
    *,
    warmup: int = 2,
    repeats: int = 10,
) -> dict:
    """GFLOP/s of an ``n x n`` by ``n x n`` matmul (2 n^3 FLOPs) in ``precision`` on ``device``.

    ``n`` defaults to 2048 on the CPU and 8192 on a GPU: large enough to be compute bound.
    """
    if precision not in DTYPES:
        raise BadOptionError(f"precision must be one of {tuple(DTYPES)}, got {precision!r}")
    n = n or (8192 if device.startswith("cuda") else 2048)
    dtype = DTYPES[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.inference_mode():
        timing = time_call(lambda: a @ b, warmup=warmup, repeats=repeats, device=device)
    flop = 2 * n**3
    return {
        "precision": precision,
        "n": n,
        "gflops": flop / (timing.median_ms / 1e3) / 1e9,
        "timing": timing.summary(),
    }
