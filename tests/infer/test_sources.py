"""Folder scans and list files: every entry found or reported, none dropped in silence."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from r21d.cli import main
from r21d.infer.sources import Found, find_videos


def test_a_scan_reports_links_it_cannot_follow_and_follows_linked_folders(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "v.MP4").write_bytes(b"x")
    (folder / ".hidden.mp4").symlink_to("/nonexistent.mp4")  # hidden: left out
    (folder / "gone").symlink_to("/nonexistent-folder")  # no suffix: could be a folder
    (folder / "gone.json").symlink_to("/nonexistent.json")  # not a video: left out
    (folder / "again").symlink_to("sub")  # the same folder twice: its videos once
    found = find_videos([str(folder)])
    assert found.paths == [str(folder / "gone"), str(folder / "sub" / "v.MP4")]
    assert found.problems == {str(folder / "gone"): "dangling symbolic link to /nonexistent-folder"}


def test_list_entries_that_are_broken_links_say_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("/nonexistent.mp4", "dangling.mp4")
    os.symlink("loop.mp4", "loop.mp4")
    name = os.fsdecode(b"caf\xe9.mp4")  # a list file may name a file that is not UTF-8
    with open("list.txt", "wb") as f:
        f.write(b"dangling.mp4\nloop.mp4\ncaf\xe9.mp4\n")
    found = find_videos(["@list.txt"])
    assert found.paths == [str(tmp_path / n) for n in ("dangling.mp4", "loop.mp4", name)]
    assert found.problems == {
        str(tmp_path / "dangling.mp4"): "dangling symbolic link to /nonexistent.mp4",
        str(tmp_path / "loop.mp4"): "symbolic link loop (it leads to loop.mp4, which leads back)",
    }


def test_a_path_that_is_a_dangling_link_is_one_line_naming_its_target(tmp_path, capsys):
    (tmp_path / "v.mp4").symlink_to("/nonexistent.mp4")
    rc = main(["score", str(tmp_path / "v.mp4"), "-m", "x.safetensors", "-o", str(tmp_path / "r")])
    assert rc == 2
    assert capsys.readouterr().err == (
        f"r21d score: error: {tmp_path / 'v.mp4'}: dangling symbolic link to /nonexistent.mp4\n"
    )


def _find_as_another_user(path: str):
    """``find_videos([path])`` in a forked child that gave up root (root may list any
    folder); as another user, here."""
    if os.geteuid() != 0:
        return find_videos([path])
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: nobody, reporting through the pipe, then gone
        try:
            os.setgid(65534)
            os.setuid(65534)
            with os.fdopen(write, "w") as out:
                found = find_videos([path])
                json.dump({"paths": found.paths, "problems": found.problems}, out)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    os.waitpid(child, 0)
    return Found(**json.loads(data))


def test_a_folder_that_cannot_be_listed_is_reported():
    top = Path(tempfile.mkdtemp())  # under /tmp, where another user can get in
    try:
        top.chmod(0o755)
        (top / "v.mp4").write_bytes(b"x")
        locked = top / "locked"
        locked.mkdir(mode=0)
        found = _find_as_another_user(str(top))
    finally:
        if (top / "locked").exists():
            (top / "locked").chmod(0o755)
        shutil.rmtree(top)
    assert found.paths == [str(locked), str(top / "v.mp4")]
    assert found.problems == {str(locked): "cannot read this folder: Permission denied"}
