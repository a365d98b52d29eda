"""The cells every notebook starts with, written from ``celeba_vae.runtime.REPO_URL`` and ``REPO_REF``.

* an "Open in Colab" / "Open in Kaggle" badge cell (id ``open-in``), first, once the project is published
  (``REPO_URL`` is not the ``YOUR-ACCOUNT`` placeholder): a learner never meets a link that leads nowhere;
* the setup cell (id ``setup``), the first code cell, hidden as each front end hides code (Jupyter's
  ``source_hidden``, Colab's ``# @title`` form, Kaggle's ``_kg_hide-input``): it finds the repository root (the
  working folder, a folder above it, a clone in ``./celeba-vae``, or where ``helper_setup`` imports from),
  otherwise ``git clone``s ``$CELEBA_VAE_REPO`` (default ``REPO_URL``) at ``$CELEBA_VAE_REF`` (default
  ``REPO_REF``) into ``./celeba-vae`` (a failure says why and what to do, in two lines), puts the root on
  ``sys.path`` once and calls :func:`celeba_vae.runtime.prepare` and :func:`~celeba_vae.runtime.report_device`
  (which names the device, nothing more); the same cell in every notebook.

``python -m celeba_vae.notebook_cells`` writes both into every notebook in ``notebooks/`` (in place, only where
they changed) and the links between the README's ``notebook-links`` markers; ``--check`` only reports. A fork
publishes its copy with one command, ``python -m celeba_vae.notebook_cells --url https://github.com/OWNER/NAME``
(``--ref`` for a branch, tag or commit other than ``main``): it sets ``REPO_URL`` and ``REPO_REF`` in
``celeba_vae/runtime.py`` and rewrites the notebooks and the README from them.
"""

from __future__ import annotations

import argparse
import copy
import re
import string
from pathlib import Path

import nbformat

from celeba_vae.atomic_files import atomic_write
from celeba_vae.paths import REPO_ROOT
from celeba_vae.runtime import CLONE_FOLDER, PLACEHOLDER_URL, REF_ENV, REPO_ENV, REPO_REF, REPO_URL

BADGE_ID, SETUP_ID = "open-in", "setup"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KAGGLE_BADGE = "https://kaggle.com/static/images/open-in-kaggle.svg"
README_START, README_END = "<!-- notebook-links:start -->", "<!-- notebook-links:end -->"
HIDDEN = {"jupyter": {"source_hidden": True}, "cellView": "form", "_kg_hide-input": True}

SETUP_CELL = string.Template("""\
# @title Setup: finds or fetches the project, installs what is missing, prints the GPU
# (the code is hidden: click to show it). Running it again does nothing new.
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path


class SetupStopped(Exception):
    def _render_traceback_(self):  # Jupyter shows the message alone, without a traceback
        return [str(self)]


here, installed = Path.cwd(), importlib.util.find_spec("helper_setup")
candidates = (here, *here.parents, here / "$clone")
found = [p for p in candidates if (p / "helper_setup.py").is_file()]
found += [Path(installed.origin).parent] if installed else []
project_root = found[0] if found else here / "$clone"
if not found:
    url = os.environ.get("$repo_env")
    url = url or "$url"
    ref = os.environ.get("$ref_env") or "$ref"
    for git in (["clone", "--quiet", url, str(project_root)],
                ["-C", str(project_root), "checkout", "--quiet", ref]):
        done = subprocess.run(["git", *git], capture_output=True, text=True, check=False)
        if done.returncode:
            shutil.rmtree(project_root, ignore_errors=True)
            why = (done.stderr.strip().splitlines() or [f"git {git[0]} failed"])[-1]
            if "YOUR-ACCOUNT" in url:
                why = "that URL is the placeholder of a project not yet published"
            raise SetupStopped(
                f"Could not fetch the project from {url} ({ref}): {why}.\\n"
                "To go on: set os.environ['$repo_env'] to its git URL (on "
                "Kaggle with Internet on), upload the repository as ./$clone, or "
                "run the notebooks locally; then run this cell again.")
if str(project_root) not in sys.path:
    sys.path.insert(0, str(project_root))
runtime = importlib.import_module("celeba_vae.runtime")
if runtime.prepare(project_root):
    runtime.report_device()""")


def published(url: str = REPO_URL) -> bool:
    """Whether ``url`` is the project's real address, not the ``YOUR-ACCOUNT`` placeholder."""
    return url != PLACEHOLDER_URL


def setup_cell(url: str = REPO_URL, ref: str = REPO_REF) -> str:
    """The setup cell's source, the same in every notebook."""
    return SETUP_CELL.substitute(clone=CLONE_FOLDER, repo_env=REPO_ENV, ref_env=REF_ENV, url=url, ref=ref)


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


def badges(notebook: str, url: str = REPO_URL, ref: str = REPO_REF) -> str:
    """The badge cell's Markdown: Open in Colab, Open in Kaggle."""
    colab, kaggle = notebook_links(notebook, url, ref)
    return (f"[![Open In Colab]({COLAB_BADGE})]({colab}) [![Open In Kaggle]({KAGGLE_BADGE})]({kaggle})\n\n"
            "In Colab or on Kaggle the first code cell fetches the project; see the README's \"In Colab\" and "
            "\"On Kaggle\".")


