"""Every import points down: core <- infer, export <- train, benchmarks (DESIGN.md s.1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {  # import name -> folder
    "r21d": REPO / "r21d",
    "r21d.infer": REPO / "infer",
    "r21d.export": REPO / "export",
    "r21d.train": REPO / "train",
    "r21d.benchmarks": REPO / "benchmarks",
}
FORBIDDEN = {  # a package may not import these
    "r21d": ("r21d.infer", "r21d.export", "r21d.train", "r21d.benchmarks"),
    "r21d.infer": ("r21d.export", "r21d.train", "r21d.benchmarks"),
    "r21d.export": ("r21d.infer", "r21d.train", "r21d.benchmarks"),
    "r21d.train": ("r21d.benchmarks",),
    "r21d.benchmarks": ("r21d.train",),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", list(PACKAGES))
def test_imports_point_down(package):
    files = sorted(PACKAGES[package].rglob("*.py"))
    assert files, package
    upward = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package])
    }
    assert not upward, sorted(upward)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from r21d.export.onnx import export_onnx\n")
    assert "r21d.export.onnx" in imported_modules(source)
