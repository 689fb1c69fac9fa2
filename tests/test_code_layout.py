"""docs/design.md's "Code layout" names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_section() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    return text.split("## Code layout", 1)[1].split("\n## ", 1)[0]


def test_every_module_has_its_line_in_the_code_layout():
    named = set(re.findall(r"`(vastpanel/[\w/.]+)`", layout_section()))
    modules = {f"vastpanel/{p.name}" for p in (ROOT / "vastpanel").glob("*.py")}
    packages = {f"vastpanel/{p.parent.name}/" for p in (ROOT / "vastpanel").glob("*/__init__.py")}
    assert modules | packages == named


def test_every_top_level_path_named_exists():
    for path in re.findall(r"^\| `([^`]+)`", layout_section(), re.M):
        if not path.startswith("vastpanel/"):
            assert (ROOT / path.rstrip("/")).exists(), path