def with_setup_cells(book: nbformat.NotebookNode, notebook: str, url: str = REPO_URL,
                     ref: str = REPO_REF) -> nbformat.NotebookNode:
    """A copy of ``book`` with the badge cell first (only once ``url`` is published) and the hidden setup cell
    before its first other code cell; both are replaced where they already are, so applying this twice gives the
    same notebook."""
    if (book.nbformat, book.nbformat_minor) < (4, 5):
        raise ValueError(f"{notebook} is nbformat {book.nbformat}.{book.nbformat_minor}; cell ids need 4.5: open "
                         "and save it in a current Jupyter first")
    book = copy.deepcopy(book)
    cells = [cell for cell in book.cells if cell.get("id") not in (BADGE_ID, SETUP_ID)]
    first_code = next((i for i, cell in enumerate(cells) if cell.cell_type == "code"), len(cells))
    setup = nbformat.v4.new_code_cell(setup_cell(url, ref), id=SETUP_ID, metadata=copy.deepcopy(HIDDEN))
    cells.insert(first_code, setup)
    badge = [nbformat.v4.new_markdown_cell(badges(notebook, url, ref), id=BADGE_ID)] if published(url) else []
    book.cells = [*badge, *cells]
    return book


def update_notebook(path: str | Path, write: bool = True, url: str = REPO_URL, ref: str = REPO_REF) -> bool:
    """Whether ``path`` lacked the current badge or setup cell; with ``write`` it is rewritten (atomically) then."""
    path = Path(path)
    book = nbformat.read(path, as_version=4)
    updated = with_setup_cells(book, path.name, url, ref)
    if updated == book:
        return False
    if write:
        atomic_write(path, lambda file: file.write((nbformat.writes(updated) + "\n").encode()))
    return True


def links_table(notebooks: list[str], url: str = REPO_URL, ref: str = REPO_REF) -> str:
    """The README's Markdown table of Colab and Kaggle links, one row per notebook; until ``url`` is published,
    a line saying how to publish instead."""
    if not published(url):
        return ("The Open-in-Colab and Kaggle links appear here once the project is published: "
                "`python -m celeba_vae.notebook_cells --url https://github.com/OWNER/NAME`.")
    rows = ["| notebook | Colab | Kaggle |", "|---|---|---|"]
    for notebook in notebooks:
        colab, kaggle = notebook_links(notebook, url, ref)
        rows.append(f"| `{notebook}` | [![Open In Colab]({COLAB_BADGE})]({colab}) | "
                    f"[![Open In Kaggle]({KAGGLE_BADGE})]({kaggle}) |")
    return "\n".join(rows)


def update_readme(path: str | Path, notebooks: list[str], write: bool = True, url: str = REPO_URL,
                  ref: str = REPO_REF) -> bool:
    """Whether the block between the ``notebook-links`` markers of ``path`` was out of date (rewritten with
    ``write``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if pattern.search(text) is None:
        raise ValueError(f"{path} has no {README_START} ... {README_END} block for the notebook links")
    updated = pattern.sub(lambda _: f"{README_START}\n{links_table(notebooks, url, ref)}\n{README_END}", text,
                          count=1)
    if updated == text:
        return False
    if write:
        atomic_write(path, lambda file: file.write(updated.encode("utf-8")))
    return True


def set_repository(url: str, ref: str, runtime_source: Path) -> None:
    """Write ``url`` and ``ref`` as ``REPO_URL`` and ``REPO_REF`` into ``runtime_source`` (checked first)."""
    github_repository(url)
    text = updated = runtime_source.read_text(encoding="utf-8")
    for name, value in (("REPO_URL", url), ("REPO_REF", ref)):
        updated, count = re.subn(rf'^{name} = "[^"]*"', f'{name} = "{value}"', updated, count=1, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f'{runtime_source} has no line {name} = "..." to set')
    if updated != text:
        atomic_write(runtime_source, lambda file: file.write(updated.encode("utf-8")))


def main(argv: list[str] | None = None, root: Path = REPO_ROOT) -> int:
    """Write the badge and setup cells into every notebook under ``root`` and the links into its README;
    ``--url`` (and ``--ref``) first sets the repository everything is built from; ``--check`` only lists what is
    out of date (exit status 1 when anything is)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is out of date")
    parser.add_argument("--url", help="publish under this https://github.com/OWNER/NAME (sets REPO_URL)")
    parser.add_argument("--ref", help=f"the branch, tag or commit the setup cell checks out (now {REPO_REF!r})")
    args = parser.parse_args(argv)
    url, ref = args.url or REPO_URL, args.ref or REPO_REF
    if args.check and (args.url or args.ref):
        parser.error("--check changes nothing: give --url/--ref without --check")
    if args.url or args.ref:
        try:
            set_repository(url, ref, root / "celeba_vae" / "runtime.py")
        except ValueError as err:
            parser.error(str(err))
    paths = sorted((root / "notebooks").glob("*.ipynb"))
    stale = [p for p in paths if update_notebook(p, not args.check, url, ref)]
    if update_readme(root / "README.md", [p.name for p in paths], not args.check, url, ref):
        stale.append(root / "README.md")
    for path in stale:
        print(f"{'out of date' if args.check else 'updated'}: {path.relative_to(root)}")
    return int(bool(stale) and args.check)


if __name__ == "__main__":
    raise SystemExit(main())
