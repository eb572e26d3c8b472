"""Validation with the paper's test protocol: 10 uniformly spaced centre-cropped clips per
video, the video's prediction the mean of its clips' softmax outputs (DESIGN.md s.6).

Decoding is the inference decoder's :func:`r21d.infer.decode.decode_for_spec`, so validation
sees exactly what ``r21d score`` sees. A prediction is correct when its top class is one of
the video's labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from r21d.infer.decode import VideoError, decode_for_spec
from r21d.spec import ModelSpec
from r21d.train.clips import normalize
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


@torch.no_grad()
def evaluate_videos(
    model: nn.Module,
    records: Sequence[VideoRecord],
    spec: ModelSpec,
    *,
    num_clips: int = 10,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Evaluation:
    """Score every video with ``num_clips`` clips and compare with its labels.

    The model is put in eval mode for the duration and every module's mode is restored
    afterwards. Videos that fail to decode are logged and counted in ``skipped``.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    correct_videos = correct_clips = clips_seen = skipped = 0
    predictions = []
    try:
        for record in tqdm(records, desc="validate", disable=not progress, leave=False):
            try:
                decoded = decode_for_spec(record.path, spec, num_clips=num_clips)
            except (VideoError, OSError) as e:
                log.warning("skipping undecodable validation video %s: %s", record.path, e)
                skipped += 1
                continue
            x = normalize(decoded.clips, spec).to(device)
            probs = model(x).float().softmax(dim=1)
            top = int(probs.mean(0).argmax())
            predictions.append(top)
            correct_videos += top in record.labels
            correct_clips += sum(int(c) in record.labels for c in probs.argmax(1).tolist())
            clips_seen += len(probs)
    finally:
        for module, training in modes.items():
            module.training = training
    scored = len(predictions)
    return Evaluation(
        video_accuracy=correct_videos / max(1, scored),
        clip_accuracy=correct_clips / max(1, clips_seen),
        videos=scored,
        skipped=skipped,
        predictions=predictions,
    )
