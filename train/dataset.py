"""The training dataset: draws from the sampler become (clip, target) pairs in DataLoader workers.

Items are addressed by the sampler's ``(video_index, sample_seed)`` draws
(:class:`r21d.train.sampling.DistributedDrawSampler`); the seed drives every random choice
(start frame, crop, flip, which label of a multi-label video), so results do not depend on
the number of workers or on which worker decodes what.

Targets: with ``multi_label="sample"`` (the paper's softmax formulation) a video with several
labels contributes one of them, chosen at random each time it is drawn, as a class index; with
``"sigmoid"`` the target is the multi-hot vector of all its labels (per-label sigmoid loss).

A video that fails to decode is logged and skipped: the draw falls back to another video
chosen uniformly by the same seed (so every batch stays full and the ranks of a distributed
run stay in step), and the video is not tried again by that worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from r21d.errors import BadOptionError, UnusableDataError
from r21d.infer.decode import VideoError
from r21d.spec import ModelSpec
from r21d.train.clips import sample_training_clip
from r21d.train.data import VideoRecord

log = logging.getLogger(__name__)
MULTI_LABEL_MODES = ("sample", "sigmoid")
MAX_ATTEMPTS = 10


class TrainClips(Dataset):
    """Random training clips of ``records`` at ``spec``'s clip length, size and sampling rate."""

    def __init__(
        self,
        records: Sequence[VideoRecord],
        spec: ModelSpec,
        *,
        flip: bool = False,
        multi_label: str = "sample",
    ):
        if multi_label not in MULTI_LABEL_MODES:
            raise BadOptionError(
                f"multi_label must be one of {MULTI_LABEL_MODES}, got {multi_label!r}"
            )
        self.records = list(records)
        self.spec = spec
        self.flip = flip
        self.multi_label = multi_label
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, draw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = draw
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([seed, attempt])
            if index not in self.bad:
                record = self.records[index]
                try:
                    clip = sample_training_clip(record.path, self.spec, rng, flip=self.flip)
                    return clip, self.target(record, rng)
                except (VideoError, OSError) as e:
                    log.warning("skipping undecodable training video %s: %s", record.path, e)
                    self.bad.add(index)
            index = int(np.random.default_rng([seed, attempt, 1]).integers(len(self.records)))
        raise UnusableDataError(
            f"{MAX_ATTEMPTS} draws in a row hit undecodable videos ({len(self.bad)} bad so far); "
            "check the training manifest"
        )

    def target(self, record: VideoRecord, rng: np.random.Generator) -> torch.Tensor:
        """Class index (one label drawn at random) or multi-hot vector, per ``multi_label``."""
        if self.multi_label == "sigmoid":
            hot = torch.zeros(self.spec.num_classes)
            hot[list(record.labels)] = 1.0
            return hot
        return torch.tensor(record.labels[int(rng.integers(len(record.labels)))])
