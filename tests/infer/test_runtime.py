"""One set of runtime options: parsing, validation, and the same group in every command."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from r21d.cli import main
from r21d.infer.runtime import RuntimeOptions, parse_device


def _runtime_help(*command: str) -> list[str]:
    """The lines of the runtime option group in ``r21d COMMAND --help``."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        main([*command, "--help"])
    lines = printed.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("runtime ("))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), None)
    return lines[start:end]


def _options(lines: list[str]) -> dict[str, str]:
    """Each option of the group with its (unwrapped) help text, in order."""
    options: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("  --"):
            name = line.split()[0].rstrip(",")
            options[name] = line
        else:
            options[name] += " " + line.strip()
    return {name: " ".join(text.split()) for name, text in options.items()}


def test_score_extract_bench_and_train_show_the_same_runtime_options():
    score = _runtime_help("score")
    assert list(_options(score)) == [
        "--backend",
        "--device",
        "--precision",
        "--channels-last",
        "--threads",
        "--batch-size",
        "--workers",
        "--ort-provider",
        "--allow-cpu-fallback",
    ]
    for command in (("extract",), ("bench", "model"), ("bench", "pipeline"), ("bench", "all")):
        assert _runtime_help(*command) == score, command
    # train: the same options, choices and defaults; only --batch-size means a training step
    train, scoring = _options(_runtime_help("train")), _options(score)
    assert list(train) == list(scoring)
    differing = [name for name in train if train[name] != scoring[name]]
    assert differing == ["--batch-size"] and "per step" in train["--batch-size"]


def test_variant_strings_are_sugar_for_runtime_options():
    assert RuntimeOptions.parse("torch:bf16:cl") == RuntimeOptions(
        backend="torch", precision="bf16", channels_last=True
    )
    assert RuntimeOptions.parse("onnxruntime:fp16").label == "onnxruntime:fp16"
    assert RuntimeOptions.parse("torch:fp32", workers=0).workers == 0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"backend": "caffe2"}, "^--backend must be one of"),
        ({"precision": "int8"}, "^--precision must be one of"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"backend": "onnxruntime", "channels_last": True}, "^--channels-last applies"),
        ({"threads": 0}, "^--threads must be >= 1"),
        ({"batch_size": 0}, "^--batch-size must be >= 1"),
        ({"workers": -1}, "^--workers must be >= 0"),
        ({"ort_provider": "rocm"}, "^--ort-provider must be one of"),
    ],
)
def test_impossible_options_are_refused_by_their_flag(fields, message):
    with pytest.raises(ValueError, match=message):
        RuntimeOptions(**fields)


def test_devices_are_parsed_in_one_place():
    assert parse_device("cpu") == "cpu"
    assert parse_device("cuda") == "cuda:0"
    assert parse_device("cuda:3") == "cuda:3"
    assert parse_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad in ("cuda:", "cuda:x", "tpu", "CPU"):
        with pytest.raises(ValueError, match="device must be"):
            parse_device(bad)
