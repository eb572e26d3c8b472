"""Result files written one record at a time, safe to interrupt and resume.

``r21d score`` and ``r21d extract`` append one record per video and flush it to disk
(``flush`` + ``os.fsync``) before the next, so a run stopped by Ctrl-C or ``kill -9`` loses at
most the videos in flight. Opening an existing file resumes it: the paths it records (``ok`` or
``error``) are skipped, and a half-written last line left by a kill is cut off before anything
is appended, so no record is ever duplicated or corrupted. ``overwrite=True`` starts over.

Formats: JSON Lines (one object per line), CSV (a header row, then one row per video; the
columns depend on ``top_k``, and resuming with other columns is refused) or Parquet for runs
too big for either (``-o out.parquet``: a folder of part files, :class:`ParquetRecordFile`;
pyarrow, which ``r21d[ray]`` installs, is imported only for it).

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

from r21d.errors import BadOptionError, OutputInUseError, missing_package
from r21d.spec import ModelSpec

FORMATS = ("jsonl", "csv", "parquet")
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
    """``fmt`` if given, else ``csv`` or ``parquet`` from the suffix and ``jsonl`` otherwise."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadOptionError(f"format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    return {".csv": "csv", ".parquet": "parquet"}.get(Path(path).suffix.lower(), "jsonl")


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
        if fmt not in ("jsonl", "csv"):
            raise BadOptionError(f"a RecordFile is jsonl or csv, got {fmt!r} (open_record_file)")
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

    def clear(self) -> None:
        """Empty a JSON Lines file whose records are kept elsewhere now, durably."""
        self._file.truncate(0)
        os.fsync(self._file.fileno())
        self.records, self.done = [], set()

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


def parquet_schema():
    """The Arrow schema of score records (``top_k`` a list of index/label/prob structs)."""
    import pyarrow as pa

    top_k = pa.struct([("index", pa.int64()), ("label", pa.string()), ("prob", pa.float64())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("status", pa.string()),
            ("top_k", pa.list_(top_k)),
            ("clips", pa.int64()),
            ("frames_decoded", pa.int64()),
            ("duration", pa.float64()),
            ("short", pa.bool_()),
            ("decode_s", pa.float64()),
            ("model_s", pa.float64()),
            ("model", pa.string()),
            ("error", pa.string()),
        ]
    )


def records_table(records: list[dict]):
    """Score records as a pyarrow Table of :func:`parquet_schema`."""
    import pyarrow as pa

    return pa.Table.from_pylist(records, schema=parquet_schema())


class ParquetRecordFile:
    """Score records in a folder of Parquet part files, resumed when it exists.

    Each record is first appended durably to ``_journal.jsonl`` in the folder (a
    :class:`RecordFile`, so a kill loses at most the videos in flight); every ``part_rows``
    records, and on close, the journal becomes the next ``part-NNNNNN.parquet`` (written under
    a temporary name, forced to disk, renamed) and is emptied. Opening the folder commits a
    journal a kill left behind, without the records a committed part already holds (a kill
    between the rename and the emptying), so every video is in exactly one part.
    ``pyarrow.parquet.read_table(folder)`` (or pandas, Ray Data, Spark) reads the parts and
    skips the ``_``-prefixed journal. ``records`` holds each recorded video's ``path`` and
    ``model`` (what resuming needs), ``done`` the paths.
    """

    JOURNAL = "_journal.jsonl"

    def __init__(self, path: str | Path, *, overwrite: bool = False, part_rows: int = 1000):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise missing_package("pyarrow", "pyarrow", "ray") from None
        self._pq = pq
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise BadOptionError(f"{self.path} exists and is not a folder of Parquet parts")
        self.path.mkdir(parents=True, exist_ok=True)
        self.part_rows = part_rows
        self._journal = RecordFile(self.path / self.JOURNAL, overwrite=overwrite)  # holds the lock
        for stale in self.path.glob("_part-*.tmp"):  # a kill while writing a part
            stale.unlink()
        if overwrite:
            for part in self._parts():
                part.unlink()
        self.records = []
        for part in self._parts():
            self.records += pq.read_table(part, columns=["path", "model"]).to_pylist()
        in_parts = {r["path"] for r in self.records}
        self._pending = [r for r in self._journal.records if r["path"] not in in_parts]
        self._commit()  # a journal left by a kill becomes a part
        self._journal.clear()
        self.done = {r["path"] for r in self.records}

    def __enter__(self) -> ParquetRecordFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Commit the journal as a last part and release the folder."""
        try:
            self._commit()
        finally:
            self._journal.close()

    def write(self, record: dict) -> None:
        """Record one video durably; commit a part once ``part_rows`` wait in the journal."""
        self._journal.write(record)
        self._pending.append(record)
        self.done.add(record["path"])
        if len(self._pending) >= self.part_rows:
            self._commit()

    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def _commit(self) -> None:
        if not self._pending:
            return
        parts = self._parts()
        number = int(parts[-1].name[5:11]) + 1 if parts else 0
        name = f"part-{number:06d}.parquet"
        tmp = self.path / f"_{name}.tmp"
        self._pq.write_table(records_table(self._pending), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.path / name)
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
        self.records += [{"path": r["path"], "model": r.get("model")} for r in self._pending]
        self._pending = []
        self._journal.clear()


def open_record_file(
    path: str | Path, fmt: str, *, columns: list[str] | None = None, overwrite: bool = False
) -> RecordFile | ParquetRecordFile:
    """The record writer for ``fmt``: a :class:`RecordFile` (jsonl, csv) or a
    :class:`ParquetRecordFile` (parquet, a folder)."""
    if fmt == "parquet":
        return ParquetRecordFile(path, overwrite=overwrite)
    return RecordFile(path, fmt, columns=columns, overwrite=overwrite)


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
