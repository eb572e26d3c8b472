"""Configuration: files (YAML, TOML), flags for every option, precedence, saved config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from r21d.train.config import (
    TrainConfig,
    add_config_arguments,
    read_config_file,
    resolve_config,
)


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return resolve_config(parser.parse_args(argv))


REQUIRED = ["--train-manifest", "m.jsonl", "--output-dir", "run"]


def test_every_option_has_a_flag():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= flags


def test_flags_override_the_file_which_overrides_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "train_manifest: m.jsonl\noutput-dir: run\nbatch_size: 4\nbase_lr: 0.5\nflip: true\n"
    )
    config = parse(["--config", str(tmp_path / "c.yaml"), "--batch-size", "2", "--no-flip"])
    assert config.batch_size == 2  # flag
    assert config.base_lr == 0.5  # file
    assert config.flip is False  # flag beats file for booleans too
    assert config.momentum == 0.9  # default


def test_toml_config(tmp_path):
    (tmp_path / "c.toml").write_text(
        'train_manifest = "m.jsonl"\noutput_dir = "run"\nresize_mode = "short_edge"\n'
        'resize_size = [128]\nschedule = "cosine"\n'
    )
    config = parse(["--config", str(tmp_path / "c.toml")])
    assert (config.resize_mode, config.resize_size, config.schedule) == (
        "short_edge",
        [128],
        "cosine",
    )


def test_bad_configs_are_clear_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("train_manifest: m.jsonl\nbatchsize: 3\n")
    with pytest.raises(ValueError, match="unknown options.*batchsize"):
        read_config_file(tmp_path / "c.yaml")
    (tmp_path / "s.yaml").write_text("sampling: sqrtt\n")
    with pytest.raises(ValueError, match="--sampling must be one of"):
        parse(["--config", str(tmp_path / "s.yaml"), *REQUIRED])
    with pytest.raises(ValueError, match="--output-dir is required"):
        parse(["--train-manifest", "m.jsonl"])
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        (tmp_path / "c.ini").write_text("")
        read_config_file(tmp_path / "c.ini")


def test_saved_config_reloads_identically(tmp_path):
    config = parse([*REQUIRED, "--resize-size", "120", "160", "--sampling", "sqrt"])
    config.save(tmp_path / "saved.yaml")
    assert parse(["--config", str(tmp_path / "saved.yaml")]) == config


def test_resume_reads_the_runs_saved_config(tmp_path):
    run = tmp_path / "run"
    parse(["--train-manifest", "m.jsonl", "--output-dir", str(run), "--batch-size", "3"]).save(
        run / "config.yaml"
    )
    config = parse(["--output-dir", str(run), "--resume"])
    assert config.batch_size == 3 and config.train_manifest == "m.jsonl" and config.resume
