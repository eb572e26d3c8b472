"""`r21d bench accuracy --manifest labels.csv --model M`: video accuracy under the test-time
protocol's choices.

Every video of the manifest is scored by the engine under each combination of

- clips per video: 1 (the centre clip) or 10 (uniformly spaced, averaged);
- resize: ``fixed`` (128x171 for R(2+1)D) or ``short_edge`` (the paper's "SE");
- head: ``fc`` (the ``crop_size`` centre crop) or ``fully_conv`` (the whole resized frame,
  softmax per position, averaged; DESIGN.md section 4),

and top-1 / top-5 video accuracy is reported for each, with the most confused (true,
predicted) pairs of the model's own protocol (its spec's resize, crop, 10 clips).

The manifest is a CSV file of ``path,label`` rows (a ``path,label`` header is optional);
``label`` is a class name of the model or a class index; relative paths are taken from the
manifest's folder.
"""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, bar_plot, markdown_table
from r21d.benchmarks.variants import REFERENCE, Variant, open_variant
from r21d.errors import BadOptionError, InputNotFoundError
from r21d.spec import ModelSpec


@dataclass
class AccuracySettings:
    device: str = "cpu"
    variant: Variant = REFERENCE
    clip_counts: tuple[int, ...] = (1, 10)
    resize_modes: tuple[str, ...] = ("fixed", "short_edge")
    heads: tuple[str, ...] = ("fc", "fully_conv")
    workers: int | None = None

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "variant": self.variant.label,
            "clip_counts": ", ".join(map(str, self.clip_counts)),
            "resize_modes": ", ".join(self.resize_modes),
            "heads": ", ".join(self.heads),
            "workers": self.workers,
        }


def read_manifest(path: str | Path, spec: ModelSpec) -> list[tuple[Path, int]]:
    """``(video path, class index)`` rows of a ``path,label`` CSV manifest."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"manifest {path} not found")
    names = {name: i for i, name in enumerate(spec.labels or ())}
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for line_no, fields in enumerate(csv.reader(f), start=1):
            if not fields or not "".join(fields).strip():
                continue
            if len(fields) != 2:
                raise BadOptionError(f"{path}:{line_no}: expected 'path,label', got {fields}")
            video, label = (x.strip() for x in fields)
            if line_no == 1 and (video.lower(), label.lower()) == ("path", "label"):
                continue
            if label in names:
                index = names[label]
            elif label.isdigit() and int(label) < spec.num_classes:
                index = int(label)
            else:
                raise BadOptionError(
                    f"{path}:{line_no}: label {label!r} is neither a class name of the model nor "
                    f"a class index below {spec.num_classes}"
                )
            rows.append((path.parent / video, index))
    if not rows:
        raise BadOptionError(f"manifest {path} lists no videos")
    return rows


def write_manifest(path: str | Path, rows: list[tuple[Path, str]]) -> Path:
    """Write ``(video, label)`` rows as a manifest CSV (absolute paths)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for video, label in rows:
            writer.writerow([str(Path(video).resolve()), label])
    return path


def run_accuracy_bench(model: BenchModel, manifest: Path, settings: AccuracySettings) -> Report:
    """Score the manifest under every protocol combination; see the module docstring."""
    from r21d.infer.engine import ScoreOptions, default_workers, score_videos
    from r21d.infer.runtime import RuntimeOptions

    backend = open_variant(model, settings.variant, settings.device)
    spec = backend.spec
    items = read_manifest(manifest, spec)
    paths = [str(p) for p, _ in items]
    truth = np.array([label for _, label in items])
    workers = default_workers() if settings.workers is None else settings.workers
    rows, confusions = [], {}
    combos = list(itertools.product(settings.clip_counts, settings.resize_modes, settings.heads))
    for clips, resize, head in tqdm(combos, desc="accuracy", unit="setting"):
        options = ScoreOptions(num_clips=clips, resize_mode=resize, full_frame=head == "fully_conv")
        probs = np.zeros((len(paths), spec.num_classes), np.float32)
        errors = []
        for r in score_videos(paths, backend, options, RuntimeOptions(workers=workers)):
            if r.ok:
                probs[r.index] = r.probs
            else:
                errors.append(r.index)
        ok = np.ones(len(paths), bool)
        ok[errors] = False
        top5 = np.argsort(-probs, axis=1)[:, :5]
        rows.append(
            {
                "clips": clips,
                "resize": resize,
                "head": head,
                "videos": int(ok.sum()),
                "failed": len(errors),
                "top1": float((top5[ok, 0] == truth[ok]).mean()) if ok.any() else None,
                "top5": float((top5[ok] == truth[ok, None]).any(axis=1).mean())
                if ok.any()
                else None,
            }
        )
        confusions[(clips, resize, head)] = Counter(
            (int(t), int(p))
            for t, p, good in zip(truth, top5[:, 0], ok, strict=True)
            if good and t != p
        )
    protocol = (max(settings.clip_counts), spec.resize_mode, "fc")
    confused = confusions.get(protocol) or next(iter(confusions.values()))
    pairs = [
        {"true": spec.label(t), "predicted": spec.label(p), "videos": n}
        for (t, p), n in confused.most_common(10)
    ]
    return _report(model, manifest, len(paths), rows, pairs, protocol, settings)


def _report(model, manifest, n_videos, rows, pairs, protocol, settings) -> Report:
    weights = "trained" if model.real_weights else "random (accuracy is chance level)"
    report = Report(
        name="accuracy",
        title="Video accuracy under the test-time protocol's choices",
        settings={
            **settings.as_dict(),
            "model": model.key,
            "weights": weights,
            "manifest": str(manifest),
            "videos": n_videos,
        },
        rows=rows,
        summary={
            "best": max(rows, key=lambda r: r["top1"] or 0),
            "protocol": {"clips": protocol[0], "resize": protocol[1], "head": protocol[2]},
            "most_confused": pairs,
        },
    )
    report.add_section(
        f"Top-1 / top-5 ({model.key}, {weights} weights, {n_videos} videos)",
        markdown_table(
            rows,
            [
                ("clips", "clips"),
                ("resize", "resize"),
                ("head", "head"),
                ("videos", "videos"),
                ("failed", "failed"),
                ("top1", "top-1"),
                ("top5", "top-5"),
            ],
        ),
    )
    report.add_section(
        f"Most confused pairs ({protocol[0]} clips, {protocol[1]}, {protocol[2]})",
        markdown_table(pairs, [("true", "true"), ("predicted", "predicted"), ("videos", "videos")])
        if pairs
        else "No video was misclassified.",
    )
    return report


def add_plots(report: Report, out_dir: Path) -> None:
    """Top-1 accuracy per setting."""
    rows = report.rows
    report.plots.append(
        bar_plot(
            Path(out_dir) / "accuracy_top1.png",
            [f"{r['clips']} clip(s), {r['resize']}, {r['head']}" for r in rows],
            [r["top1"] or 0.0 for r in rows],
            xlabel="top-1 video accuracy",
            title=f"Accuracy ({report.settings['model']})",
        )
    )
