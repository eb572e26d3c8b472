"""Eager PyTorch against a captured CUDA graph and ``torch.compile``, on one GPU.

The torch backend runs eagerly; at small batches a GPU then waits on Python and kernel
launches. This measures, per model and batch, what capturing the forward pass in a CUDA graph
(``torch.cuda.CUDAGraph``, replayed on a static input) and ``torch.compile`` (inductor) buy
at fp16 with channels_last_3d, inputs already on the GPU so only the model is timed. Set-up
time (capture, compilation) is reported beside the speed: it is paid once per shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, markdown_table
from r21d.benchmarks.timing import time_call

MODES = ("eager", "cuda graph", "torch.compile")


def _forward(module, x) -> Callable[[], object]:
    import torch

    def run():
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, cache_enabled=False):
            return module(x)

    return run


def _cuda_graph(module, x) -> Callable[[], object]:
    """A replay of ``module(x)`` captured once (warmed up on a side stream first, as the
    CUDA graph documentation prescribes)."""
    import torch

    forward = _forward(module, x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = forward()

    def replay():
        graph.replay()
        return outputs

    return replay


def _compiled(module, x) -> Callable[[], object]:
    import torch

    forward = _forward(torch.compile(module), x)
    forward()  # compiles here, counted as set-up
    return forward


BUILDERS = {"eager": _forward, "cuda graph": _cuda_graph, "torch.compile": _compiled}


COMPILE_RESERVE_S = 25.0
"""torch.compile starts only with at least this long left before the deadline."""


def compare_execution_modes(
    cases: list[tuple[BenchModel, tuple[int, ...], tuple[int, int]]],
    device: str,
    modes: tuple[str, ...],
    deadline: float,
) -> Report:
    """Time every (model, batch sizes, frame size) case in every mode (the first mode is the
    baseline of the "x" column). A mode that would start after ``deadline`` (a
    ``time.monotonic()`` value; ``torch.compile`` with less than :data:`COMPILE_RESERVE_S`
    left) is listed as not measured, so the report is written within the step's budget."""
    import torch

    from r21d.checkpoint import load_checkpoint
    from r21d.models.heads import FullyConvolutional

    rows, skipped = [], []
    for model, batches, (h, w) in cases:
        net, spec = load_checkpoint(model.checkpoint)
        module = FullyConvolutional(net, spec, input_format="uint8").to(device).eval()
        module = module.to(memory_format=torch.channels_last_3d)
        for batch in batches:
            x = torch.randint(0, 256, (batch, spec.clip_len, h, w, 3), dtype=torch.uint8)
            x = x.to(device)
            first = None
            for mode in modes:
                reserve = COMPILE_RESERVE_S if mode == "torch.compile" else 0.0
                case = {"model": model.key, "batch": batch, "shape": f"{spec.clip_len}x{h}x{w}"}
                if time.monotonic() + reserve > deadline:
                    skipped.append({**case, "mode": mode, "reason": "the step's time budget"})
                    continue
                t0 = time.monotonic()
                try:
                    fn = BUILDERS[mode](module, x)
                except Exception as e:  # a mode that cannot run here is a finding
                    skipped.append({**case, "mode": mode, "reason": f"{type(e).__name__}: {e}"})
                    continue
                setup_s = time.monotonic() - t0
                timing = time_call(fn, warmup=3, repeats=30, device=device, max_seconds=1.0)
                clips = batch / (timing.median_ms / 1e3)
                first = first or clips
                rows.append(
                    {
                        **case,
                        "mode": mode,
                        "setup_s": setup_s,
                        "p50_ms": timing.summary()["p50_ms"],
                        "clips_per_s": clips,
                        "vs_first": clips / first,
                        "timing": timing.summary(),
                    }
                )
        del module
        torch.cuda.empty_cache()
    name = "compile" if "torch.compile" in modes else "graphs"
    report = Report(
        name=name,
        title=f"{' against '.join(modes)} (fp16, channels_last_3d)",
        settings={"device": device, "modes": ", ".join(modes)},
        rows=rows,
        summary={"skipped": skipped},
    )
    columns = [
        ("model", "model"),
        ("batch", "batch"),
        ("shape", "T x H x W"),
        ("mode", "mode"),
        ("setup_s", "set-up s"),
        ("p50_ms", "p50 ms"),
        ("clips_per_s", "clips/s"),
        ("vs_first", f"x {modes[0]}"),
    ]
    report.add_section("Model only, input on the GPU", markdown_table(rows, columns))
    if skipped:
        report.add_section(
            "Not measured",
            markdown_table(
                skipped,
                [("model", "model"), ("batch", "batch"), ("mode", "mode"), ("reason", "why")],
            ),
        )
    return report
