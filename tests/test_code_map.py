"""The README's code map, the package's README and pyproject's module list name exactly the modules on disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL = sorted(p.name for p in REPO.glob("*.py"))
PACKAGE = sorted(p.name for p in (REPO / "celeba_vae").glob("*.py") if p.name != "__init__.py")
MAP_HEADING = "## The code"


def named_files(text: str) -> set[str]:
    """Every ``name.py`` a Markdown text names in backticks (with or without a folder)."""
    return {Path(name).name for name in re.findall(r"`([\w/]+\.py)`", text)}


def code_map() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index(MAP_HEADING)
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end != -1 else None]


def test_the_code_map_comes_right_after_the_two_commands() -> None:
    headings = re.findall(r"^## .*$", (REPO / "README.md").read_text(), flags=re.MULTILINE)
    assert headings[:2] == ["## Two commands", MAP_HEADING], headings


def test_the_code_map_names_every_module_and_no_other() -> None:
    assert TOP_LEVEL and PACKAGE
    assert named_files(code_map()) == set(TOP_LEVEL) | set(PACKAGE)


def test_the_code_map_marks_the_lectures_files_what_goes_beyond_and_the_machinery() -> None:
    text = code_map()
    marks = [text.index(mark) for mark in ("**The lecture's parts**", "**Beyond the lecture**", "**Machinery**")]
    assert marks == sorted(marks)
    assert named_files(text[marks[0]:marks[1]]) >= {"model.py", "helper_train.py", "helper_data.py"}
    assert named_files(text[marks[2]:]) == set(PACKAGE)


def test_the_package_readme_has_one_line_per_module() -> None:
    lines = (REPO / "celeba_vae" / "README.md").read_text().splitlines()
    described = [named_files(line) for line in lines if line.startswith(("- ", "| "))]
    assert sorted(name for names in described for name in names) == PACKAGE


def test_pyproject_installs_every_top_level_module() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(f"{name}.py" for name in setuptools["py-modules"]) == TOP_LEVEL
    assert setuptools["packages"] == ["celeba_vae"]
