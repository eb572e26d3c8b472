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

Any file name round-trips, commas, quotes and newlines included. A name that is not UTF-8
(``os.fsdecode`` gives it lone surrogates) is a ``\\udcXX`` escape in JSONL, so the file stays
valid UTF-8 and ``json.loads`` gives back the very ``str`` (``os.fsencode`` of it: the bytes);
CSV holds the name's own bytes (read it with ``errors="surrogateescape"``); Parquet, whose
strings must be UTF-8, cannot hold such a name (``r21d score`` refuses it up front).
:meth:`RecordFile.remove` drops records (``--retry-errors``) by rewriting the file atomically.
Which model and options wrote an output is kept beside it (:mod:`r21d.infer.run_identity`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from r21d.errors import BadOptionError, OutputInUseError, missing_package
from r21d.outputs import atomic_file
from r21d.spec import ModelSpec

FORMATS = ("jsonl", "csv", "parquet")
DEFAULT_TOP_K = 5
"""Labels per record unless ``--top-k`` says otherwise (fewer for a model with fewer classes)."""
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

CSV_LINE_END = "\r\n"
"""RFC 4180's row end: the csv module then quotes every field holding a CR or an LF."""
SURROGATE = re.compile("[\ud800-\udfff]")

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


def top_k_for(requested: int | None, spec: ModelSpec, model: str) -> int:
    """Labels per record: ``--top-k`` if given (1 to the class count, else a
    :class:`BadOptionError` naming the flag), else :data:`DEFAULT_TOP_K` or the class count,
    whichever is smaller."""
    classes = spec.num_classes
    if requested is None:
        return min(DEFAULT_TOP_K, classes)
    if requested < 1:
        raise BadOptionError(f"--top-k must be >= 1, got {requested}")
    if requested > classes:
        raise BadOptionError(
            f"--top-k {requested}: {model} has {classes} classes; give --top-k {classes} or less"
        )
    return requested


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


def csv_top_k(columns: list[str]) -> int | None:
    """The top-k whose :func:`csv_columns` ``columns`` are, ``None`` for other columns."""
    k = (len(columns) - 2 - len(SCORE_FIELDS)) // 2
    return k if k >= 1 and list(columns) == csv_columns(k) else None


def json_line(record: dict) -> str:
    """``record`` as one JSON line, valid UTF-8 whatever it holds: lone surrogates (the
    bytes of a file name that is not UTF-8) become ``\\udcXX`` escapes."""
    text = json.dumps(record, ensure_ascii=False)
    return SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _csv_row(record: dict, columns: list[str]) -> dict:
    row = {k: v for k, v in record.items() if k != "top_k"}
    for rank, entry in enumerate(record.get("top_k", []), start=1):
        row[f"label_{rank}"], row[f"prob_{rank}"] = entry["label"], entry["prob"]
    return {c: "" if row.get(c) is None else row.get(c) for c in columns}


def _csv_rows(text: str) -> tuple[list[list[str]], int]:
    """The complete rows of CSV ``text`` and the length of the text they span; a last row cut
    short by a kill (no row end yet, or inside a quoted field) is not one of them."""
    ends, consumed = [0], 0

    def lines():
        nonlocal consumed
        for line in text.split("\n")[:-1]:  # a tail without its line end is no row
            consumed += len(line) + 1
            yield line + "\n"

    rows = []
    try:
        for row in csv.reader(lines(), strict=True):
            rows.append(row)
            ends.append(consumed)
    except csv.Error:
        if consumed < text.rfind("\n") + 1:  # not at the end: not a CSV that r21d wrote
            raise ValueError(f"row {len(rows) + 1}") from None
        # else the text ends inside a quoted field: half a row
    return rows, ends[-1]


class RecordFile:
    """An append-only JSONL or CSV file of per-video records, resumed when it exists.

    ``done`` holds the paths recorded and ``records`` the records read back at open.
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
            self._lock(self._file)
            if overwrite:
                self._file.truncate(0)
            self.records = self._read_and_repair()
        except BaseException:
            self._file.close()
            raise
        self.done = {r["path"] for r in self.records}
        if fmt == "csv" and self._file.tell() == 0:
            self._append(self._header())

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
            line = json_line(record)
        else:
            line = self._csv_line(_csv_row(record, self.columns))
        self._append(line)
        self.done.add(record["path"])

    def remove(self, paths: set[str]) -> list[dict]:
        """Drop the records (read at open) of ``paths``; return the records dropped.

        The file is rewritten beside itself and renamed over the old one, so a kill leaves
        either; the new file is locked before the rename, so the lock never lapses.
        """
        dropped = [r for r in self.records if r["path"] in paths]
        if not dropped:
            return []
        kept = [r for r in self.records if r["path"] not in paths]
        if self.fmt == "jsonl":
            text = "".join(json_line(r) for r in kept)
        else:
            text = self._header() + "".join(self._csv_line(_csv_row(r, self.columns)) for r in kept)
        new = None
        try:
            with atomic_file(self.path) as tmp:
                new = open(tmp, "a+b")  # noqa: SIM115 (becomes self._file)
                self._lock(new)
                new.write(text.encode("utf-8", "surrogateescape"))
                new.flush()
                os.fsync(new.fileno())
        except BaseException:
            if new is not None:
                new.close()
            raise
        self._file.close()
        self._file = new
        _sync_folder(self.path.parent)
        self.records = kept
        self.done = {r["path"] for r in kept}
        return dropped

    def _append(self, text: str) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(text.encode("utf-8", "surrogateescape"))  # any file name round-trips
        self._file.flush()
        os.fsync(self._file.fileno())

    def _header(self) -> str:
        return self._csv_line(dict(zip(self.columns, self.columns, strict=True)))

    def _csv_line(self, row: dict) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator=CSV_LINE_END)
        writer.writerow(row)
        return buffer.getvalue()

    def _lock(self, file) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"{self.path} is being written by another run (it holds the file lock)"
            ) from None

    def _read_and_repair(self) -> list[dict]:
        """Records in the file; a last record cut short (a killed write) is cut off."""
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "surrogateescape")
        if self.fmt == "jsonl":
            complete = text[: text.rfind("\n") + 1]
            records = self._parse_jsonl(complete)
        else:
            try:
                rows, end = _csv_rows(text)
            except ValueError as e:
                raise self._foreign(str(e)) from None
            complete = text[:end]
            records = self._parse_csv(rows)
        if len(complete) != len(text):
            self._file.truncate(len(complete.encode("utf-8", "surrogateescape")))
        return records

    def _foreign(self, where: str) -> BadOptionError:
        return BadOptionError(
            f"{self.path}, {where}: not a record written by r21d; use another output file or "
            "--overwrite"
        )

    def _parse_jsonl(self, text: str) -> list[dict]:
        records = []
        for number, line in enumerate(text.split("\n")[:-1], start=1):  # LF ends a record
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or "path" not in record:
                raise self._foreign(f"line {number}")
            records.append(record)
        return records

    def _parse_csv(self, rows: list[list[str]]) -> list[dict]:
        if not rows:
            return []
        header, *rows = rows
        if header != self.columns:
            theirs, ours = csv_top_k(header), csv_top_k(self.columns)
            if theirs is None:
                shown = ",".join(name[:40] for name in header[:3])
                raise BadOptionError(
                    f"{self.path} is not a CSV of r21d score records (its header starts "
                    f"{shown!r}); use another output file or --overwrite"
                )
            raise BadOptionError(
                f"{self.path} has the columns of --top-k {theirs}, this run writes --top-k "
                f"{ours}; use --top-k {theirs}, another output file or --overwrite"
            )
        for number, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise self._foreign(f"row {number}")
        return [dict(zip(header, row, strict=True)) for row in rows]


def _sync_folder(folder: Path) -> None:
    """Force a rename in ``folder`` to disk (it then survives a power cut)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
    ``status`` (what resuming needs), ``done`` the paths; :meth:`remove` rewrites the parts
    that hold some paths (each replaced atomically).
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
            self.records += pq.read_table(part, columns=["path", "status"]).to_pylist()
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

    def remove(self, paths: set[str]) -> list[dict]:
        """Drop the records of ``paths`` from the parts; return the records dropped."""
        import pyarrow as pa
        import pyarrow.compute as pc

        dropped = [r for r in self.records if r["path"] in paths]
        if not dropped:
            return []
        value_set = pa.array(sorted(paths), pa.string())
        for part in self._parts():
            table = self._pq.read_table(part)
            hit = pc.is_in(table.column("path"), value_set=value_set)
            if not pc.any(hit).as_py():
                continue
            kept = table.filter(pc.invert(hit))
            if kept.num_rows:
                self._write_part(kept, part.name)
            else:
                part.unlink()
                _sync_folder(self.path)
        self.records = [r for r in self.records if r["path"] not in paths]
        self.done = {r["path"] for r in self.records}
        return dropped

    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def _commit(self) -> None:
        if not self._pending:
            return
        parts = self._parts()
        number = int(parts[-1].name[5:11]) + 1 if parts else 0
        self._write_part(records_table(self._pending), f"part-{number:06d}.parquet")
        self.records += [{"path": r["path"], "status": r.get("status")} for r in self._pending]
        self._pending = []
        self._journal.clear()

    def _write_part(self, table, name: str) -> None:
        """Write ``table`` as the part ``name``: under a temporary name, forced to disk, then
        renamed (the rename forced to disk too)."""
        tmp = self.path / f"_{name}.tmp"
        self._pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.path / name)
        _sync_folder(self.path)


