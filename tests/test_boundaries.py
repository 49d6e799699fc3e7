"""Architecture: analysis/ never imports streamlit or prints; pages never import torch; caching in one place."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_analysis_never_imports_streamlit_or_prints():
    for file in (ROOT / "analysis").rglob("*.py"):
        assert "streamlit" not in imported_modules(file), file
        if file.name == "__main__.py":
            continue  # the CLIs are the terminal edge
        calls = [n for n in ast.walk(ast.parse(file.read_text())) if isinstance(n, ast.Call)]
        assert not any(isinstance(c.func, ast.Name) and c.func.id == "print" for c in calls), file


def test_pages_never_import_torch_and_cache_only_in_cache_py():
    files = [ROOT / "app.py", *(ROOT / "pages").rglob("*.py")]
    for file in files:
        if not file.exists():
            continue
        assert "torch" not in imported_modules(file), file
        if file.name != "cache.py":
            assert "cache_data" not in file.read_text() and "cache_resource" not in file.read_text(), file
