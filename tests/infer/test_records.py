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


def test_a_csv_row_cut_inside_a_quoted_newline_is_cut_off(tmp_path):
    from r21d.infer.records import RecordFile, csv_columns

    path = tmp_path / "r.csv"
    odd = '/v/two\nlines,\r"q".mp4'
    with RecordFile(path, "csv", columns=csv_columns(1)) as out:
        out.write({"path": odd, "status": "ok", "top_k": [{"label": "a", "prob": 0.5}]})
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a kill inside the quoted path of the next row
        f.write(b'"/v/next\nhalf')
    with RecordFile(path, "csv", columns=csv_columns(1)) as out:
        assert out.done == {odd} and path.read_bytes() == whole
        out.write({"path": "/v/next.mp4", "status": "error", "error": "broken"})
    with RecordFile(path, "csv", columns=csv_columns(1)) as out:
        assert [r["path"] for r in out.records] == [odd, "/v/next.mp4"]
        assert out.records[0]["label_1"] == "a" and out.records[1]["error"] == "broken"


def test_a_csv_of_another_top_k_is_refused_in_a_short_line(tmp_path):
    from r21d.errors import BadOptionError
    from r21d.infer.records import RecordFile, csv_columns

    path = tmp_path / "r.csv"
    RecordFile(path, "csv", columns=csv_columns(100_000)).close()
    with pytest.raises(BadOptionError) as e:
        RecordFile(path, "csv", columns=csv_columns(3))
    assert str(e.value) == (
        f"{path} has the columns of --top-k 100000, this run writes --top-k 3; use --top-k "
        "100000, another output file or --overwrite"
    )
    path.write_text("name,size\na.mp4,3\n")
    with pytest.raises(BadOptionError, match=r"not a CSV of r21d score records .* 'name,size'"):
        RecordFile(path, "csv", columns=csv_columns(3))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_removing_records_rewrites_the_file_and_keeps_the_lock(tmp_path, fmt):
    from r21d.errors import OutputInUseError
    from r21d.infer.records import RecordFile, csv_columns

    path = tmp_path / f"r.{fmt}"
    columns = csv_columns(1) if fmt == "csv" else None
    with RecordFile(path, fmt, columns=columns) as out:
        for i in range(4):
            out.write(_record(i, "error" if i % 2 else "ok"))
    with RecordFile(path, fmt, columns=columns) as out:
        dropped = out.remove({"/videos/v1.mp4", "/videos/v3.mp4", "/videos/v9.mp4"})
        assert [r["path"] for r in dropped] == ["/videos/v1.mp4", "/videos/v3.mp4"]
        assert out.done == {"/videos/v0.mp4", "/videos/v2.mp4"}
        with pytest.raises(OutputInUseError):  # the rewritten file is still locked
            RecordFile(path, fmt, columns=columns)
        out.write(_record(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    with RecordFile(path, fmt, columns=columns) as out:
        assert [r["path"] for r in out.records] == [f"/videos/v{i}.mp4" for i in (0, 2, 1)]


def test_removing_records_from_parquet_parts(tmp_path):
    folder = tmp_path / "out.parquet"
    with ParquetRecordFile(folder, part_rows=2) as out:
        for i in range(5):
            out.write(_record(i, "error" if i in (2, 3, 4) else "ok"))
    with ParquetRecordFile(folder) as out:
        errors = {r["path"] for r in out.records if r["status"] == "error"}
        assert len(out.remove(errors)) == 3
        assert out.done == {"/videos/v0.mp4", "/videos/v1.mp4"}
        out.write(_record(3))
    assert sorted(_paths(folder)) == [f"/videos/v{i}.mp4" for i in (0, 1, 3)]
    assert not list(folder.glob("_part-*"))
