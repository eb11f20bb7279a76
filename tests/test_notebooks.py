"""The notebooks in notebooks/: each runs top to bottom without an error, writes nothing into
the repository or its working directory, and gives outputs of the structure committed.

The notebooks are committed with their outputs (``tools/strip_notebook.py --execute`` runs
and normalises them; its docstring says how to refresh them). A fresh run here must match
them *in structure*: the same number of code cells, and per cell the same outputs in the same
order: their type (stream name for streams) and the MIME types of display data and results,
so a figure (image/png) where one was committed. The text itself is not compared: timings and
platform details vary.

Writes are watched in the kernel with an audit hook (``sys.addaudithook``, installed by an
IPython startup file before the first cell): any open-for-writing, mkdir, rename, remove, ...
of a path inside the repository or the kernel's working directory is a failure. Writes that
bypass Python's audit events (C extensions) are caught for the working directory (it must be
empty afterwards) and for notebooks/ (its files must not change).
"""

from __future__ import annotations

import importlib.util
import json
import os
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _load_tool():
    spec = importlib.util.spec_from_file_location("strip_notebook", REPO / "tools" / "strip_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


strip_notebook = _load_tool()

AUDIT_STARTUP = textwrap.dedent('''
    # Installed by tests/test_notebooks.py: log every write into the watched folders.
    import os as _os, sys as _sys, threading as _threading

    def _megapairs_watch_writes():
        log = open(_os.environ["NOTEBOOK_WRITE_LOG"], "a", buffering=1, encoding="utf-8")
        roots = [_os.path.realpath(r) for r in _os.environ["NOTEBOOK_WATCHED"].split(_os.pathsep)]
        write_flags = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_TRUNC | _os.O_APPEND
        # event -> ((index of a path argument, index of its dir_fd argument or None), ...)
        paths_of = {"os.mkdir": ((0, 2),), "os.remove": ((0, 1),), "os.rmdir": ((0, 1),),
                    "os.truncate": ((0, None),), "os.chmod": ((0, 2),), "os.utime": ((0, 3),),
                    "os.chown": ((0, 3),), "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),),
                    "os.rename": ((0, 2), (1, 3)), "os.link": ((1, 3),), "os.symlink": ((1, 2),),
                    "shutil.rmtree": ((0, 1),), "shutil.copyfile": ((1, None),),
                    "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),),
                    "shutil.copytree": ((1, None),), "shutil.move": ((1, None),)}
        busy = _threading.local()

        def watched(path, dir_fd=None):
            if isinstance(path, int) or path is None:
                return None
            # CPython passes dir_fd=-1 when none was given
            given = isinstance(dir_fd, int) and dir_fd >= 0
            base = _os.readlink(f"/proc/self/fd/{dir_fd}") if given else _os.getcwd()
            full = _os.path.realpath(_os.path.join(base, _os.fsdecode(path)))
            if "__pycache__" in full.split(_os.sep):
                return None  # bytecode caches: the import system's, not the notebook's
            return full if any(full == r or full.startswith(r + _os.sep) for r in roots) else None

        def hook(event, args):
            if event != "open" and event not in paths_of:
                return
            if getattr(busy, "on", False):
                return
            busy.on = True
            try:
                if event == "open":
                    path, mode, flags = args
                    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                        isinstance(flags, int) and bool(flags & write_flags))
                    targets = [(path, None)] if writing else []
                else:
                    targets = [(args[i], args[j] if j is not None and j < len(args) else None)
                               for i, j in paths_of[event] if i < len(args)]
                for path, dir_fd in targets:
                    full = watched(path, dir_fd)
                    if full is not None:
                        log.write(f"{event} {full}\\n")
            except Exception:
                pass
            finally:
                busy.on = False

        _sys.addaudithook(hook)

    _megapairs_watch_writes()
    del _megapairs_watch_writes
''')


def structure(nb) -> list[list[tuple]]:
    """Per code cell, its outputs as (output_type, stream name or the sorted MIME types)."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cells.append([(o.output_type, o.name) if o.output_type == "stream"
                      else (o.output_type, tuple(sorted(o.get("data", {})))) for o in cell.outputs])
    return cells


def texts(nb) -> list[str]:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = {k: "" if k.startswith("image/") else v for k, v in o.get("data", {}).items()}
            out.append(o.get("text", "") if o.output_type == "stream" else json.dumps(data))
            out.extend(o.get("traceback", []))
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_is_executed_and_normalised(path):
    """Committed with outputs, run top to bottom, without volatile metadata."""
    nb = nbformat.read(path, as_version=4)
    found = strip_notebook.problems(nb)
    assert found == [], f"{path.name}: {'; '.join(found)}"
    assert path.read_text(encoding="utf-8") == nbformat.writes(nb) + "\n", \
        f"run `python tools/strip_notebook.py notebooks/{path.name}`"
    assert any(cell.outputs for cell in nb.cells if cell.cell_type == "code"), "committed without outputs"
    for text in texts(nb):
        assert "IProgress" not in text and "TqdmWarning" not in text
        assert "application/vnd.jupyter.widget-view+json" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    committed = nbformat.read(path, as_version=4)
    cwd, tmp, ipython = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "ipython"
    for d in (cwd, tmp, ipython / "profile_default" / "startup"):
        d.mkdir(parents=True)
    (ipython / "profile_default" / "startup" / "00-watch-writes.py").write_text(AUDIT_STARTUP)
    log = tmp_path / "writes.log"
    log.touch()
    before = snapshot(REPO / "notebooks")

    t0 = time.monotonic()
    fresh = strip_notebook.execute(committed, cwd, timeout=300, env={
        "TMPDIR": str(tmp), "IPYTHONDIR": str(ipython), "NOTEBOOK_WRITE_LOG": str(log),
        "NOTEBOOK_WATCHED": os.pathsep.join([str(REPO), str(cwd)])})
    seconds = time.monotonic() - t0
    print(f"{path.name}: {seconds:.1f} s")

    code = [cell for cell in fresh.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "every cell ran"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, "\n".join(errors[0].traceback)
    # nothing written where it runs or into the repository
    left = sorted(os.listdir(cwd))
    assert left == [], f"the notebook wrote into its working directory: {left}"
    writes = log.read_text()
    assert writes == "", f"the notebook wrote into the repository or its working directory:\n{writes}"
    assert snapshot(REPO / "notebooks") == before
    # no progress-bar noise
    for text in texts(fresh):
        assert "IProgress" not in text and "TqdmWarning" not in text
    # the committed outputs have the structure of a fresh run
    want, got = structure(committed), structure(fresh)
    assert len(got) == len(want), "code cells differ in number: refresh the committed notebook"
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, (f"code cell {i + 1}: committed outputs {w}, a fresh run gives {g}; "
                        f"refresh with `python tools/strip_notebook.py --execute notebooks/{path.name}`")
