"""Where videos come from: folders, files and list files, one list of video suffixes."""

from __future__ import annotations

import os
from pathlib import Path

from r21d.errors import InputNotFoundError

VIDEO_SUFFIXES = frozenset(
    (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
    + (".3gp",)
)
"""Files a folder scan takes as videos (any case); a file named directly is taken whatever
its suffix."""


def find_videos(inputs: list[str], list_files: list[str] = ()) -> list[str]:
    """Absolute video paths from folders, files and ``@list`` files, deduplicated, in order.

    Folders are searched recursively for :data:`VIDEO_SUFFIXES` (any case), sorted, hidden
    files and folders (``.name``, e.g. macOS ``._clip.mp4``) left out; files named directly
    are taken whatever their suffix. A PATH on the command line that does not
    exist is an error; a missing entry of a list file becomes an error record later.
    """
    found: list[str] = []
    lists = [p[1:] for p in inputs if p.startswith("@")] + list(list_files)
    for item in [p for p in inputs if not p.startswith("@")]:
        path = Path(item)
        if not path.exists():
            raise InputNotFoundError(f"{item} not found")
        found += _expand(path)
    for list_file in lists:
        entries = _read_list(Path(list_file))
        for entry in entries:
            path = Path(entry)
            found += _expand(path) if path.is_dir() else [os.path.abspath(path)]
    return list(dict.fromkeys(found))


def _expand(path: Path) -> list[str]:
    if not path.is_dir():
        return [os.path.abspath(path)]
    videos = (
        p
        for p in path.rglob("*")
        if p.suffix.lower() in VIDEO_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.is_file()
    )
    return sorted(os.path.abspath(p) for p in videos)


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputNotFoundError(f"list file {path} not found")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]
