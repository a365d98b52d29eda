"""The cells every notebook starts with, written from ``celeba_vae.runtime.REPO_URL`` and ``REPO_REF``.

* an "Open in Colab" / "Open in Kaggle" badge cell (id ``open-in``), first;
* the setup cell (id ``setup``), the first code cell: it finds the repository root (the working folder, a folder
  above it, a clone in ``./celeba-vae``, or where ``helper_setup`` imports from), otherwise ``git clone``s
  ``$CELEBA_VAE_REPO`` (default ``REPO_URL``) at ``$CELEBA_VAE_REF`` (default ``REPO_REF``) into ``./celeba-vae``,
  puts the root on ``sys.path`` once and calls :func:`celeba_vae.runtime.prepare`.

``python -m celeba_vae.notebook_cells`` writes both into every notebook in ``notebooks/`` (in place, only where
they changed) and the links table between the README's ``notebook-links`` markers; ``--check`` only reports.
A fork changes ``REPO_URL`` (and ``REPO_REF``) in ``celeba_vae/runtime.py`` and runs it.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import nbformat

from celeba_vae.atomic_files import atomic_write
from celeba_vae.paths import REPO_ROOT
from celeba_vae.runtime import CLONE_FOLDER, REF_ENV, REPO_ENV, REPO_REF, REPO_URL

BADGE_ID, SETUP_ID = "open-in", "setup"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KAGGLE_BADGE = "https://kaggle.com/static/images/open-in-kaggle.svg"
README_START, README_END = "<!-- notebook-links:start -->", "<!-- notebook-links:end -->"

SETUP_CELL = f"""\
# Setup: makes the project's helpers importable (in Colab or on Kaggle it fetches the
# project first), installs only what is missing and prints the versions and the GPU.
# Running it again does nothing new.
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

here, installed = Path.cwd(), importlib.util.find_spec("helper_setup")
candidates = (here, *here.parents, here / "{CLONE_FOLDER}")
found = [p for p in candidates if (p / "helper_setup.py").is_file()]
found += [Path(installed.origin).parent] if installed else []
project_root = found[0] if found else here / "{CLONE_FOLDER}"
if not found:
    url = os.environ.get("{REPO_ENV}")
    url = url or "{REPO_URL}"
    ref = os.environ.get("{REF_ENV}") or "{REPO_REF}"
    subprocess.run(["git", "clone", "--quiet", url, project_root], check=True)
    subprocess.run(["git", "-C", project_root, "checkout", "--quiet", ref], check=True)
if str(project_root) not in sys.path:
    sys.path.insert(0, str(project_root))
importlib.import_module("celeba_vae.runtime").prepare(project_root)"""


def github_repository(url: str = REPO_URL) -> str:
    """``owner/name`` of a ``https://github.com/owner/name`` URL (what Colab and Kaggle links are built from)."""
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", url)
    if match is None:
        raise ValueError(f"REPO_URL={url!r} in celeba_vae/runtime.py is not https://github.com/OWNER/NAME: the "
                         "Open-in-Colab and Kaggle links need the project on GitHub")
    return f"{match[1]}/{match[2]}"


def notebook_links(notebook: str, url: str = REPO_URL, ref: str = REPO_REF) -> tuple[str, str]:
    """The Open-in-Colab and Open-in-Kaggle links of ``notebooks/<notebook>`` at ``ref``."""
    blob = f"{github_repository(url)}/blob/{ref}/notebooks/{notebook}"
    return (f"https://colab.research.google.com/github/{blob}",
            f"https://kaggle.com/kernels/welcome?src=https://github.com/{blob}")


def badges(notebook: str) -> str:
    """The badge cell's Markdown: Open in Colab, Open in Kaggle."""
    colab, kaggle = notebook_links(notebook)
    return (f"[![Open In Colab]({COLAB_BADGE})]({colab}) [![Open In Kaggle]({KAGGLE_BADGE})]({kaggle})\n\n"
            "In Colab or on Kaggle the first code cell fetches the project; see the README's \"In Colab\" and "
            "\"On Kaggle\".")


def with_setup_cells(book: nbformat.NotebookNode, notebook: str) -> nbformat.NotebookNode:
    """A copy of ``book`` with the badge cell first and the setup cell before its first other code cell; both are
    replaced where they already are, so applying this twice gives the same notebook."""
    if (book.nbformat, book.nbformat_minor) < (4, 5):
        raise ValueError(f"{notebook} is nbformat {book.nbformat}.{book.nbformat_minor}; cell ids need 4.5: open "
                         "and save it in a current Jupyter first")
    book = copy.deepcopy(book)
    cells = [cell for cell in book.cells if cell.get("id") not in (BADGE_ID, SETUP_ID)]
    first_code = next((i for i, cell in enumerate(cells) if cell.cell_type == "code"), len(cells))
    cells.insert(first_code, nbformat.v4.new_code_cell(SETUP_CELL, id=SETUP_ID))
    book.cells = [nbformat.v4.new_markdown_cell(badges(notebook), id=BADGE_ID), *cells]
    return book


def update_notebook(path: str | Path, write: bool = True) -> bool:
    """Whether ``path`` lacked the current badge or setup cell; with ``write`` it is rewritten (atomically) then."""
    path = Path(path)
    book = nbformat.read(path, as_version=4)
    updated = with_setup_cells(book, path.name)
    if updated == book:
        return False
    if write:
        atomic_write(path, lambda file: file.write((nbformat.writes(updated) + "\n").encode()))
    return True


def links_table(notebooks: list[str]) -> str:
    """The README's Markdown table of Colab and Kaggle links, one row per notebook."""
    rows = ["| notebook | Colab | Kaggle |", "|---|---|---|"]
    for notebook in notebooks:
        colab, kaggle = notebook_links(notebook)
        rows.append(f"| `{notebook}` | [![Open In Colab]({COLAB_BADGE})]({colab}) | "
                    f"[![Open In Kaggle]({KAGGLE_BADGE})]({kaggle}) |")
    return "\n".join(rows)


def update_readme(path: str | Path, notebooks: list[str], write: bool = True) -> bool:
    """Whether the table between the ``notebook-links`` markers of ``path`` was out of date (rewritten with
    ``write``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if pattern.search(text) is None:
        raise ValueError(f"{path} has no {README_START} ... {README_END} block for the notebook links")
    updated = pattern.sub(lambda _: f"{README_START}\n{links_table(notebooks)}\n{README_END}", text, count=1)
    if updated == text:
        return False
    if write:
        atomic_write(path, lambda file: file.write(updated.encode("utf-8")))
    return True


def main(argv: list[str] | None = None) -> int:
    """Write the badge and setup cells into every notebook and the links into the README; ``--check`` only lists
    what is out of date (exit status 1 when anything is)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    paths = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    stale = [p for p in paths if update_notebook(p, write=not args.check)]
    if update_readme(REPO_ROOT / "README.md", [p.name for p in paths], write=not args.check):
        stale.append(REPO_ROOT / "README.md")
    for path in stale:
        print(f"{'out of date' if args.check else 'updated'}: {path.relative_to(REPO_ROOT)}")
    return int(bool(stale) and args.check)


if __name__ == "__main__":
    raise SystemExit(main())
