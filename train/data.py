"""Training data descriptions: manifests, class-per-folder trees and the label map.

A manifest lists videos and their labels, one video per entry:

- JSONL: one object per line, ``{"path": "a.mp4", "label": "fish"}`` or
  ``{"path": "a.mp4", "labels": ["fish", "boat"]}`` (several labels, e.g. hashtags).
- CSV: a header with ``path`` and ``label`` or ``labels``; several labels in one cell are
  separated by ``|``.

Relative paths are relative to the manifest's folder. A class-per-folder tree
(``root/<class>/<video>``) is read as a single-label manifest. The label map is the sorted
set of label names unless one is given (a label file, one name per line, as
:func:`r21d.labels.load_labels` reads); a run saves it as ``labels.txt``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from r21d.errors import BadOptionError, InputNotFoundError
from r21d.infer.sources import VIDEO_SUFFIXES
from r21d.labels import load_labels
from r21d.outputs import atomic_file

LABEL_SEPARATOR = "|"


@dataclass(frozen=True)
class VideoRecord:
    """One training video: where it is and the indices of its labels in the label map."""

    path: Path
    labels: tuple[int, ...]


@dataclass(frozen=True)
class VideoSet:
    """A list of videos and the label map their label indices point into."""

    records: list[VideoRecord]
    label_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def load_video_set(source: str | Path, label_names: Sequence[str] | None = None) -> VideoSet:
    """Read a manifest (``.jsonl``/``.json``/``.csv``) or a class-per-folder tree.

    With ``label_names`` the indices follow that map and unknown labels are an error (what a
    validation set or a fine-tuning run with a fixed class order needs).
    """
    source = Path(source)
    if source.is_dir():
        entries = _read_folder_tree(source)
    elif source.is_file():
        entries = _read_manifest(source)
    else:
        raise InputNotFoundError(f"manifest or video folder {source} not found")
    if not entries:
        raise BadOptionError(f"{source}: no videos listed")
    names = (
        tuple(label_names) if label_names else tuple(sorted({n for _, ns in entries for n in ns}))
    )
    index = {name: i for i, name in enumerate(names)}
    records = []
    for path, labels in entries:
        unknown = [n for n in labels if n not in index]
        if unknown:
            raise BadOptionError(f"{source}: {path} has labels not in the label map: {unknown[:3]}")
        records.append(VideoRecord(path, tuple(dict.fromkeys(index[n] for n in labels))))
    return VideoSet(records, names)


def load_label_map(path: str | Path) -> tuple[str, ...]:
    """A label map file, one class name per line (the format runs save)."""
    return load_labels(Path(path))


def save_label_map(names: Sequence[str], path: str | Path) -> Path:
    """Write one class name per line (readable by :func:`r21d.labels.load_labels`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return path


def write_manifest(
    records: Sequence[VideoRecord], label_names: Sequence[str], path: str | Path
) -> Path:
    """Write records as JSONL (``.jsonl``/``.json``) or CSV (``.csv``) with absolute paths,
    atomically (a failure leaves an existing file as it was)."""
    path = Path(path)
    if path.suffix not in (".csv", ".jsonl", ".json"):
        raise BadOptionError(f"{path}: manifest must end in .jsonl, .json or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [(str(Path(r.path).resolve()), [label_names[i] for i in r.labels]) for r in records]
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        if path.suffix == ".csv":
            writer = csv.writer(f)
            writer.writerow(["path", "labels"])
            writer.writerows([p, LABEL_SEPARATOR.join(ns)] for p, ns in rows)
        else:
            for p, ns in rows:
                entry = {"path": p, "label": ns[0]} if len(ns) == 1 else {"path": p, "labels": ns}
                f.write(json.dumps(entry) + "\n")
    return path


def _read_manifest(path: Path) -> list[tuple[Path, list[str]]]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        raw = [(row, n) for n, row in enumerate(rows, start=2)]
    elif path.suffix in (".jsonl", ".json"):
        raw = []
        for n, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw.append((json.loads(line), n))
            except json.JSONDecodeError as e:
                raise BadOptionError(f"{path}:{n}: not valid JSON ({e})") from None
    else:
        raise BadOptionError(f"{path}: manifest must end in .jsonl, .json or .csv")
    return [_entry(row, f"{path}:{n}", path.parent) for row, n in raw]


def _entry(row: object, where: str, base: Path) -> tuple[Path, list[str]]:
    if not isinstance(row, dict) or not row.get("path"):
        raise BadOptionError(f"{where}: entry needs a 'path'")
    labels = row.get("labels", row.get("label"))
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(LABEL_SEPARATOR)]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(s, str) and s.strip() for s in labels)
    ):
        raise BadOptionError(f"{where}: entry needs a non-empty 'label' or 'labels'")
    path = Path(row["path"])
    return (path if path.is_absolute() else base / path), [s.strip() for s in labels]


def _read_folder_tree(root: Path) -> list[tuple[Path, list[str]]]:
    entries = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for video in sorted(class_dir.iterdir()):
            if video.suffix.lower() in VIDEO_SUFFIXES:
                entries.append((video, [class_dir.name]))
    return entries
