"""What a user gets wrong with ``r21d train``: one error line, the right exit code, the flag or
file named, checked before any rank starts, and nothing in the run folder overwritten."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r21d.cli import main
from r21d.errors import UnusableDataError
from r21d.train.config import TrainConfig
from r21d.train.preflight import check_run
from r21d.train.run_state import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
TINY = [
    *("--width", "0.125", "--clip-len", "8", "--batch-size", "2", "--max-steps", "6"),
    *("--log-every", "1", "--workers", "0", "--no-progress", "--device", "cpu"),
]


def one_error(capsys) -> str:
    """The single line ``r21d train`` printed on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("r21d train: error: ")
    return lines[0]


def write_manifest(path: Path, videos: list[str]) -> Path:
    labels = ("a", "b")
    rows = "".join(f"{v},{labels[i % 2]}\n" for i, v in enumerate(videos))
    path.write_text("path,label\n" + rows)
    return path


@pytest.fixture(scope="module")
def stopped_run(motion_videos, tmp_path_factory) -> Path:
    """A real run of 6 steps that stopped at step 1 with a checkpoint (``--stop-at-step``)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    argv = ["train", "--train-manifest", str(motion_videos["train"]), "--output-dir", str(run)]
    assert main([*argv, *TINY, "--stop-at-step", "1"]) == 0
    assert list_checkpoints(run) == [1]
    return run


def test_resume_without_a_checkpoint_under_nproc_2_fails_before_any_rank(tmp_path):
    run = tmp_path / "a"
    TrainConfig(train_manifest="train.csv", output_dir=str(run)).save(run / "config.yaml")
    before = (run / "config.yaml").read_bytes()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "r21d",
            "train",
            "--config",
            str(run / "config.yaml"),
            "--resume",
            "--max-steps",
            "4",
            "--batch-size",
            "2",
            "--nproc",
            "2",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # torchrun would have printed its banner
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("r21d train: error: --resume: no checkpoint in ")
    assert str(run / "checkpoints") in lines[0]
    assert (run / "config.yaml").read_bytes() == before  # max_steps 1000, batch 8 kept
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_resume_with_other_options_is_refused_naming_them(stopped_run, capsys):
    before = (stopped_run / "config.yaml").read_bytes()
    code = main(
        [
            "train",
            "--output-dir",
            str(stopped_run),
            "--resume",
            "--max-steps",
            "4",
            "--batch-size",
            "3",
            "--workers",
            "1",
        ]  # fmt: skip
    )
    assert code == 2
    line = one_error(capsys)
    assert str(stopped_run / "config.yaml") in line
    assert "--max-steps 4 (the run: 6)" in line and "--batch-size 3 (the run: 2)" in line
    assert "--workers" not in line  # where it runs is the session's to choose
    assert (stopped_run / "config.yaml").read_bytes() == before
    assert list_checkpoints(stopped_run) == [1]


def test_resume_takes_the_saved_config_and_leaves_it_as_it_was(stopped_run, tmp_path):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    before = (run / "config.yaml").read_bytes()
    # session options only: how often it logs and checkpoints, where it stops
    argv = ["train", "--output-dir", str(run), "--resume", "--log-every", "2"]
    assert main([*argv, "--checkpoint-every", "1", "--stop-at-step", "3"]) == 0
    assert list_checkpoints(run) == [1, 2, 3]
    assert (run / "config.yaml").read_bytes() == before


def test_a_new_run_over_a_run_folder_is_refused(stopped_run, motion_videos, capsys):
    before = (stopped_run / "config.yaml").read_bytes()
    argv = ["train", "--train-manifest", str(motion_videos["train"])]
    assert main([*argv, "--output-dir", str(stopped_run), *TINY]) == 2
    line = one_error(capsys)
    assert f"--output-dir {stopped_run} already holds a run" in line and "--resume" in line
    assert (stopped_run / "config.yaml").read_bytes() == before
    assert list_checkpoints(stopped_run) == [1]


def test_a_manifest_of_missing_videos_is_refused_before_the_workers_start(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "train.csv", ["gone0.mp4", "gone1.mp4", "gone2.mp4"])
    argv = ["train", "--train-manifest", str(manifest), "--output-dir", str(tmp_path / "run")]
    assert main([*argv, *TINY, "--workers", "2"]) == 8
    line = one_error(capsys)
    assert f"--train-manifest {manifest}: 3 of 3 videos are missing" in line
    assert str(tmp_path / "gone0.mp4") in line and str(tmp_path / "gone2.mp4") in line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_few_missing_videos_are_skipped_with_a_warning(motion_videos, tmp_path, caplog):
    present = [str(p) for p in sorted(motion_videos["train"].parent.glob("*.mp4"))[:3]]
    manifest = write_manifest(tmp_path / "train.csv", [*present, str(tmp_path / "gone.mp4")])
    config = TrainConfig(train_manifest=str(manifest), output_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        plan = check_run(config)
    assert len(plan.train_set.records) == 4
    assert f"1 of 4 videos are missing and will be skipped ({tmp_path / 'gone.mp4'})" in caplog.text
    manifest = write_manifest(tmp_path / "half.csv", [*present[:1], *["x.mp4", "y.mp4"]])
    with pytest.raises(UnusableDataError, match="2 of 3 videos are missing"):
        check_run(TrainConfig(train_manifest=str(manifest), output_dir=str(tmp_path / "run")))


def test_undecodable_videos_in_a_dataloader_worker_are_one_line(tmp_path, capsys):
    videos = []
    for i in range(2):
        (tmp_path / f"broken{i}.mp4").write_bytes(b"not a video" * 100)
        videos.append(str(tmp_path / f"broken{i}.mp4"))
    manifest = write_manifest(tmp_path / "train.csv", videos)
    argv = ["train", "--train-manifest", str(manifest), "--output-dir", str(tmp_path / "run")]
    assert main([*argv, *TINY, "--workers", "1"]) == 8
    line = one_error(capsys)
    assert f"--train-manifest {manifest}: 10 draws in a row hit undecodable videos" in line


def test_an_output_dir_that_is_a_file_is_refused(motion_videos, tmp_path, capsys):
    target = tmp_path / "runs"
    target.write_text("my notes\n")
    argv = ["train", "--train-manifest", str(motion_videos["train"]), "--output-dir", str(target)]
    assert main([*argv, *TINY]) == 2
    assert f"--output-dir {target} exists and is not a folder" in one_error(capsys)
    assert target.read_text() == "my notes\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--log-every", "0"], "--log-every must be >= 1, got 0"),
        (["--workers", "-1"], "--workers must be >= 0, got -1"),
        (["--sync-bn"], "--sync-bn needs CUDA"),
        (["--nproc", "0"], "--nproc must be >= 1, got 0"),
        ([], "--sampling must be one of"),  # from the config file
    ],
)
def test_bad_options_are_named_by_their_flag(motion_videos, tmp_path, capsys, flags, message):
    config = tmp_path / "c.yaml"
    config.write_text("sampling: sqrtt\n" if not flags else "{}\n")
    argv = ["train", "--config", str(config), "--train-manifest", str(motion_videos["train"])]
    assert main([*argv, "--output-dir", str(tmp_path / "run"), *TINY, *flags]) == 2
    assert message in one_error(capsys)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_help_lists_every_data_subcommand(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    assert "prepare training data: hashtags, subsets, manifests" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("hashtags", "subset", "manifest"))


def test_resume_of_a_folder_without_a_run_names_it(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "typo"), "--resume"]) == 2
    line = one_error(capsys)
    assert f"--resume: {tmp_path / 'typo' / 'config.yaml'} not found" in line
    assert f"--output-dir {tmp_path / 'typo'} holds no run" in line


@pytest.mark.parametrize("command", ["subset", "manifest"])
def test_data_output_that_is_a_folder_is_refused(motion_videos, tmp_path, capsys, command):
    (tmp_path / "out.csv").mkdir()
    # manifest: the motion set's root holds train/ and val/, read as two class folders
    source = motion_videos["train"] if command == "subset" else motion_videos["train"].parents[1]
    extra = ["--random", "2"] if command == "subset" else []
    assert main(["data", command, str(source), "-o", str(tmp_path / "out.csv"), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"r21d data: error: -o {tmp_path / 'out.csv'} is a folder; give a file name"]


def test_an_error_a_rank_finds_under_nproc_2_is_one_line(motion_videos, tmp_path):
    # only the ranks see it: the memory a training step needs is measured on the model
    run = tmp_path / "run"
    argv = ["--train-manifest", str(motion_videos["train"]), "--output-dir", str(run), *TINY]
    result = subprocess.run(
        [sys.executable, "-m", "r21d", "train", *argv, "--batch-size", "10000000", "--nproc", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith("r21d train: error: a training step of 10000000 clips needs")
    assert "use --batch-size" in errors[0]
