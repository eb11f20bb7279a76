"""The report, the pictures and the demo, looked at the way a person does: the HTML page in a
real browser (Debian's headless Chromium through selenium), the PNGs as pixels."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import megapairs as mp
from megapairs.pipeline import Output
from reference import minilm_dir

STAMPS = Path("/usr/share/tuxpaint/stamps")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A caption-space run over three categories of stamps, one of them with a damaged file."""
    if not STAMPS.is_dir():
        pytest.fail(f"{STAMPS} is missing: install the Debian package tuxpaint-stamps-default (make system-deps)")
    root = tmp_path_factory.mktemp("stamps")
    for cat in ("animals/birds", "food/fruit", "plants/flowers"):
        shutil.copytree(STAMPS / cat, root / cat)
    (root / "food/fruit/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path_factory.mktemp("run") / "out"
    mp.pipeline.build(root, out, overrides={"spaces.caption.model": str(minilm_dir()),
                                            "spaces.caption.band": [0.55, 0.95]}, progress=False)
    return out


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver (make system-deps)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600",
                "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def not_blank(png: bytes, colours: int = 200) -> None:
    """A picture with content: real contrast and many colours (photos) or at least a few
    (a chart), not one flat fill."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int32)
    found = len(np.unique(a.reshape(-1, 3) // 8, axis=0))
    assert a.std() > 20 and found > colours, (a.std(), found)


def test_report_in_a_real_browser(run, tmp_path):
    index = mp.report.write_report(run, n_pairs=12)
    assert index == run / "report" / "index.html"
    driver = browser()
    try:
        driver.get(index.resolve().as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        pairs = driver.execute_script("return document.querySelectorAll('div.pair').length")
        text = driver.execute_script("return document.body.innerText")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    (tmp_path / "report.png").write_bytes(png)
    assert not errors, errors
    assert images and all(complete and width > 0 for _, complete, width in images), \
        [src for src, complete, width in images if not (complete and width > 0)]
    assert pairs == 12
    not_blank(png)
    # what the page says is what the run did
    n = pq.read_table(Output(run).pairs).num_rows
    assert f"12 of {n} pairs" in text
    assert "template" in text and "not the paper's" in text  # the baseline is labelled
    assert "food/fruit/broken.png" in text  # the failure is listed
    first = mp.dataset.read_jsonl(Output(run).records_jsonl)
    journal = {(r["q_img"], r["t_img"]): r["q_text"] for r in first}
    shown = re.findall(r"<li>(.*?)</li>", index.read_text())
    assert shown and set(shown) <= {x for texts in journal.values() for x in texts}


def test_contact_sheet_and_histograms_are_pictures(run):
    mp.report.write_report(run, contact_sheet_pairs=4)
    not_blank((run / "report" / "contact_sheet.png").read_bytes())
    not_blank((run / "report" / "histograms.png").read_bytes(), colours=10)


def test_show_pairs_and_score_histograms(run):
    import matplotlib

    matplotlib.use("Agg")
    fig = mp.viz.show_pairs(run, n=3, negatives=2)
    assert len(fig.axes) == 3 * 4
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.startswith("query") for t in titles) == 3 and sum(t.startswith("target") for t in titles) == 3
    m = pq.read_table(Output(run).manifest).to_pydict()
    assert any(m["caption"][i] and m["caption"][i].split()[1] in " ".join(titles) for i in range(len(m["key"])))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    not_blank(buf.getvalue())
    hist = mp.viz.score_histograms(run, bands={"caption": (0.7, 0.9)})
    assert [ax.get_title() for ax in hist.axes] == ["caption (caption)"]
    assert any("(0.7, 0.9)" in t.get_text() for t in hist.axes[0].get_legend().get_texts())
    # a mined table with keys and a folder works too
    table = pq.read_table(Output(run).pairs)
    meta = json.loads(pq.read_schema(Output(run).manifest).metadata[b"megapairs.manifest"])
    fig = mp.viz.show_pairs(table, n=2, keys=m["key"], images=meta["root"], captions=m["caption"])
    assert len(fig.axes) == 2 * 5


def test_demo_command_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "megapairs", "demo", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "demo: no CLIP/DINOv2 weights given (--clip PATH, --dinov2 PATH): mining the caption space alone"
    assert "template baseline" in lines[1]
    assert lines[-1] == f"   report: {(out / 'report' / 'index.html').resolve()}"
    cfg = mp.pipeline.load_config(out / "megapairs.toml")
    assert [s.kind for s in cfg.spaces] == ["caption"] and cfg.corpus.path == str(STAMPS)
    assert Output(out).records_parquet.is_file() and (out / "report" / "contact_sheet.png").is_file()


def test_trained_run_shows_heldout_recall_and_curves_in_a_real_browser(run, tmp_path):
    """After megapairs train: the page's before/after table is train/heldout.json (itself
    checked against a float64 recount in tests/test_train.py), and the curves are a picture."""
    out = tmp_path / "trained"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("report", "train"))
    result = mp.training.train(out, overrides=["train.steps=40", "train.batch_size=16", "train.holdout=0.2"],
                               progress=False)
    index = mp.report.write_report(out, n_pairs=2)
    driver = browser()
    try:
        driver.get(index.resolve().as_uri())
        cells = driver.execute_script(
            "return [...document.querySelectorAll('#heldout tr')].map(r => [...r.cells].map(c => c.innerText))")
        training = driver.execute_script(
            "const i = document.querySelector('img[src=\"training.png\"]'); return [i.complete, i.naturalWidth]")
        text = driver.execute_script("return document.body.innerText")
    finally:
        driver.quit()
    scores = json.loads((out / "train" / "heldout.json").read_text())
    assert scores["before"] == result.heldout["before"] and scores["after"] == result.heldout["after"]
    assert cells[0] == ["model", "R@1", "R@5", "R@10"]
    for row, key in zip(cells[1:], ("before", "after")):
        assert row[1:] == [f"{scores[key][k]:.1f}" for k in ("R@1", "R@5", "R@10")]
    assert training[0] and training[1] > 0
    assert f"{scores['queries']} queries" in text and "40 steps" in text
    not_blank((out / "report" / "training.png").read_bytes(), colours=10)
