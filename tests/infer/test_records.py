"""Parquet record folders: committed parts, the journal, and resuming after a kill."""

from __future__ import annotations

import pytest

from r21d.infer.records import ParquetRecordFile, open_record_file, output_format

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (r21d[ray])")


def _record(i: int, status: str = "ok") -> dict:
    return {
        "path": f"/videos/v{i}.mp4",
        "status": status,
        "top_k": [{"index": 1, "label": "b", "prob": 0.5}] if status == "ok" else [],
        "clips": 10,
        "frames_decoded": 80,
        "duration": None if i % 2 else 3.2,
        "short": False,
        "decode_s": 0.1,
        "model_s": 0.2,
        "model": "m.onnx",
        "error": None if status == "ok" else "broken",
    }


def _paths(folder) -> list[str]:
    return pq.read_table(folder).column("path").to_pylist()


def test_parts_are_committed_every_part_rows_and_on_close(tmp_path):
    folder = tmp_path / "out.parquet"
    assert output_format(folder) == "parquet"
    with ParquetRecordFile(folder, part_rows=2) as out:
        for i in range(5):
            out.write(_record(i, "error" if i == 3 else "ok"))
        assert [p.name for p in sorted(folder.glob("part-*"))] == [
            "part-000000.parquet",
            "part-000001.parquet",
        ]
    assert len(list(folder.glob("part-*"))) == 3
    table = pq.read_table(folder)
    assert sorted(table.column("path").to_pylist()) == [f"/videos/v{i}.mp4" for i in range(5)]
    rows = {r["path"]: r for r in table.to_pylist()}
    assert rows["/videos/v3.mp4"]["error"] == "broken" and rows["/videos/v3.mp4"]["top_k"] == []
    assert rows["/videos/v0.mp4"]["top_k"] == [{"index": 1, "label": "b", "prob": 0.5}]
    assert rows["/videos/v1.mp4"]["duration"] is None


def test_a_kill_loses_nothing_written_and_duplicates_nothing(tmp_path):
    folder = tmp_path / "out.parquet"
    out = ParquetRecordFile(folder, part_rows=3)
    for i in range(4):  # one part of 3, one record only in the journal
        out.write(_record(i))
    journal = (folder / ParquetRecordFile.JOURNAL).read_bytes()
    out._journal.close()  # a kill: no close(), no last part
    # a kill between a part's rename and the journal's emptying: the journal repeats part 0
    first = pq.read_table(folder / "part-000000.parquet").to_pylist()
    (folder / ParquetRecordFile.JOURNAL).write_bytes(
        b"".join(_json_line(r) for r in first) + journal + b'{"path": "/videos/half'
    )
    (folder / "_part-000009.parquet.tmp").write_bytes(b"half a part")

    with open_record_file(folder, "parquet") as again:
        assert again.done == {f"/videos/v{i}.mp4" for i in range(4)}
        assert {r["status"] for r in again.records} == {"ok"}
        again.write(_record(4))
    assert sorted(_paths(folder)) == [f"/videos/v{i}.mp4" for i in range(5)]  # each once
    assert not list(folder.glob("_part-*"))

    with open_record_file(folder, "parquet", overwrite=True) as fresh:
        assert fresh.done == set()
    assert not list(folder.glob("part-*"))


def test_a_parquet_folder_is_locked_and_a_file_is_refused(tmp_path):
    from r21d.errors import BadOptionError, OutputInUseError

    with ParquetRecordFile(tmp_path / "a.parquet"), pytest.raises(OutputInUseError):
        ParquetRecordFile(tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_text("a file")
    with pytest.raises(BadOptionError, match="not a folder"):
        ParquetRecordFile(tmp_path / "b.parquet")


def _json_line(record: dict) -> bytes:
    import json

    return (json.dumps(record) + "\n").encode()
