"""The one output-path check every command runs before working, and the atomic write."""

from __future__ import annotations

import os

import pytest

from r21d.errors import BadOptionError
from r21d.outputs import atomic_file, output_file, output_folder


def test_a_folder_device_or_uncreatable_parent_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(BadOptionError, match=r"^--out .* is a folder; give a file name"):
        output_file(tmp_path, "--out")
    with pytest.raises(BadOptionError, match=r"-o /dev/null is a device, not a regular file"):
        output_file("/dev/null")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BadOptionError, match="cannot create the folder"):
        output_file(blocker / "sub" / "out.jsonl")
    with pytest.raises(BadOptionError, match="exists and is not a folder"):
        output_folder(blocker)


def test_a_folder_the_system_will_not_create_is_refused():
    with pytest.raises(BadOptionError, match=r"^-o /proc/r21d-nope/x.jsonl: cannot create"):
        output_file("/proc/r21d-nope/x.jsonl")


def test_writable_paths_pass_and_parents_are_created(tmp_path):
    assert output_file(tmp_path / "a" / "b.jsonl") == tmp_path / "a" / "b.jsonl"
    assert (tmp_path / "a").is_dir()
    assert output_folder(tmp_path / "features").is_dir()


def test_atomic_file_replaces_on_success_and_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("failed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no partial file left
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_a_name_without_the_wanted_suffix_is_refused_before_anything_is_created(tmp_path):
    with pytest.raises(BadOptionError, match=r"^-o .*m\.trt: the output must be a \.engine/\.plan"):
        output_file(tmp_path / "new" / "m.trt", suffixes=(".engine", ".plan"))
    assert not (tmp_path / "new").exists()
    assert output_file(tmp_path / "M.ONNX", suffixes=(".onnx",)).name == "M.ONNX"
