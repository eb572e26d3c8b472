"""Validation with the paper's test protocol: uniformly spaced centre-cropped clips per video,
the video's prediction the mean of its clips' softmax outputs (DESIGN.md s.6).

The videos go through the scoring core (:func:`r21d.infer.engine.score_videos`: decode
workers, batching, averaging) with the model being trained as a torch backend, so validation
sees exactly what ``r21d score`` sees. A prediction is correct when its top class is one of
the video's labels. Validation computes in fp32, as ``r21d score`` does by default.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn
from tqdm import tqdm

from r21d.infer.backends import TorchBackend
from r21d.infer.engine import ScoreOptions, VideoResult, score_videos
from r21d.infer.runtime import RuntimeOptions
from r21d.spec import ModelSpec
from r21d.train.data import VideoRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of a model on a set of videos."""

    video_accuracy: float
    clip_accuracy: float
    videos: int
    skipped: int
    predictions: list[int]  # top class per scored video, in record order (skipped left out)

    def to_dict(self) -> dict:
        return {
            "val_video_acc": self.video_accuracy,
            "val_clip_acc": self.clip_accuracy,
            "val_videos": self.videos,
            "val_skipped": self.skipped,
        }


def score_records(
    model: nn.Module,
    records: Sequence[VideoRecord],
    spec: ModelSpec,
    *,
    num_clips: int = 10,
    device: str = "cpu",
    runtime: RuntimeOptions | None = None,
    progress: bool = False,
    desc: str = "validate",
) -> Iterator[VideoResult]:
    """The scoring core's result for every record, in record order; the model's modes are
    restored afterwards. Videos that fail to decode are logged and given as error results."""
    runtime = runtime or RuntimeOptions()
    modes = {m: m.training for m in model.modules()}
    backend = TorchBackend(model, spec, str(device), "fp32", runtime.channels_last is not False)
    results: dict[int, VideoResult] = {}
    try:
        scored = score_videos((r.path for r in records), backend, ScoreOptions(num_clips), runtime)
        for result in tqdm(scored, total=len(records), desc=desc, disable=not progress):
            if not result.ok:
                log.warning("skipping undecodable video %s: %s", result.path, result.error)
            results[result.index] = result
    finally:
        for module, training in modes.items():
            module.training = training
    return (results[i] for i in range(len(records)))


def evaluate_videos(
    model: nn.Module,
    records: Sequence[VideoRecord],
    spec: ModelSpec,
    *,
    num_clips: int = 10,
    device: str = "cpu",
    runtime: RuntimeOptions | None = None,
    progress: bool = False,
) -> Evaluation:
    """Score every video with ``num_clips`` clips and compare with its labels.

    Videos that fail to decode are logged and counted in ``skipped``.
    """
    correct_videos = correct_clips = clips_seen = skipped = 0
    predictions = []
    results = score_records(
        model, records, spec, num_clips=num_clips, device=device, runtime=runtime,
        progress=progress,
    )  # fmt: skip
    for record, result in zip(records, results, strict=True):
        if not result.ok:
            skipped += 1
            continue
        top = int(result.probs.argmax())
        predictions.append(top)
        correct_videos += top in record.labels
        correct_clips += sum(int(c) in record.labels for c in result.clip_probs.argmax(1))
        clips_seen += len(result.clip_probs)
    scored = len(predictions)
    return Evaluation(
        video_accuracy=correct_videos / max(1, scored),
        clip_accuracy=correct_clips / max(1, clips_seen),
        videos=scored,
        skipped=skipped,
        predictions=predictions,
    )
