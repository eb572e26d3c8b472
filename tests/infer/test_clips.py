"""Window and crop arithmetic of the test-time protocol (DESIGN.md s.6), no decoding."""

from __future__ import annotations

import pytest

from r21d.infer.clips import (
    clip_frame_indices,
    clip_span,
    clip_starts,
    crop_boxes,
    is_short,
    resized_shape,
)


def test_span_counts_first_to_last_frame():
    assert clip_span(8) == 8
    assert clip_span(8, 2) == 15
    assert clip_span(1, 5) == 1


def test_starts_are_uniform_from_first_to_last_valid_start():
    # N=100, L=8: last valid start 92; start_i = floor(i * 92 / 9)
    assert clip_starts(100, 8, 1, 10) == [0, 10, 20, 30, 40, 51, 61, 71, 81, 92]
    starts = clip_starts(280, 16, 1, 10)
    assert starts[0] == 0 and starts[-1] == 280 - 16
    assert starts == sorted(starts)


def test_starts_use_the_span_with_frame_step():
    # span = 7*2+1 = 15, last valid start 100-15 = 85
    assert clip_starts(100, 8, 2, 2) == [0, 85]
    assert clip_starts(100, 8, 2, 6) == [0, 17, 34, 51, 68, 85]


def test_one_clip_sits_in_the_centre():
    assert clip_starts(100, 8, 1, 1) == [46]
    assert clip_starts(100, 8, 2, 1) == [42]
    assert clip_starts(8, 8, 1, 1) == [0]


def test_short_video_gets_every_clip_at_frame_zero():
    assert clip_starts(5, 8, 1, 10) == [0] * 10
    assert clip_starts(14, 8, 2, 3) == [0, 0, 0]  # 14 < span 15
    assert clip_starts(15, 8, 2, 3) == [0, 0, 0]  # exactly one span: no room to move
    assert is_short(14, 8, 2) and not is_short(15, 8, 2)


def test_frame_indices_repeat_the_last_frame_of_a_short_video():
    assert clip_frame_indices(3, 4, 2, 100) == [3, 5, 7, 9]
    assert clip_frame_indices(0, 8, 1, 5) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert clip_frame_indices(0, 4, 3, 7) == [0, 3, 6, 6]


@pytest.mark.parametrize(
    "call",
    [
        lambda: clip_starts(10, 0),
        lambda: clip_starts(10, 8, 0),
        lambda: clip_starts(10, 8, 1, 0),
        lambda: clip_starts(-1, 8),
        lambda: clip_frame_indices(0, 8, 1, 0),
    ],
)
def test_bad_arguments_are_value_errors(call):
    with pytest.raises(ValueError):
        call()


def test_fixed_resize_ignores_aspect_and_short_edge_keeps_it():
    assert resized_shape(240, 426, "fixed", (128, 171)) == (128, 171)
    assert resized_shape(240, 426, "short_edge", (128,)) == (128, 227)  # 426*128/240 = 227.2
    assert resized_shape(568, 320, "short_edge", (128,)) == (227, 128)  # portrait
    assert resized_shape(256, 340, "short_edge", 128) == (128, 170)
    with pytest.raises(ValueError, match="short_side"):
        resized_shape(240, 426, "short_edge", (128, 171))
    with pytest.raises(ValueError, match="resize_mode"):
        resized_shape(240, 426, "stretch", (128, 171))


def test_centre_crop_and_three_crops_along_the_long_side():
    assert crop_boxes(128, 171, 112) == [(8, 29, 112, 112)]
    assert crop_boxes(128, 171, 112, crops=3) == [
        (8, 0, 112, 112),
        (8, 29, 112, 112),
        (8, 59, 112, 112),
    ]
    assert crop_boxes(171, 128, 112, crops=3) == [
        (0, 8, 112, 112),
        (29, 8, 112, 112),
        (59, 8, 112, 112),
    ]
    assert crop_boxes(128, 171, None) == [(0, 0, 128, 171)]
    with pytest.raises(ValueError, match="does not fit"):
        crop_boxes(100, 171, 112)
    with pytest.raises(ValueError, match="crop_size"):
        crop_boxes(128, 171, None, crops=3)
