"""Which videos a training run sees: square-root sampling, a distributed sampler, subsets.

Square-root sampling (DESIGN.md s.11). With ``n_c`` videos carrying label ``c``, the paper
draws class ``c`` with probability proportional to ``sqrt(n_c)`` and then a video uniformly
among the ``n_c`` videos of that class. Marginalising over the class gives each video ``v``
the weight

    w(v) = sum over labels c of v of  sqrt(n_c) / n_c  =  sum_c n_c ** -0.5

(normalised to sum to one). For single-label data that is ``1 / sqrt(n_c)`` per video, and the
class frequencies it produces are exactly ``sqrt(n_c) / sum_k sqrt(n_k)``. The exponent is a
parameter: ``power=1`` is the natural distribution, ``power=0`` class-balanced sampling.

:class:`DistributedDrawSampler` turns weights (or a plain shuffle) into an endless stream of
draws shared by every rank: each "epoch" of draws comes from one generator seeded with
``(seed, epoch)``, and rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W ...``, so the
ranks see disjoint shares of one common draw. Each draw carries its own augmentation seed,
which makes a sample's clip a pure function of ``(seed, epoch, position)``: the stream is the
same for any number of DataLoader workers and restarts exactly at a saved position.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from r21d.errors import BadOptionError
from r21d.train.data import VideoRecord


def class_counts(records: Sequence[VideoRecord], num_classes: int) -> list[int]:
    """Number of videos carrying each label (a multi-label video counts once per label)."""
    counts = Counter(label for r in records for label in set(r.labels))
    return [counts.get(c, 0) for c in range(num_classes)]


def class_power_weights(
    records: Sequence[VideoRecord], num_classes: int, power: float = 0.5
) -> torch.Tensor:
    """Per-video sampling weights that draw class ``c`` with probability ∝ ``n_c ** power``.

    ``power=0.5`` is the paper's square-root sampling; see the module docstring for the
    derivation. Returns float64 weights summing to one.
    """
    if not records:
        raise BadOptionError("cannot sample from an empty dataset")
    counts = class_counts(records, num_classes)
    weights = torch.tensor(
        [sum(counts[c] ** (power - 1.0) for c in set(r.labels)) for r in records],
        dtype=torch.float64,
    )
    return weights / weights.sum()


def expected_class_frequencies(counts: Sequence[int], power: float = 0.5) -> list[float]:
    """Class probabilities ``n_c ** power / sum_k n_k ** power`` (classes with no video: 0)."""
    raised = [n**power if n > 0 else 0.0 for n in counts]
    total = sum(raised)
    return [x / total for x in raised]


class DistributedDrawSampler(Sampler[tuple[int, int]]):
    """Endless stream of ``(video_index, sample_seed)`` draws, one disjoint share per rank.

    ``weights=None`` shuffles (every video once per epoch); otherwise each epoch is
    ``draws_per_epoch`` weighted draws with replacement. Epochs are padded (by wrapping) to a
    multiple of ``world_size`` so every rank gets the same number of draws. ``start`` skips
    that many of this rank's draws: the sampler position a resumed run continues from.
    """

    def __init__(
        self,
        num_videos: int,
        *,
        weights: torch.Tensor | None = None,
        draws_per_epoch: int | None = None,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start: int = 0,
    ):
        if num_videos < 1:
            raise BadOptionError("cannot sample from an empty dataset")
        if weights is not None and len(weights) != num_videos:
            raise BadOptionError(f"{len(weights)} weights for {num_videos} videos")
        if not 0 <= rank < world_size:
            raise BadOptionError(f"rank {rank} outside world of size {world_size}")
        self.num_videos = num_videos
        self.weights = weights
        self.draws_per_epoch = draws_per_epoch or num_videos
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.start = start

    @property
    def per_rank(self) -> int:
        """Draws each rank gets per epoch."""
        return math.ceil(self.draws_per_epoch / self.world_size)

    def epoch_draws(self, epoch: int) -> list[int]:
        """The common draw of ``epoch`` (all ranks), padded to a multiple of the world size."""
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        if self.weights is None:
            order = torch.randperm(self.num_videos, generator=g)
            order = order.repeat(math.ceil(self.draws_per_epoch / self.num_videos))
            order = order[: self.draws_per_epoch]
        else:
            order = torch.multinomial(
                self.weights.double(), self.draws_per_epoch, replacement=True, generator=g
            )
        draws = order.tolist()
        total = self.per_rank * self.world_size
        return (draws * math.ceil(total / len(draws)))[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            draws = self.epoch_draws(epoch)
            for i in range(offset, self.per_rank):
                position = i * self.world_size + self.rank
                yield draws[position], _mix(self.seed, epoch, position)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # an endless stream; DataLoader only needs it to exist
        return 2**62


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps; stable across processes, unlike ``hash``)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


_MASK64 = (1 << 64) - 1


def random_subset(records: Sequence[VideoRecord], size: int, seed: int = 0) -> list[VideoRecord]:
    """``size`` videos drawn uniformly without replacement, in their original order."""
    if not 0 < size <= len(records):
        raise BadOptionError(f"subset size must be in 1..{len(records)}, got {size}")
    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


def tail_preserving_subset(
    records: Sequence[VideoRecord],
    num_classes: int,
    *,
    cap: int | None = None,
    budget: int | None = None,
    seed: int = 0,
) -> list[VideoRecord]:
    """Keep every video of tail classes, subsample head classes to ``cap`` videos each.

    A class is "tail" when it has at most ``cap`` videos. Classes are visited from the rarest
    up; a head class gets random videos until ``cap`` of the kept videos carry it (videos kept
    for other labels count, so multi-label data stays close to the cap). Give ``budget``
    instead of ``cap`` to get the largest cap whose subset has at most ``budget`` videos
    (water-filling). Returns the kept records in their original order.
    """
    if (cap is None) == (budget is None):
        raise BadOptionError("give exactly one of cap (videos per head class) or budget (total)")
    if cap is not None:
        if cap < 1:
            raise BadOptionError(f"cap must be >= 1, got {cap}")
        return _capped(records, num_classes, cap, seed)
    if budget < 1:
        raise BadOptionError(f"budget must be >= 1, got {budget}")
    lo, hi = 1, max(class_counts(records, num_classes))
    if len(_capped(records, num_classes, lo, seed)) > budget:
        raise BadOptionError(f"budget {budget} is below one video per class")
    while lo < hi:  # the subset only grows with the cap, so bisect for the largest that fits
        mid = (lo + hi + 1) // 2
        if len(_capped(records, num_classes, mid, seed)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return _capped(records, num_classes, lo, seed)


def _capped(
    records: Sequence[VideoRecord], num_classes: int, cap: int, seed: int
) -> list[VideoRecord]:
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    for i, r in enumerate(records):
        for c in set(r.labels):
            by_class[c].append(i)
    kept: set[int] = set()
    # Rarest first; ties by class index so the result is a pure function of (records, seed).
    for c in sorted(by_class, key=lambda c: (len(by_class[c]), c)):
        members = by_class[c]
        if len(members) <= cap:
            kept.update(members)
            continue
        have = sum(1 for i in members if i in kept)
        pool = [i for i in members if i not in kept]
        kept.update(rng.sample(pool, max(0, cap - have)))
    return [records[i] for i in sorted(kept)]
