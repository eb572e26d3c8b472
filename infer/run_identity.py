"""What an output of ``r21d score`` or ``r21d extract`` was made with, so resuming it adds
only records of the same kind.

A run's identity is the model's content (SHA-256 of the model file and its side files:
``X.onnx.data`` beside an ONNX graph, the JSON record beside a TensorRT engine), its file name
(the records name it), and every option that changes a record: the effective clips, crops,
resize mode, full-frame, backend, precision and (``score``) top-k. It is stored beside the
output, written atomically before the first record, under the output's lock::

    results.jsonl  ->  results.jsonl.run.json      (a JSONL or CSV file)
    out.parquet/   ->  out.parquet/_run.json       (a Parquet folder; readers skip ``_`` files)
    features/      ->  features/_run.json          (an extract folder)

A rerun on an output with records of another identity, or with records and no identity (an
older r21d, another tool), is refused with what differs; ``--overwrite`` starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from r21d.errors import BadOptionError
from r21d.outputs import atomic_file

RUN_SUFFIX = ".run.json"
FOLDER_RUN_FILE = "_run.json"
FLAGS = {
    "clips": "--clips",
    "crops": "--crops",
    "resize": "--resize",
    "full_frame": "--full-frame",
    "backend": "--backend",
    "precision": "--precision",
    "top_k": "--top-k",
}
"""The command-line flag of each identity field that has one (messages name the flag)."""
CHUNK = 1 << 20


def model_files(model: str | os.PathLike) -> list[Path]:
    """The model file and the side files that belong to it (``X.onnx.data`` beside an ONNX
    graph, ``X.engine.json`` beside a TensorRT engine), those that exist."""
    from r21d.artefacts import SUFFIX_KINDS, record_path

    model = Path(model)
    kind = SUFFIX_KINDS.get(model.suffix.lower())
    sides = {"onnx": [model.with_name(model.name + ".data")], "tensorrt": [record_path(model)]}
    return [model, *(p for p in sides.get(kind, []) if p.is_file())]


def model_sha256(model: str | os.PathLike) -> str:
    """Hex SHA-256 of the model file and its side files (each named by its suffix beyond the
    model's name), read in chunks."""
    model = Path(model)
    digest = hashlib.sha256()
    for path in model_files(model):
        digest.update(path.name[len(model.name) :].encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def run_identity(command: str, model: str | os.PathLike, backend, options, **extra) -> dict:
    """The identity of a run: ``command`` (``score``, ``extract``), the model's name and
    content hash, ``backend``'s name and precision, the effective protocol of ``options``
    (a :class:`~r21d.infer.engine.ScoreOptions`) for the backend's spec, and ``extra`` fields
    (``top_k``)."""
    spec = backend.spec.with_resize_mode(options.resize_mode)
    resolved = options.for_spec(spec)
    return {
        "command": command,
        "model": Path(model).name,
        "model_sha256": model_sha256(model),
        "backend": backend.name,
        "precision": backend.precision,
        "clips": resolved.num_clips,
        "crops": resolved.crops,
        "resize": spec.resize_mode,
        "full_frame": resolved.full_frame,
        **extra,
    }


def run_file(output: str | os.PathLike, folder: bool) -> Path:
    """Where the identity of ``output`` lives: ``_run.json`` inside a folder output, else
    ``<output>.run.json`` beside the file."""
    output = Path(output)
    return output / FOLDER_RUN_FILE if folder else output.with_name(output.name + RUN_SUFFIX)


def _model(identity: dict) -> str:
    return f"{identity.get('model')} (sha256 {str(identity.get('model_sha256'))[:12]})"


def differences(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for each field that differs (the model as name and short hash)."""
    lines = []
    if (old.get("model"), old.get("model_sha256")) != (new.get("model"), new.get("model_sha256")):
        lines.append(f"model: {_model(old)} -> {_model(new)}")
    for key in dict.fromkeys([*new, *old]):
        if key in ("model", "model_sha256") or old.get(key) == new.get(key):
            continue
        lines.append(f"{FLAGS.get(key, key)}: {_show(old.get(key))} -> {_show(new.get(key))}")
    return lines


def _show(value) -> str:
    return "none" if value is None else json.dumps(value)


def _read(path: Path) -> dict | None:
    try:
        identity = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return identity if isinstance(identity, dict) else None


def check_run(path: Path, identity: dict, output: str, records: int) -> None:
    """Refuse to add to ``output`` (holding ``records`` records) unless the identity stored at
    ``path`` is ``identity``; store ``identity`` there when the output holds no records yet.

    Raises :class:`BadOptionError` naming what differs and how to proceed.
    """
    stored = _read(path) if path.exists() else None
    if records and stored is None:
        what = "an unreadable" if path.exists() else "no"
        raise BadOptionError(
            f"{output} holds {records} record{'s' * (records != 1)} but {what} {path.name} "
            "saying which model and options wrote them (an older r21d or another tool); use "
            "another -o or --overwrite"
        )
    if records and stored != identity:
        raise BadOptionError(
            f"{output} holds records of another run ({'; '.join(differences(stored, identity))})"
            "; use another -o, or --overwrite to start it over"
        )
    if stored != identity:
        write_run(path, identity)


def write_run(path: Path, identity: dict) -> None:
    """Store ``identity`` at ``path`` atomically and durably."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(identity, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
