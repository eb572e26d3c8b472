"""Where ``r21d export onnx`` spends its time and memory: wall time and peak RSS per phase.

Each export runs in a process of its own (peak RSS is per process), with the phases of
:func:`r21d.export.onnx.export_onnx` timed by wrapping the functions it calls: loading the
checkpoint, torch.export tracing, the FX -> ONNX translation and optimisation inside
``torch.onnx.export``, writing the file, and the validation (onnxruntime session, onnxruntime
runs, the torch reference). A sampling thread reads ``VmRSS`` every 5 ms for each phase's
peak; the process's true peak is ``VmHWM``. The wrappers add a little time of their own.

    python -m r21d.benchmarks.export_cost                       # R(2+1)D-34, 8 frames, fp32+fp16
    python -m r21d.benchmarks.export_cost --checkpoint m.safetensors --precision fp16
    python -m r21d.benchmarks.export_cost --module old_onnx.py  # another export/onnx.py, to compare

Without ``--checkpoint`` it builds R(2+1)D-34 (8 frames, 400 classes, random weights). The
result is JSON (``--out``) and a table on stdout, with the machine and its load average
before and after each export: on a shared machine other work slows every phase.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = (
    # (object path, attribute, phase name, counted only inside this phase)
    ("export", "_load_source", "load checkpoint", None),
    ("export", "_write_graph", "export + write the graph", None),
    ("export", "_torch_export", "  torch.onnx.export (dynamo)", None),
    ("torch.export", "export", "    torch.export.export (trace)", None),
    ("core", "_exported_program_to_onnx_program", "    FX -> ONNX translation", None),
    ("program", "optimize", "    ONNX optimize (BN and constant folding)", None),
    ("program", "save", "    ONNXProgram.save", None),
    ("export", "validate_onnx", "validate", None),
    ("session", "_create_inference_session", "  onnxruntime session", None),
    ("session", "run", "  onnxruntime runs", "validate"),
    ("wrapper", "forward", "  torch reference", "validate"),
    ("export", "_append_metadata", "append the parity record", None),
    ("onnx", "load", "onnx.load", None),
    ("onnx", "save", "onnx.save", None),
)


def _rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


class PhaseRecorder:
    """Wall time, calls and peak RSS of named phases, nested phases included."""

    def __init__(self) -> None:
        self.active: list[str] = []
        self.phases: dict[str, dict] = {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss = _rss_kib()
            for name in list(self.active):
                self.phases[name]["peak_kib"] = max(self.phases[name]["peak_kib"], rss)
            time.sleep(0.005)

    def wrap(self, owner, attr: str, name: str, inside: str | None) -> None:
        """Replace ``owner.attr`` by a timed call of itself."""
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if inside and inside not in self.active:
                return fn(*args, **kwargs)
            phase = self.phases.setdefault(name, {"wall_s": 0.0, "calls": 0, "peak_kib": 0})
            self.active.append(name)
            phase["peak_kib"] = max(phase["peak_kib"], _rss_kib())
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phase["wall_s"] += time.perf_counter() - start
                phase["calls"] += 1
                phase["peak_kib"] = max(phase["peak_kib"], _rss_kib())
                self.active.remove(name)

        setattr(owner, attr, timed)


def _export_module(path: str | None):
    if path is None:
        import r21d.export.onnx as module

        return module
    spec = importlib.util.spec_from_file_location("export_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure_one(checkpoint: str, precision: str, module_path: str | None) -> dict:
    """Export ``checkpoint`` once in this process; its phases, total and peak RSS."""
    import onnx
    import onnxruntime as ort
    import torch
    from torch.onnx._internal.exporter import _core, _onnx_program

    from r21d.models.heads import FullyConvolutional

    export = _export_module(module_path)
    owners = {
        "export": export,
        "torch.export": torch.export,
        "core": _core,
        "program": _onnx_program.ONNXProgram,
        "session": ort.InferenceSession,
        "wrapper": FullyConvolutional,
        "onnx": onnx,
    }
    recorder = PhaseRecorder()
    for owner, attr, name, inside in PHASES:
        if hasattr(owners[owner], attr):  # an older export module may lack a phase
            recorder.wrap(owners[owner], attr, name, inside)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as folder:
        start, cpu = time.perf_counter(), time.process_time()
        report = export.export_onnx(checkpoint, Path(folder) / "m.onnx", precision=precision)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        size = (Path(folder) / "m.onnx").stat().st_size
    return {
        "precision": precision,
        "module": module_path or "r21d.export.onnx",
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_gb": round(_rss_kib("VmHWM") / 2**20, 2),
        "file_mb": round(size / 1e6, 1),
        "load_average_before": load_before,
        "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
        "phases": {
            name: {
                "wall_s": round(p["wall_s"], 1),
                "calls": p["calls"],
                "peak_rss_gb": round(p["peak_kib"] / 2**20, 2),
            }
            for name, p in recorder.phases.items()
        },
        "parity": report.parity["rows"],
    }


def _default_checkpoint(folder: Path) -> Path:
    from r21d.checkpoint import save_checkpoint
    from r21d.models import build_model, create_spec

    spec = create_spec("r2plus1d_34", 400, 8)
    return save_checkpoint(build_model(spec).eval(), spec, folder / "r2plus1d_34.safetensors")


def format_result(result: dict) -> str:
    """One export's phases as a text table."""
    lines = [
        f"{result['precision']}: {result['wall_s']} s wall, {result['cpu_s']} s CPU, peak RSS "
        f"{result['peak_rss_gb']} GB, {result['file_mb']} MB file, load average "
        f"{' '.join(result['load_average_before'])} -> {' '.join(result['load_average_after'])}"
    ]
    for name, p in result["phases"].items():
        lines.append(
            f"  {name:<46} {p['wall_s']:>7.1f} s  {p['peak_rss_gb']:>5.2f} GB  x{p['calls']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure each precision's export in a child process; print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: a random R(2+1)D-34, 8 frames, 400 classes")
    parser.add_argument("--precision", nargs="+", default=["fp32", "fp16"])
    parser.add_argument("--module", help="an export/onnx.py to measure instead of the installed")
    parser.add_argument("--out", help="JSON results file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(args.checkpoint, args.precision[0], args.module)))
        return 0

    from r21d.benchmarks.machine import machine_info

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or str(_default_checkpoint(Path(folder)))
        results = []
        for precision in args.precision:
            command = [sys.executable, "-m", "r21d.benchmarks.export_cost", "--child"]
            command += ["--checkpoint", checkpoint, "--precision", precision]
            command += ["--module", args.module] if args.module else []
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(format_result(results[-1]), flush=True)
    if args.out:
        model = args.checkpoint or "r2plus1d_34, 8 frames, 400 classes, random weights"
        record = {"machine": machine_info(), "model": model, "results": results}
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
