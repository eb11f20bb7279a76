"""Run the notebooks and keep them in a stable, reviewable form.

The notebooks in ``notebooks/`` are committed *with* their outputs (text and matplotlib PNGs),
executed top to bottom, and without volatile metadata: no execution timestamps, no
kernel-specific metadata beyond the kernelspec (no ``language_info``), no widget state, no
per-cell metadata except ``tags``. ``tests/test_notebooks.py`` runs each notebook again and
checks that the fresh outputs have the committed structure.

Refresh after editing a notebook (or after a change that alters its outputs)::

    .venv/bin/python tools/strip_notebook.py --execute notebooks/06_mining_pairs.ipynb
    .venv/bin/python tools/strip_notebook.py --execute notebooks/*.ipynb     # all of them

``--execute`` runs each notebook in a fresh kernel whose working directory is an empty
temporary folder (as the test does), prints the time it took, normalises it and writes it
back. Without ``--execute`` the files are only normalised (e.g. after saving from Jupyter);
``--check`` changes nothing and exits 1 when a file is not in normalised form or was not
executed top to bottom.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
CELL_METADATA_KEPT = ("tags",)
OUTPUT_KEYS_DROPPED = ("transient",)


def normalise(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without volatile metadata (see the module docstring)."""
    nb = copy.deepcopy(nb)
    nb.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC)})
    for cell in nb.cells:
        kept = {k: v for k, v in cell.metadata.items() if k in CELL_METADATA_KEPT}
        cell.metadata = nbformat.from_dict(kept)
        if "attachments" in cell and not cell.attachments:
            del cell["attachments"]
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.outputs:
            for key in OUTPUT_KEYS_DROPPED:
                out.pop(key, None)
            data = out.get("data")
            if data is not None and "application/vnd.jupyter.widget-view+json" in data:
                continue  # a widget's view means nothing without the widget state
            outputs.append(out)
        cell.outputs = outputs
    return nb


def execute(nb: nbformat.NotebookNode, cwd: str | os.PathLike, *, env: dict | None = None,
            timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a new python3 kernel working in ``cwd``; returns the
    executed copy. Streams of one name are merged per cell (how often a print is flushed
    does not change the outputs' structure) and IPython's history stays in memory."""
    import nbclient

    nb = copy.deepcopy(nb)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute(env={**os.environ, **(env or {})})
    return nb


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """Why ``nb`` is not a committed notebook: not normalised, or not executed top to bottom."""
    found = []
    if nbformat.writes(normalise(nb)) != nbformat.writes(nb):
        found.append("volatile metadata (run tools/strip_notebook.py on it)")
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    if counts != list(range(1, len(counts) + 1)):
        found.append(f"not executed top to bottom (execution counts {counts})")
    errors = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    if errors:
        found.append(f"error outputs in cells {errors}")
    return found


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true",
                      help="run each notebook first (in an empty temporary folder)")
    mode.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file needs work")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = parser.parse_args(argv)
    status = 0
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if args.check:
            found = problems(nb)
            if path.read_text(encoding="utf-8") != nbformat.writes(nb) + "\n":
                found.append("not in nbformat's layout (run tools/strip_notebook.py on it)")
            for p in found:
                print(f"{path}: {p}")
            status |= bool(found)
            continue
        if args.execute:
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="notebook-cwd-") as cwd:
                nb = execute(nb, cwd, timeout=args.timeout)
                left = sorted(os.listdir(cwd))
            print(f"{path}: ran in {time.monotonic() - t0:.1f} s")
            if left:
                print(f"{path}: wrote into its working directory: {left}", file=sys.stderr)
                status = 1
        nb = normalise(nb)
        for p in problems(nb):
            print(f"{path}: {p}", file=sys.stderr)
            status = 1
        write(nb, path)
    return status


if __name__ == "__main__":
    sys.exit(main())
