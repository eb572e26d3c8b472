"""The model spec: JSON round trip and validation errors a user would hit."""

import json

import pytest

from r21d.models import create_spec
from r21d.spec import ModelSpec, SpecError


def test_json_round_trip_keeps_every_field(tiny_spec):
    spec = tiny_spec.replace(provenance={"format": "caffe2", "sha256": "ab" * 32})
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert again.labels == ("a", "b", "c", "d", "e")


def test_defaults_are_the_caffe2_preprocessing():
    spec = create_spec("r2plus1d_34", 400, 32)
    assert spec.resize_mode == "fixed" and spec.resize_size == (128, 171)
    assert spec.crop_size == 112
    assert spec.mean == (110.201, 100.64, 95.9966)
    assert spec.std == (58.1489, 56.4701, 55.3324)
    assert spec.bn_eps == 1e-3
    assert create_spec("r2plus1d_tv_18", 400, 16).bn_eps == 1e-5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "resnet"}, "unknown arch"),
        ({"depth": 20}, "no depth 20"),
        ({"clip_len": 12}, "multiple of 8"),
        ({"mean": (1.0, 2.0)}, "mean needs 3"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be positive"),
        ({"resize_mode": "stretch"}, "resize_mode"),
        ({"resize_size": (128,)}, r"\(height, width\)"),
        ({"crop_size": 200}, "does not fit"),
        ({"head": "mlp"}, "head must be"),
        ({"labels": ("x",)}, "1 labels given"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_specs_are_clear_errors(tiny_spec, change, message):
    data = json.loads(tiny_spec.to_json()) | {
        k: list(v) if isinstance(v, tuple) else v for k, v in change.items()
    }
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(data)


def test_unknown_and_missing_fields_are_refused(tiny_spec):
    data = json.loads(tiny_spec.to_json())
    with pytest.raises(SpecError, match="unknown spec fields: colour"):
        ModelSpec.from_dict(data | {"colour": "red"})
    del data["clip_len"]
    with pytest.raises(SpecError, match="missing required fields: clip_len"):
        ModelSpec.from_dict(data)
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_json("{arch:")


def test_labels_fall_back_to_numbers(tiny_spec):
    assert tiny_spec.label(2) == "c"
    assert tiny_spec.replace(labels=None).label(2) == "2"
