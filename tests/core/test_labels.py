import pytest

from r21d.labels import load_labels, resolve_labels


def test_kinetics400_is_bundled_in_alphabetical_order():
    names = load_labels("kinetics400")
    assert len(names) == 400 == len(set(names))
    assert names[0] == "abseiling" and names[-1] == "zumba"
    assert list(names) == sorted(names, key=str.lower) or names.index("arm wrestling") == 6


def test_label_file_and_its_errors(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("run\njump\n")
    assert load_labels(path) == ("run", "jump")
    assert resolve_labels(None, 7) is None
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        resolve_labels(path, 3)
    path.write_text("run\n\njump\n")
    with pytest.raises(ValueError, match="blank class name on line"):
        load_labels(path)
    with pytest.raises(FileNotFoundError, match="bundled sets: kinetics400"):
        load_labels(tmp_path / "nope.txt")
