"""Result files written one record at a time, safe to interrupt and resume.

``r21d score`` and ``r21d extract`` append one record per video and flush it to disk
(``flush`` + ``os.fsync``) before the next, so a run stopped by Ctrl-C or ``kill -9`` loses at
most the videos in flight. Opening an existing file resumes it: the paths it records (``ok`` or
``error``) are skipped, and a half-written last line left by a kill is cut off before anything
is appended, so no record is ever duplicated or corrupted. ``overwrite=True`` starts over.

Formats: JSON Lines (one object per line) or CSV (a header row, then one row per video; the
columns depend on ``top_k``, and resuming with other columns is refused).

Score record (JSONL)::

    {"path": "/abs/video.mp4", "status": "ok", "top_k": [{"index": 3, "label": "d",
     "prob": 0.41}, ...], "clips": 10, "frames_decoded": 80, "duration": 3.2, "short": false,
     "decode_s": 0.21, "model_s": 1.37, "model": "r2plus1d_34.safetensors", "error": null}

``clips`` counts the model inputs (clips x crops) whose softmax outputs were averaged.
``status`` is ``"error"`` with a specific ``error`` message (and an empty ``top_k``) for a video
that could not be scored. CSV has the same fields with ``top_k`` spread over ``label_1``,
``prob_1`` ... ``label_k``, ``prob_k``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from r21d.errors import BadOptionError, OutputInUseError
from r21d.spec import ModelSpec

FORMATS = ("jsonl", "csv")
SCORE_FIELDS = (
    "clips",
    "frames_decoded",
    "duration",
    "short",
    "decode_s",
    "model_s",
    "model",
    "error",
)

try:  # advisory lock so two runs cannot append to one file; POSIX only
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else ``csv`` for a ``.csv`` suffix and ``jsonl`` otherwise."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadOptionError(f"format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    return "csv" if Path(path).suffix.lower() == ".csv" else "jsonl"


def score_record(result, spec: ModelSpec, top_k: int, model: str) -> dict:
    """The JSONL record of one :class:`~r21d.infer.engine.VideoResult`."""
    return {
        "path": result.path,
        "status": result.status,
        "top_k": [
            {"index": i, "label": label, "prob": round(p, 6)}
            for i, label, p in result.top_k(spec, top_k)
        ],
        "clips": result.clips,
        "frames_decoded": result.frames_decoded,
        "duration": None if result.duration is None else round(float(result.duration), 3),
        "short": result.short,
        "decode_s": round(result.decode_s, 4),
        "model_s": round(result.model_s, 4),
        "model": model,
        "error": None if result.error is None else " ".join(result.error.split()),
    }


def extract_record(result, file_name: str | None, model: str) -> dict:
    """The ``index.jsonl`` record of one extracted video (``file_name``: its ``.npz`` in the
    output folder, ``None`` on error)."""
    return {
        "path": result.path,
        "file": file_name,
        "clips": result.clips,
        "dim": None if not result.ok else int(result.clip_features.shape[1]),
        "status": result.status,
        "error": result.error,
        "frames_decoded": result.frames_decoded,
        "duration": result.duration,
        "short": result.short,
        "model": model,
    }


def csv_columns(top_k: int) -> list[str]:
    """CSV header of score records with ``top_k`` label/probability pairs."""
    ranks = [f"{name}_{r}" for r in range(1, top_k + 1) for name in ("label", "prob")]
    return ["path", "status", *ranks, *SCORE_FIELDS]


def _csv_row(record: dict, columns: list[str]) -> dict:
    row = {k: v for k, v in record.items() if k != "top_k"}
    for rank, entry in enumerate(record.get("top_k", []), start=1):
        row[f"label_{rank}"], row[f"prob_{rank}"] = entry["label"], entry["prob"]
    return {c: "" if row.get(c) is None else row.get(c) for c in columns}


class RecordFile:
    """An append-only JSONL or CSV file of per-video records, resumed when it exists.

    ``done`` holds the paths already recorded and ``records`` the records read back.
    ``columns`` (CSV only) is the header; an existing file with another header is refused.
    Use as a context manager; :meth:`write` appends one record durably.
    """

    def __init__(
        self,
        path: str | Path,
        fmt: str = "jsonl",
        *,
        columns: list[str] | None = None,
        overwrite: bool = False,
    ):
        if fmt not in FORMATS:
            raise BadOptionError(f"format must be one of {FORMATS}, got {fmt!r}")
        if fmt == "csv" and not columns:
            raise BadOptionError("a CSV record file needs its columns")
        self.path = Path(path)
        self.fmt = fmt
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 (closed in close())
        try:
            self._lock()
            if overwrite:
                self._file.truncate(0)
            self.records = self._read_and_repair()
        except BaseException:
            self._file.close()
            raise
        self.done = {r["path"] for r in self.records}
        if fmt == "csv" and self._file.tell() == 0:
            self._append(self._csv_line(dict(zip(columns, columns, strict=True))))

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def write(self, record: dict) -> None:
        """Append ``record`` (needs a ``path``) and force it to disk."""
        if self.fmt == "jsonl":
            line = json.dumps(record, ensure_ascii=False) + "\n"
        else:
            line = self._csv_line(_csv_row(record, self.columns))
        self._append(line)
        self.done.add(record["path"])

    def _append(self, text: str) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(text.encode("utf-8", "surrogateescape"))  # any file name round-trips
        self._file.flush()
        os.fsync(self._file.fileno())

    def _csv_line(self, row: dict) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writerow(row)
        return buffer.getvalue()

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"{self.path} is being written by another run (it holds the file lock)"
            ) from None

    def _read_and_repair(self) -> list[dict]:
        """Records in the file; a last line without its newline (a killed write) is cut off."""
        self._file.seek(0)
        data = self._file.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            self._file.truncate(len(complete))
        text = complete.decode("utf-8", "surrogateescape")
        if self.fmt == "jsonl":
            return self._parse_jsonl(text)
        return self._parse_csv(text)

    def _parse_jsonl(self, text: str) -> list[dict]:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or "path" not in record:
                raise BadOptionError(
                    f"{self.path}, line {number}: not a record written by r21d; use another "
                    "output file or --overwrite"
                )
            records.append(record)
        return records

    def _parse_csv(self, text: str) -> list[dict]:
        if not text:
            return []
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames != self.columns:
            raise BadOptionError(
                f"{self.path} has the columns {reader.fieldnames}, this run writes "
                f"{self.columns} (another --top-k?); use another output file or --overwrite"
            )
        return list(reader)


def feature_file_name(video_path: str) -> str:
    """``<stem>_<10 hex digits of the path's SHA-1>.npz``: unique per path, readable by stem."""
    digest = hashlib.sha1(video_path.encode("utf-8")).hexdigest()[:10]
    return f"{Path(video_path).stem}_{digest}.npz"


def save_features(directory: str | Path, video_path: str, clip_features: np.ndarray) -> str:
    """Write a video's clip features and their mean atomically; return the file name.

    The ``.npz`` holds ``clip_features`` (K, D) float32 and ``video_feature`` (D,) float32,
    their mean; ``np.load`` reads it without pickle.
    """
    name = feature_file_name(video_path)
    clip_features = np.asarray(clip_features, dtype=np.float32)
    tmp = Path(directory) / (name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, clip_features=clip_features, video_feature=clip_features.mean(axis=0))
    tmp.replace(Path(directory) / name)
    return name
