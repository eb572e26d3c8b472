"""`r21d bench parity`: how far each backend and precision drifts from torch fp32.

Every video is decoded once (the engine's decoder, the model's spec); the same clips then go
through torch fp32 (the reference) and every other variant. Per variant and video: the
largest absolute difference of the video probabilities (mean of clip softmax outputs), that
difference relative to the reference's top probability, the largest clip-level difference,
and whether top-1 (and the top-5 set) agree. A variant that cannot be built or run here (an
fp16 graph onnxruntime's CPU provider lacks kernels for, say) is listed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, bar_plot, markdown_table
from r21d.benchmarks.variants import (
    REFERENCE,
    Variant,
    open_variant,
    variant_available,
    variant_of,
)
from r21d.errors import BadOptionError


@dataclass
class ParitySettings:
    device: str = "cpu"
    num_clips: int | None = None  # None: the model's own test protocol (clips x crops)
    batch_size: int = 4
    variants: list[Variant] = field(default_factory=list)
    reference_device: str | None = None  # where torch fp32 runs (default: ``device``)

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "reference": f"torch:fp32 on {self.reference_device or self.device}",
            "views": f"{self.num_clips} clips" if self.num_clips else "the model's protocol",
            "batch_size": self.batch_size,
            "variants": ", ".join(v.label for v in self.variants),
        }


def default_parity_variants(device: str) -> list[Variant]:
    """Everything worth comparing: torch bf16 and channels_last, ORT fp32 and fp16 graphs
    (fp16 is tried on the CPU too and reported if it does not run), OpenVINO fp32 and bf16 on
    a CPU where it is installed, torch fp16 on a GPU."""
    variants = [
        variant_of("torch", "bf16"),
        variant_of("torch", "fp32", True),
        variant_of("torch", "bf16", True),
        variant_of("onnxruntime", "fp32"),
        variant_of("onnxruntime", "fp16"),
    ]
    openvino = [variant_of("openvino", "fp32"), variant_of("openvino", "bf16")]
    variants += [v for v in openvino if variant_available(v, device)[0]]
    if device.startswith("cuda"):
        variants += [variant_of("torch", "fp16", True), variant_of("tensorrt", "fp16")]
    return variants


def _run_clips(backend, clips: np.ndarray, batch: int) -> np.ndarray:
    size = backend.fixed_batch or batch
    out = []
    for i in range(0, len(clips), size):
        b = clips[i : i + size]
        n = len(b)
        if backend.fixed_batch and n < size:
            b = np.concatenate([b, np.repeat(b[-1:], size - n, axis=0)])
        out.append(backend.run(np.ascontiguousarray(b))[0][:n])
    return np.concatenate(out)


def run_parity_bench(model: BenchModel, videos: list[Path], settings: ParitySettings) -> Report:
    """Compare every variant to torch fp32 on the same decoded clips; see the module docstring."""
    from r21d.infer.decode import VideoError, decode_for_spec

    reference = open_variant(model, REFERENCE, settings.reference_device or settings.device)
    clips: dict[str, np.ndarray] = {}
    unusable = []
    for video in videos:
        try:
            spec = reference.spec
            clips[Path(video).name] = decode_for_spec(
                video,
                spec,
                num_clips=settings.num_clips or spec.num_clips,
                crops=1 if settings.num_clips else spec.num_crops,
            ).clips
        except VideoError as e:
            unusable.append({"video": Path(video).name, "reason": str(e)})
    if not clips:
        raise BadOptionError("none of the videos could be decoded")
    ref_clip_probs = {
        name: _run_clips(reference, c, settings.batch_size)
        for name, c in tqdm(clips.items(), desc="parity torch:fp32", leave=False)
    }
    del reference
    rows, skipped = [], []
    for variant in settings.variants:
        try:
            backend = open_variant(model, variant, settings.device)
            got = {
                name: _run_clips(backend, c, settings.batch_size)
                for name, c in tqdm(clips.items(), desc=f"parity {variant.label}", leave=False)
            }
        except Exception as e:  # a variant that cannot run here is a finding, not a crash
            skipped.append({"variant": variant.label, "reason": f"{type(e).__name__}: {e}"})
            continue
        for name in clips:
            rows.append(_compare(variant, name, ref_clip_probs[name], got[name]))
    return _report(model, rows, skipped, unusable, settings)


def _compare(variant: Variant, video: str, ref_clips: np.ndarray, clips: np.ndarray) -> dict:
    ref, got = ref_clips.mean(axis=0), clips.mean(axis=0)
    diff = np.abs(ref - got)
    top5_ref = set(np.argsort(-ref)[:5].tolist())
    top5_got = set(np.argsort(-got)[:5].tolist())
    return {
        "variant": variant.label,
        "video": video,
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / ref.max()),
        "clip_max_abs_diff": float(np.abs(ref_clips - clips).max()),
        "top1_agree": int(ref.argmax()) == int(got.argmax()),
        "top5_overlap": len(top5_ref & top5_got) / len(top5_ref),
        "ref_top1_p": float(ref.max()),
    }


def _summarise(rows: list[dict]) -> list[dict]:
    """One line per variant: the worst video."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        out.append(
            {
                "variant": variant,
                "videos": len(mine),
                "max_abs_diff": max(r["max_abs_diff"] for r in mine),
                "max_rel_diff": max(r["max_rel_diff"] for r in mine),
                "clip_max_abs_diff": max(r["clip_max_abs_diff"] for r in mine),
                "top1_agree": sum(r["top1_agree"] for r in mine),
                "top5_overlap": min(r["top5_overlap"] for r in mine),
            }
        )
    return out


