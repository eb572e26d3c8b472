"""Where videos come from: folders, files and list files, one list of video suffixes.

A folder scan reports what it cannot read instead of dropping it: a symbolic link that loops
or leads nowhere, a link back to an enclosing folder, a subfolder it may not list. Each such
entry is a :class:`Found` problem, which ``r21d score`` and ``extract`` record as an error.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from r21d.errors import InputNotFoundError

VIDEO_SUFFIXES = frozenset(
    (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
    + (".3gp",)
)
"""Files a folder scan takes as videos (any case); a file named directly is taken whatever
its suffix."""


@dataclass
class Found:
    """What :func:`find_videos` found: ``paths`` (absolute, deduplicated, in order) and, for
    the entries among them that cannot be read, ``problems`` (path -> why)."""

    paths: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    _known: set[str] = field(default_factory=set, repr=False)

    def add(self, path: str, problem: str | None = None) -> None:
        """Add ``path`` (once), and why it cannot be read if it cannot."""
        if path not in self._known:
            self._known.add(path)
            self.paths.append(path)
        if problem is not None:
            self.problems[path] = problem


def find_videos(inputs: list[str], list_files: list[str] = ()) -> Found:
    """Absolute video paths from folders, files and ``@list`` files, deduplicated, in order.

    Folders are searched recursively (links to folders followed, each folder once, by its
    real path where the scan reaches it both ways) for
    :data:`VIDEO_SUFFIXES` (any case), sorted, hidden files and folders (``.name``, e.g.
    macOS ``._clip.mp4``) left out; files named directly are taken whatever their suffix.
    Entries that cannot be read are problems (see :class:`Found`): a link that cannot be
    followed (unless its suffix says it is no video), a folder that cannot be listed. A PATH
    on the command line that does not exist is an error; a missing entry of a list file
    becomes an error record later.
    """
    found = Found()
    lists = [p[1:] for p in inputs if p.startswith("@")] + list(list_files)
    for item in [p for p in inputs if not p.startswith("@")]:
        path = Path(item)
        if not path.exists():
            problem = _broken_link(path)
            raise InputNotFoundError(f"{item}: {problem}" if problem else f"{item} not found")
        _expand(path, found)
    for list_file in lists:
        for entry in _read_list(Path(list_file)):
            path = Path(entry)
            if path.is_dir():
                _expand(path, found)
            else:
                found.add(os.path.abspath(path), _broken_link(path))
    return found


def _broken_link(path: Path) -> str | None:
    """Why the symbolic link ``path`` cannot be followed; ``None`` if it is no broken link."""
    try:
        os.stat(path)
    except OSError as e:
        if not path.is_symlink():
            return None
        if e.errno == errno.ELOOP:
            return f"symbolic link loop (it leads to {os.readlink(path)}, which leads back)"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"dangling symbolic link to {os.readlink(path)}"
        return f"cannot follow the symbolic link: {e.strerror}"
    return None


def _expand(path: Path, found: Found) -> None:
    if not path.is_dir():
        found.add(os.path.abspath(path))
        return
    scanned, seen = Found(), set()
    links = [(os.path.abspath(path), ())]
    while links:  # the real folders first, then those reached through links, level by level
        walk, links = links, []
        for folder, parents in walk:
            _walk(folder, scanned, seen, parents, links)
    for entry in sorted(scanned.paths):
        found.add(entry, scanned.problems.get(entry))


def _walk(folder: str, found: Found, seen: set, parents: tuple, links: list) -> None:
    """Add the videos and problems under ``folder``, not following links to folders but
    adding them to ``links``; ``seen`` holds the folders walked (by device and inode),
    ``parents`` those enclosing this one."""
    info = os.stat(folder)
    key = (info.st_dev, info.st_ino)
    if key in parents:
        found.add(folder, f"symbolic link loop: this is {os.path.realpath(folder)} again")
        return
    if key in seen:  # reached again through a link: its videos are recorded once
        return
    seen.add(key)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        found.add(folder, f"cannot read this folder: {e.strerror}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        suffix = os.path.splitext(entry.name)[1].lower()
        try:
            mode = os.stat(entry.path).st_mode  # follows links
        except OSError:
            problem = _broken_link(Path(entry.path))
            if problem and (not suffix or suffix in VIDEO_SUFFIXES):  # could be a video
                found.add(entry.path, problem)
            continue
        if stat.S_ISDIR(mode) and entry.is_symlink():
            links.append((entry.path, (*parents, key)))
        elif stat.S_ISDIR(mode):
            _walk(entry.path, found, seen, (*parents, key), links)
        elif stat.S_ISREG(mode) and suffix in VIDEO_SUFFIXES:
            found.add(entry.path)


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputNotFoundError(f"list file {path} not found")
    text = path.read_text(encoding="utf-8", errors="surrogateescape")  # any file name
    lines = (line.strip() for line in text.split("\n"))  # LF only: a name may hold any other
    return [line for line in lines if line and not line.startswith("#")]
