"""Learning-rate scaling, warm-up, step halving and cosine decay."""

from __future__ import annotations

import pytest

from r21d.train.schedule import lr_at, peak_lr


def test_linear_scaling_per_256_clips():
    assert peak_lr(0.1, 256) == pytest.approx(0.1)
    assert peak_lr(0.1, 1024) == pytest.approx(0.4)
    assert peak_lr(0.1, 8) == pytest.approx(0.1 / 32)


def test_warm_up_is_linear_from_the_start_factor():
    kw = dict(peak=1.0, total_steps=100, warmup_steps=10, warmup_factor=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(5, **kw) == pytest.approx(0.55)
    assert lr_at(10, **kw) == pytest.approx(1.0)


def test_step_schedule_halves_13_times_at_equal_intervals():
    total = 1400
    rates = [lr_at(s, peak=1.0, total_steps=total, halvings=13) for s in range(total)]
    changes = [s for s in range(1, total) if rates[s] != rates[s - 1]]
    assert changes == [100 * k for k in range(1, 14)]
    assert all(rates[s] == pytest.approx(rates[s - 1] / 2) for s in changes)
    assert rates[-1] == pytest.approx(0.5**13)


def test_step_schedule_counts_from_the_end_of_warm_up():
    rates = [lr_at(s, peak=1.0, total_steps=50, warmup_steps=10, halvings=3) for s in range(50)]
    assert rates[10] == 1.0 and rates[19] == 1.0 and rates[20] == 0.5 and rates[49] == 0.125


def test_cosine_schedule():
    kw = dict(peak=2.0, total_steps=110, warmup_steps=10, schedule="cosine")
    assert lr_at(10, **kw) == pytest.approx(2.0)
    assert lr_at(60, **kw) == pytest.approx(1.0)
    assert lr_at(110, **kw) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, peak=1.0, total_steps=10, schedule="linear")