def _report(model, rows, skipped, unusable, settings) -> Report:
    summary_rows = _summarise(rows)
    weights = "trained" if model.real_weights else "random"
    report = Report(
        name="parity",
        title="Parity of backends and precisions against torch fp32",
        settings={**settings.as_dict(), "model": model.key, "weights": weights},
        rows=rows,
        summary={
            "per_variant": summary_rows,
            "skipped": skipped,
            "unusable_videos": unusable,
            "real_weights": model.real_weights,
        },
    )
    report.add_section(
        f"Worst video per variant ({model.key}, {weights} weights)",
        markdown_table(
            summary_rows,
            [
                ("variant", "variant"),
                ("videos", "videos"),
                ("max_abs_diff", "max abs diff (video probs)"),
                ("max_rel_diff", "max diff / top prob"),
                ("clip_max_abs_diff", "max abs diff (clip probs)"),
                ("top1_agree", "top-1 agrees"),
                ("top5_overlap", "min top-5 overlap"),
            ],
        )
        + f"\n\nReference: torch fp32 eager on {settings.reference_device or settings.device}, "
        "on the same decoded clips.",
    )
    report.add_section(
        "Per video",
        markdown_table(
            rows,
            [
                ("variant", "variant"),
                ("video", "video"),
                ("ref_top1_p", "reference top-1 p"),
                ("max_abs_diff", "max abs diff"),
                ("max_rel_diff", "diff / top prob"),
                ("top1_agree", "top-1 agrees"),
            ],
        ),
    )
    if skipped or unusable:
        report.add_section(
            "Not compared",
            markdown_table(
                [{"what": s["variant"], "reason": s["reason"]} for s in skipped]
                + [{"what": u["video"], "reason": u["reason"]} for u in unusable],
                [("what", "variant or video"), ("reason", "why")],
            ),
        )
    return report


def add_plots(report: Report, out_dir: Path) -> None:
    """Largest video-probability difference per variant."""
    per_variant = report.summary["per_variant"]
    if per_variant:
        report.plots.append(
            bar_plot(
                Path(out_dir) / "parity_max_abs_diff.png",
                [r["variant"] for r in per_variant],
                [r["max_abs_diff"] for r in per_variant],
                xlabel="max abs difference of video probabilities vs torch fp32",
                title=f"Parity ({report.settings['model']}, {report.settings['weights']} weights)",
            )
        )
