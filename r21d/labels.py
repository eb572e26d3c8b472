"""Class-name sets: Kinetics-400 bundled, others read from a text file (one name per line)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from r21d.errors import BadOptionError, InputNotFoundError

BUNDLED = ("kinetics400",)


def load_labels(source: str | Path) -> tuple[str, ...]:
    """Class names from a bundled set name (``kinetics400``) or a text file, one per line.

    Blank lines are rejected rather than skipped: a stray empty line would shift every class
    after it by one and mislabel the model's outputs silently.
    """
    if str(source) in BUNDLED:
        text = resources.files("r21d").joinpath(f"data/{source}.txt").read_text("utf-8")
        origin = f"bundled set {source!r}"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputNotFoundError(
                f"label file {path} not found (bundled sets: {', '.join(BUNDLED)})"
            )
        text = path.read_text("utf-8")
        origin = str(path)
    names = text.rstrip("\n").split("\n")
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise BadOptionError(f"{origin}: blank class name on line(s) {blank[:5]}")
    return tuple(name.strip() for name in names)


def resolve_labels(source: str | Path | None, num_classes: int) -> tuple[str, ...] | None:
    """Labels for a model with ``num_classes`` outputs, or None (numeric labels) if no source."""
    if source is None:
        return None
    names = load_labels(source)
    if len(names) != num_classes:
        raise BadOptionError(
            f"{source}: {len(names)} class names for a model with {num_classes} classes"
        )
    return names
