"""The paper's "relevant hashtags" for an action label, and the small stemmer they need.

Ghadiyaram et al. build the hashtags that stand for an action class from the words of its
label: the original and stemmed forms of the words, in every order, joined without spaces.
For ``"catching a fish"`` that gives ``#catchingafish`` and ``#catchafish`` (the label as
written), and from the content words (stop words like "a" dropped) in every order and every
original/stemmed combination: ``#catchingfish``, ``#catchfish``, ``#fishcatching``,
``#fishcatch``.

The stemmer is a deliberately small suffix stripper, not Porter's full algorithm: it maps the
inflections that appear in action labels (-ing, -ed, plural -s/-es/-ies) to the base form a
person would type as a hashtag (``dancing`` -> ``dance``, ``running`` -> ``run``,
``dishes`` -> ``dish``, ``babies`` -> ``baby``) and leaves other words alone.
"""

from __future__ import annotations

import itertools
import re

from r21d.errors import BadOptionError

_STOP_TEXT = """a an the of on in at to for with from by and or into onto up down out off over
under someone something someones ones"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
VOWELS = frozenset("aeiou")
NO_UNDOUBLE = frozenset("lsz")  # "falling" -> "fall", "kissing" -> "kiss", "buzzing" -> "buzz"


def stem(word: str) -> str:
    """Base form of an English word for hashtag matching (see the module docstring)."""
    w = word.lower()
    if len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix):
            base = w[: -len(suffix)]
            if _has_vowel(base) and len(base) >= 2:
                return _restore(base)
    return w


def _has_vowel(s: str) -> bool:
    return any(_is_vowel(s, i) for i in range(len(s)))


def _is_vowel(s: str, i: int) -> bool:
    """a, e, i, o, u, and y after a consonant (as Porter counts it)."""
    return s[i] in VOWELS or (s[i] == "y" and i > 0 and not _is_vowel(s, i - 1))


def _measure(s: str) -> int:
    """Porter's m: the number of vowel-consonant sequences in ``s``."""
    pattern = "".join("v" if _is_vowel(s, i) else "c" for i in range(len(s)))
    return len(re.findall("v+c+", pattern))


def _restore(base: str) -> str:
    """Undo what stripping -ing/-ed did to the stem's end (Porter step 1b, plus c/v/l rules)."""
    if len(base) >= 2 and base[-1] == base[-2] and base[-1] not in VOWELS | NO_UNDOUBLE:
        return base[:-1]  # running -> run, swimming -> swim
    if base.endswith(("at", "bl", "iz")):
        return base + "e"  # skating -> skate, tumbling -> tumble
    if len(base) == 2 and base[-1] == "y":
        return base[0] + "ie"  # tying -> tie, lying -> lie
    if base[-1] in "cv" or (base[-1] == "l" and base[-2] not in VOWELS | set("lrw")):
        return base + "e"  # dancing -> dance, driving -> drive, juggling -> juggle
    if _measure(base) == 1 and _ends_cvc(base):
        return base + "e"  # making -> make, riding -> ride
    return base


def _ends_cvc(s: str) -> bool:
    return (
        len(s) >= 3
        and not _is_vowel(s, len(s) - 3)
        and _is_vowel(s, len(s) - 2)
        and not _is_vowel(s, len(s) - 1)
        and s[-1] not in "wxy"
    )


def relevant_hashtags(label: str, max_words: int = 5) -> list[str]:
    """Hashtags for an action label: original and stemmed words, in all orders, no spaces.

    The label as written (every word, its order) comes first, then the content words (stop
    words dropped) in every order, each word in original or stemmed form. Labels with more
    than ``max_words`` content words are refused (``n!`` orders grow fast).
    """
    words = re.findall(r"[a-z0-9']+", label.lower())
    words = [w.replace("'", "") for w in words]
    if not words:
        raise BadOptionError(f"label {label!r} has no words")
    content = [w for w in words if w not in STOP_WORDS] or words
    if len(content) > max_words:
        raise BadOptionError(
            f"label {label!r} has {len(content)} content words; more than {max_words} would "
            "give too many orders"
        )
    tags: dict[str, None] = {}  # ordered set
    for variant in _forms(words):
        tags["#" + "".join(variant)] = None
    for order in itertools.permutations(content):
        for variant in _forms(list(order)):
            tags["#" + "".join(variant)] = None
    return list(tags)


def _forms(words: list[str]) -> list[tuple[str, ...]]:
    """Every combination of original/stemmed form per word, originals first."""
    return list(itertools.product(*[dict.fromkeys([w, stem(w)]) for w in words]))
