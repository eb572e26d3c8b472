"""Square-root sampling, the distributed draw sampler and subsets, against their definitions."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from r21d.train.data import VideoRecord
from r21d.train.sampling import (
    DistributedDrawSampler,
    class_counts,
    class_power_weights,
    expected_class_frequencies,
    random_subset,
    tail_preserving_subset,
)

SKEWED = (1000, 300, 100, 30, 10, 3, 1)  # a long tail: videos per class


def single_label(counts=SKEWED) -> list[VideoRecord]:
    return [
        VideoRecord(Path(f"c{c}_{i}.mp4"), (c,)) for c, n in enumerate(counts) for i in range(n)
    ]


def draw(records, weights, n, seed=0) -> list[int]:
    sampler = DistributedDrawSampler(len(records), weights=weights, draws_per_epoch=n, seed=seed)
    return [index for index, _ in itertools.islice(sampler, n)]


def test_sqrt_sampling_draws_classes_in_proportion_to_sqrt_of_their_size():
    records = single_label()
    n = 200_000
    drawn = Counter(records[i].labels[0] for i in draw(records, class_power_weights(records, 7), n))
    target = [math.sqrt(c) / sum(math.sqrt(k) for k in SKEWED) for c in SKEWED]
    assert expected_class_frequencies(SKEWED) == pytest.approx(target)
    for c, p in enumerate(target):
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(drawn[c] / n - p) < 5 * sigma, (c, drawn[c] / n, p)
    # and it is not the natural distribution: the head class drops from 69% to 45%
    assert drawn[0] / n < 0.5 and drawn[6] / n > 0.01


def test_sqrt_sampling_is_uniform_within_a_class():
    records = single_label((300, 30))
    n = 120_000
    drawn = Counter(draw(records, class_power_weights(records, 2), n))
    head = [drawn[i] for i in range(300)]
    expected = n * math.sqrt(300) / (math.sqrt(300) + math.sqrt(30)) / 300
    chi2 = sum((k - expected) ** 2 / expected for k in head)
    assert chi2 < 299 + 6 * math.sqrt(2 * 299)  # 299 degrees of freedom, ~6 sigma


def test_multi_label_weights_are_the_two_stage_draw_marginalised():
    # Class drawn with p ∝ sqrt(n_c), then a video uniformly among those carrying c.
    records = [
        VideoRecord(Path("a"), (0,)),
        VideoRecord(Path("b"), (0, 1)),
        VideoRecord(Path("c"), (1,)),
        VideoRecord(Path("d"), (1, 2)),
        VideoRecord(Path("e"), (0,)),
    ]
    counts = class_counts(records, 3)
    assert counts == [3, 3, 1]
    class_p = expected_class_frequencies(counts)
    two_stage = [
        sum(class_p[c] / counts[c] for c in r.labels) for r in records
    ]  # P(video) = sum over its classes of P(class) / n_class
    weights = class_power_weights(records, 3)
    assert weights.tolist() == pytest.approx(two_stage)
    assert float(weights.sum()) == pytest.approx(1.0)


def test_power_one_is_natural_and_zero_is_class_balanced():
    records = single_label((40, 10))
    natural = class_power_weights(records, 2, power=1.0)
    assert torch.allclose(natural, torch.full((50,), 1 / 50, dtype=torch.float64))
    balanced = class_power_weights(records, 2, power=0.0)
    assert float(balanced[:40].sum()) == pytest.approx(0.5)


def test_ranks_take_disjoint_shares_of_one_common_draw():
    weights = class_power_weights(single_label((50, 5)), 2)
    world = [
        DistributedDrawSampler(55, weights=weights, world_size=3, rank=r, seed=7) for r in range(3)
    ]
    single = DistributedDrawSampler(55, weights=weights, world_size=3, rank=0, seed=7)
    common = single.epoch_draws(0) + single.epoch_draws(1)
    streams = [list(itertools.islice(s, 2 * s.per_rank)) for s in world]
    assert all(len(s) == 2 * world[0].per_rank for s in streams)
    positions = {}
    for r, stream in enumerate(streams):
        for k, (index, seed) in enumerate(stream):
            epoch, i = divmod(k, world[0].per_rank)
            position = epoch * len(single.epoch_draws(0)) + i * 3 + r
            assert common[position] == index
            positions[position] = seed
    assert sorted(positions) == list(range(len(common)))  # every draw used exactly once
    assert len(set(positions.values())) == len(positions)  # each draw its own augmentation seed


def test_shuffle_mode_visits_every_video_once_per_epoch():
    sampler = DistributedDrawSampler(10, world_size=2, rank=0, seed=3)
    other = DistributedDrawSampler(10, world_size=2, rank=1, seed=3)
    epoch = [i for i, _ in itertools.islice(sampler, 5)] + [
        i for i, _ in itertools.islice(other, 5)
    ]
    assert sorted(epoch) == list(range(10))


def test_start_resumes_the_stream_exactly_across_epochs():
    full = list(itertools.islice(DistributedDrawSampler(7, world_size=2, rank=1, seed=1), 20))
    resumed = DistributedDrawSampler(7, world_size=2, rank=1, seed=1, start=9)
    assert list(itertools.islice(resumed, 11)) == full[9:]


def test_tail_preserving_subset_with_a_cap():
    records = single_label()
    kept = tail_preserving_subset(records, 7, cap=30, seed=0)
    counts = class_counts(kept, 7)
    assert counts == [30, 30, 30, 30, 10, 3, 1]  # tail classes whole, head classes at the cap
    assert set(kept) <= set(records)
    assert len(set(kept)) == len(kept)
    assert kept != tail_preserving_subset(records, 7, cap=30, seed=1)  # seeded random choice


def test_tail_preserving_subset_with_a_budget_is_the_largest_cap_that_fits():
    records = single_label()
    kept = tail_preserving_subset(records, 7, budget=200, seed=0)
    counts = class_counts(kept, 7)
    cap = max(counts)
    assert len(kept) <= 200
    assert sum(min(n, cap + 1) for n in SKEWED) > 200  # one more per head class would not fit
    assert counts == [min(n, cap) for n in SKEWED]


def test_tail_preserving_subset_keeps_multi_label_tail_videos():
    records = single_label((50, 20)) + [VideoRecord(Path("rare"), (0, 2))]
    kept = tail_preserving_subset(records, 3, cap=10, seed=0)
    assert records[-1] in kept  # the only video of class 2
    counts = class_counts(kept, 3)
    assert counts == [10, 10, 1]  # the rare video counts towards class 0's cap


def test_tail_preserving_subset_refuses_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        tail_preserving_subset(single_label(), 7)
    with pytest.raises(ValueError, match="below one video per class"):
        tail_preserving_subset(single_label(), 7, budget=3)


def test_random_subset():
    records = single_label((30, 20))
    kept = random_subset(records, 10, seed=4)
    assert len(kept) == 10 and len(set(kept)) == 10 and set(kept) <= set(records)
    assert kept == random_subset(records, 10, seed=4)
    assert [records.index(r) for r in kept] == sorted(records.index(r) for r in kept)
    with pytest.raises(ValueError):
        random_subset(records, 51)
