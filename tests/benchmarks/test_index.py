"""The results index: headlines kept from earlier runs, and the plain GPU statement."""

from __future__ import annotations

from r21d.benchmarks.machine import machine_info
from r21d.benchmarks.report import Report, write_report
from r21d.benchmarks.run_all import gpu_results_line, saved_line


def test_gpu_line_says_no_gpu_figure_until_a_gpu_run_left_an_index(tmp_path):
    assert "**No GPU figure exists yet**" in gpu_results_line(tmp_path)
    (tmp_path / "gpu-h200" / "check").mkdir(parents=True)
    assert "No GPU figure" in gpu_results_line(tmp_path)  # an empty folder is no result
    (tmp_path / "gpu-h200" / "check" / "index.md").write_text("# r21d GPU check\n")
    assert gpu_results_line(tmp_path) == "GPU results: [gpu-h200/check](gpu-h200/check/index.md).\n"


def test_a_report_left_by_an_earlier_run_keeps_its_headline(tmp_path):
    assert saved_line(tmp_path, "accuracy") is None
    best = {"top1": 1.0, "clips": 10, "resize": "short_edge", "head": "fc"}
    report = Report("accuracy", "Accuracy", {}, summary={"best": best})
    machine = machine_info()
    write_report(report, tmp_path, machine)
    line = saved_line(tmp_path, "accuracy")
    assert line["report"] == "[accuracy.md](accuracy.md)"
    assert (
        line["result"] == f"best top-1 1 (10 clips, short_edge, fc) (from {machine['timestamp']})"
    )
