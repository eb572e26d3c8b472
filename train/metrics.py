"""Metrics of a run as JSON lines (``metrics.jsonl``), one object per logged step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends metric records to a JSONL file; a disabled log (ranks other than 0) drops them."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run redoes those steps)."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text("utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    text = Path(path).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
