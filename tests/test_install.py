"""`pip install .` into a brand-new virtualenv, with pip's default build isolation.

The build then sees oneDNN only in pip's temporary build environment (the build requirements
of pyproject.toml), and the installed package must find libdnnl.so.3 in the new venv (the
runtime dependency), not in that build environment, which is gone by then. Nothing here uses
the developer's .venv beyond the interpreter that creates the new one.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 1800  # downloads the build and runtime requirements, then compiles csrc/ (~1 min on 2 cores)

CHECK = textwrap.dedent("""
    import io, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    import megapairs as mp

    prefix = Path(sys.prefix).resolve()
    assert Path(mp.__file__).resolve().is_relative_to(prefix), mp.__file__
    mp.show_config()

    # oneDNN must come from this venv's onednn-cpu-gomp, not from the (deleted) build environment.
    dnnl = {line.split()[-1] for line in open("/proc/self/maps") if "libdnnl" in line}
    print("libdnnl:", dnnl)
    assert dnnl and all(Path(p).resolve().is_relative_to(prefix) for p in dnnl), dnnl

    # A real computation through oneDNN: exact kNN against a float64 brute force.
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((300, 64)).astype(np.float32)
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    scores, ids = mp.knn.search(queries, corpus, k=5)
    full = queries.astype(np.float64) @ corpus.astype(np.float64).T
    want = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert np.array_equal(ids, want), (ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-6, atol=1e-6)

    # libjpeg-turbo: decode equals Pillow, and the CLIP preprocessing runs.
    photo = Path("/usr/share/palapeli/collection/citrus-fruits.jpg")  # Debian palapeli-data
    if photo.is_file():
        data = photo.read_bytes()
    else:
        buffer = io.BytesIO()
        gradient = np.add.outer(np.arange(240), np.arange(320))[..., None] * np.array([1, 2, 3])
        Image.fromarray((gradient % 256).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(mp.images.decode(data), np.asarray(im.convert("RGB")))
    pixels = mp.images.preprocess([data], transform="clip")
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == np.float32, (pixels.shape, pixels.dtype)
    assert np.isfinite(pixels).all()
    print("megapairs install check: ok")
""")


def copy_working_tree(dest):
    """The tracked and untracked-but-not-ignored files of this checkout, as they are on disk.

    Like a fresh clone, but with uncommitted work included, and without build outputs
    (build/, megapairs/_core*.so, .venv), which are ignored.
    """
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout and git to list the project's files")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout
    for name in sorted(set(listed.decode().split("\0")) - {""}):
        source = REPO / name
        if source.is_file():  # deleted-but-tracked files are listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def clean_env():
    env = dict(os.environ)
    # Nothing may point the build or the import at another oneDNN or another environment.
    for name in ("ONEDNN_ROOT", "PIP_NO_BUILD_ISOLATION", "PIP_PREFIX", "PIP_TARGET", "PIP_USER",
                 "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(cmd, timeout, **kwargs):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, cmd))} ran past {timeout} s\n--- stdout\n{exc.stdout}\n--- stderr\n{exc.stderr}")


@pytest.mark.slow
def test_pip_install_in_a_fresh_venv_builds_and_imports(tmp_path):
    source = tmp_path / "src"
    copy_working_tree(source)
    venv = tmp_path / "venv"
    env = clean_env()
    made = run([sys.executable, "-m", "venv", str(venv)], 300, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    python = venv / "bin" / "python"

    start = time.monotonic()
    pip = run([python, "-m", "pip", "install", "-v", str(source)], PIP_TIMEOUT_S, env=env, cwd=tmp_path)
    elapsed = time.monotonic() - start
    output = f"--- pip install ({elapsed:.0f} s), exit {pip.returncode}\n{pip.stdout}\n--- stderr\n{pip.stderr}"
    assert pip.returncode == 0, output
    found = [line.strip() for line in (pip.stdout + pip.stderr).splitlines() if "megapairs: oneDNN headers from" in line]
    print(f"pip install: {elapsed:.0f} s; {found}")

    # cwd outside the source tree, so `import megapairs` can only find the installed copy.
    check = run([python, "-c", CHECK], 300, env=env, cwd=tmp_path)
    assert check.returncode == 0 and "install check: ok" in check.stdout, (
        f"{check.stdout}\n--- stderr\n{check.stderr}\n{output[-20000:]}")
