"""Where commands write: one check of an output path before any work, one atomic write.

Every command that writes a file or a folder calls :func:`output_file` or
:func:`output_folder` first, so a path that cannot work (a folder where a file is wanted, a
device, a folder that cannot be created, no write permission) is refused in one line naming
the flag, before minutes of work, and :func:`atomic_file` writes the file under a temporary
name beside it, so a failing command leaves neither a partial file nor a changed old one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from r21d.errors import BadOptionError


def _describe(path: Path) -> str | None:
    """What an existing path is, where it is not a regular file or a folder."""
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _writable_folder(folder: Path, flag: str, path: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadOptionError(
            f"{flag} {path}: cannot create the folder {folder} ({e.strerror})"
        ) from None
    if not folder.is_dir():
        raise BadOptionError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadOptionError(f"{flag} {path}: no permission to write in {folder}")


def output_file(path: str | os.PathLike, flag: str = "-o", suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a file this process can create or replace; its folder is created.

    Refused with a :class:`BadOptionError` naming ``flag``: an existing folder, a device, pipe
    or socket, a read-only file, a name without one of ``suffixes`` (any case; when given),
    a folder that cannot be created or written in.
    """
    path = Path(path)
    if path.is_dir():
        raise BadOptionError(f"{flag} {path} is a folder; give a file name")
    if path.exists():
        kind = _describe(path)
        if kind:
            raise BadOptionError(f"{flag} {path} is {kind}, not a regular file")
        if not os.access(path, os.W_OK):
            raise BadOptionError(f"{flag} {path}: no permission to write it")
    if suffixes and path.suffix.lower() not in suffixes:
        raise BadOptionError(f"{flag} {path}: the output must be a {'/'.join(suffixes)} file")
    _writable_folder(path.parent, flag, path)
    return path


def output_folder(path: str | os.PathLike, flag: str = "-o") -> Path:
    """``path`` as a folder this process can write in, created if missing.

    Refused with a :class:`BadOptionError` naming ``flag``: an existing file, a folder that
    cannot be created or written in.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadOptionError(f"{flag} {path} exists and is not a folder")
    _writable_folder(path, flag, path)
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any
    exception (Ctrl-C included) it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
