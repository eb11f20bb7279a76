"""Replays the seeds of the Python fuzz targets (tests/fuzz/fuzz_python.py) and every input
a fuzzing run found and kept in tests/fuzz/regressions/<target>/: each must be read or
refused with the documented exception, never anything else."""

import importlib.util
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
spec = importlib.util.spec_from_file_location("fuzz_python", FUZZ / "fuzz_python.py")
fuzz_python = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz_python)

CASES = sorted((target, path) for target in fuzz_python.TARGETS
               for folder in (FUZZ / "corpus" / f"py_{target}", FUZZ / "regressions" / target)
               if folder.is_dir() for path in folder.iterdir() if path.is_file())


def test_every_target_has_seeds():
    assert {t for t, _ in CASES} == set(fuzz_python.TARGETS)


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.parent.name}/{p.name}" for t, p in CASES])
def test_input_is_read_or_refused_cleanly(target, path):
    fuzz_python.TARGETS[target](path.read_bytes())
