"""Checkpoints rebuild the exact model from the file alone."""

import pytest
import torch
from safetensors.torch import save_file

from r21d.checkpoint import CheckpointError, load_checkpoint, read_spec, save_checkpoint
from r21d.models import build_model


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


def test_round_trip_gives_identical_outputs(tmp_path, tiny_spec):
    model = build_model(tiny_spec)
    _randomise_bn(model)
    path = save_checkpoint(model, tiny_spec, tmp_path / "m.safetensors")
    loaded, spec = load_checkpoint(path)
    assert spec == tiny_spec == read_spec(path)
    x = torch.randn(2, 3, 8, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, tiny_spec):
    """The rename onto a folder fails: the folder is untouched and the temporary is gone."""
    target = tmp_path / "m.safetensors"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        save_checkpoint(build_model(tiny_spec), tiny_spec, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert target.is_dir() and not any(target.iterdir())


def test_file_without_spec_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no 'r21d.spec' metadata"):
        load_checkpoint(path)


def test_truncated_or_non_safetensors_file_is_refused(tmp_path, tiny_spec):
    path = save_checkpoint(build_model(tiny_spec), tiny_spec, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(path)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        read_spec(text)


def test_tensors_not_matching_the_spec_are_named(tmp_path, tiny_spec):
    model = build_model(tiny_spec)
    path = save_checkpoint(model, tiny_spec.replace(num_classes=6, labels=None), tmp_path / "m.st")
    with pytest.raises(CheckpointError, match=r"wrong shape: fc\.bias, fc\.weight"):
        load_checkpoint(path)
