"""The relevant-hashtag builder and its stemmer."""

from __future__ import annotations

import pytest

from r21d.cli import main
from r21d.train.hashtags import relevant_hashtags, stem


@pytest.mark.parametrize(
    ("word", "base"),
    [
        ("catching", "catch"),
        ("dancing", "dance"),
        ("running", "run"),
        ("swimming", "swim"),
        ("making", "make"),
        ("juggling", "juggle"),
        ("skating", "skate"),
        ("bowling", "bowl"),
        ("falling", "fall"),
        ("kissing", "kiss"),
        ("tying", "tie"),
        ("playing", "play"),
        ("dishes", "dish"),
        ("babies", "baby"),
        ("cards", "card"),
        ("glass", "glass"),
        ("fish", "fish"),
        ("bus", "bus"),
        ("jumped", "jump"),
    ],
)
def test_stem(word, base):
    assert stem(word) == base


def test_catching_a_fish_gives_the_papers_hashtags():
    tags = relevant_hashtags("catching a fish")
    assert tags[0] == "#catchingafish"  # the label as written comes first
    assert set(tags) == {
        "#catchingafish",
        "#catchafish",
        "#catchingfish",
        "#catchfish",
        "#fishcatching",
        "#fishcatch",
    }


def test_every_order_and_form_of_three_content_words():
    tags = relevant_hashtags("Riding Mechanical Bull")
    # 3! orders x 2 forms of "riding" (the other words are their own stems), no duplicates
    assert len(tags) == 12 == len(set(tags))
    assert {"#ridingmechanicalbull", "#bullmechanicalride", "#mechanicalbullriding"} <= set(tags)


def test_refuses_empty_and_overlong_labels():
    with pytest.raises(ValueError, match="no words"):
        relevant_hashtags("  ")
    with pytest.raises(ValueError, match="content words"):
        relevant_hashtags("one two three four five six")


def test_cli(capsys):
    assert main(["data", "hashtags", "catching a fish"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0] == "#catchingafish" and "#fishcatch" in lines