def open_record_file(
    path: str | Path, fmt: str, *, columns: list[str] | None = None, overwrite: bool = False
) -> RecordFile | ParquetRecordFile:
    """The record writer for ``fmt``: a :class:`RecordFile` (jsonl, csv) or a
    :class:`ParquetRecordFile` (parquet, a folder)."""
    if fmt == "parquet":
        return ParquetRecordFile(path, overwrite=overwrite)
    return RecordFile(path, fmt, columns=columns, overwrite=overwrite)


STEM_CHARS = 80
"""Characters of a video's stem kept in its feature file's name (names stay under 255 bytes)."""


def feature_file_name(video_path: str) -> str:
    """``<stem>_<10 hex digits of the path's SHA-1>.npz``: unique per path, readable by stem
    (its first :data:`STEM_CHARS` characters, with control characters and bytes that are not
    UTF-8 as ``_``)."""
    digest = hashlib.sha1(video_path.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    stem = "".join(c if c.isprintable() else "_" for c in Path(video_path).stem[:STEM_CHARS])
    return f"{stem}_{digest}.npz"


def save_features(directory: str | Path, video_path: str, clip_features: np.ndarray) -> str:
    """Write a video's clip features and their mean atomically; return the file name.

    The ``.npz`` holds ``clip_features`` (K, D) float32 and ``video_feature`` (D,) float32,
    their mean; ``np.load`` reads it without pickle.
    """
    name = feature_file_name(video_path)
    clip_features = np.asarray(clip_features, dtype=np.float32)
    with atomic_file(Path(directory) / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, clip_features=clip_features, video_feature=clip_features.mean(axis=0))
    return name
