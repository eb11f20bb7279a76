"""megapairs train on a dataset megapairs build made from Debian's tuxpaint stamps (real
photos and drawings, captions from their .txt files, caption space = the real
all-MiniLM-L6-v2): the adapter's held-out recall against the untrained composition and
against a float64 NumPy recount, bit-for-bit resume after SIGKILL and SIGTERM, the data
order with DataLoader workers, and the checkpoint rules."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import megapairs as mp
from megapairs.evaluation.heldout import evaluate_heldout, heldout_queries
from megapairs.pipeline.demo import DEMO_CAPTION_BAND
from megapairs.training import data
from megapairs.training.adapter_io import read_adapter
from reference import minilm_dir

STAMPS = Path("/usr/share/tuxpaint/stamps")
MEGAPAIRS = [sys.executable, "-m", "megapairs"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The demo's pipeline over every stamp: caption space, template instructions, Parquet."""
    if not STAMPS.is_dir():
        pytest.fail(f"{STAMPS} is missing: install the Debian package tuxpaint-stamps-default (make system-deps)")
    out = tmp_path_factory.mktemp("built") / "out"
    mp.pipeline.build(STAMPS, out, overrides={"spaces.caption.model": str(minilm_dir()),
                                              "spaces.caption.band": list(DEMO_CAPTION_BAND),
                                              "export.formats": ["parquet"]}, progress=False)
    return out


def copy_run(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest, ignore=shutil.ignore_patterns("train"))
    return dest


def losses(out: Path) -> np.ndarray:
    lines = (out / "train" / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == list(range(1, len(steps) + 1)), steps
    return np.array([json.loads(line)["loss"] for line in lines])


@functools.lru_cache(maxsize=2)
def sentence_transformers_embeddings(texts: tuple[str, ...]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    return np.asarray(model.encode(list(texts), normalize_embeddings=True), np.float64)


def recount_recall(out: Path, adapter_dir: Path | None, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K by brute force in float64: every gallery score, the query image dropped from
    its own ranking (CIRR's rule), images with a score equal to the target's ahead of it when
    they come first in the gallery."""
    cfg = mp.pipeline.resolve_config(out, save=False)
    queries = heldout_queries(out, cfg.train.holdout, cfg.train.seed)
    keys = mp.pipeline.stages.read_manifest(mp.pipeline.layout.Output(out)).column("key").to_pylist()
    table = np.load(out / "embeddings" / "caption.npy").astype(np.float64)
    kept = np.flatnonzero(np.abs(table).sum(1) > 0)
    index = {keys[i]: j for j, i in enumerate(kept)}
    x = table[kept]
    texts = sorted({q[1] for q in queries})
    t = sentence_transformers_embeddings(tuple(texts))[[texts.index(q[1]) for q in queries]]
    wi, wt = np.eye(x.shape[1]), np.eye(x.shape[1], t.shape[1])
    if adapter_dir is not None:
        from safetensors.numpy import load_file

        w = load_file(str(adapter_dir / "adapter.safetensors"))
        wi, wt = w["image_proj.weight"].astype(np.float64), w["text_proj.weight"].astype(np.float64)

    def unit(z):
        return z / np.linalg.norm(z, axis=1, keepdims=True)
    gallery = unit(x @ wi.T)
    q = unit(x[[index[a] for a, _, _ in queries]] @ wi.T + t @ wt.T)
    scores = q @ gallery.T
    rows = np.arange(len(queries))
    scores[rows, [index[a] for a, _, _ in queries]] = -np.inf
    target_col = np.array([index[c] for _, _, c in queries])
    target = scores[rows, target_col]
    # equal scores (images with the same caption embed alike) rank in gallery order
    before = np.arange(len(kept))[None, :] < target_col[:, None]
    rank = (scores > target[:, None]).sum(1) + ((scores == target[:, None]) & before).sum(1)
    return {f"R@{k}": 100.0 * float(np.mean(rank < k)) for k in ks}


def test_adapter_raises_heldout_recall_above_the_untrained_model(built, tmp_path):
    out = copy_run(built, tmp_path / "out")
    before = evaluate_heldout(out)
    result = mp.training.train(out, overrides=["train.steps=300"], progress=False)
    after = evaluate_heldout(out, out / "train" / "model")
    assert result.steps == 300 and result.resumed_from == 0
    # the untrained model is the frozen composition normalise(x + t), and both numbers are
    # what a float64 recount over every gallery score gives (MiniLM run by sentence-transformers)
    for got, want in ((before, recount_recall(out, None)), (after, recount_recall(out, out / "train" / "model"))):
        for k in ("R@1", "R@5", "R@10"):
            assert abs(got[k] - want[k]) <= 100.0 / len(heldout_queries(out, 0.1, 0)) + 1e-9, (k, got, want)
    assert after["R@5"] > before["R@5"], (before, after)
    assert after["R@1"] > before["R@1"] + 5, (before, after)
    curve = losses(out)
    assert len(curve) == 300 and curve[-50:].mean() < curve[:10].mean()


def test_adapter_saved_loads_in_torch_and_numpy_alike(built, tmp_path):
    out = copy_run(built, tmp_path / "out")
    mp.training.train(out, overrides=["train.steps=20", "train.save_every=10", "train.evaluate=false"],
                      progress=False)
    folder = out / "train" / "model"
    torch_model = mp.training.MMRetAdapter.from_pretrained(folder)
    numpy_model = read_adapter(folder)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((7, 384)).astype(np.float32), rng.standard_normal((7, 384)).astype(np.float32)
    with torch.no_grad():
        want = torch_model.embed(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(numpy_model.embed(x, t), want, atol=1e-6)
    config = json.loads((folder / "adapter.json").read_text())
    assert config["space"] == "caption" and config["text_model"] == str(minilm_dir()) and config["steps"] == 20


def run_until(args: list[str], log: Path, min_lines: int, sig: int) -> subprocess.CompletedProcess:
    """Start ``megapairs`` and send ``sig`` once ``log`` has ``min_lines`` lines."""
    proc = subprocess.Popen(MEGAPAIRS + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= min_lines:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


# long enough to be interrupted mid-run, with a checkpoint every 25 steps
STEPS = 200
SLOW_RUN = ["--set", f"train.steps={STEPS}", "--set", "train.save_every=25", "--set", "train.batch_size=128",
            "--set", "train.evaluate=false"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_a_kill_repeats_the_uninterrupted_loss_curve(built, tmp_path, sig):
    clean = copy_run(built, tmp_path / "clean")
    done = subprocess.run(MEGAPAIRS + ["train", str(clean), *SLOW_RUN], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    killed = copy_run(built, tmp_path / "killed")
    first = run_until(["train", str(killed), *SLOW_RUN], killed / "train" / "log.jsonl", 40, sig)
    assert first.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), first.stderr
    reached = len((killed / "train" / "log.jsonl").read_text().splitlines())
    assert reached < STEPS, "the run finished before the signal: the test did not interrupt anything"
    checkpoints = sorted((killed / "train" / "checkpoints").iterdir())
    if sig == signal.SIGTERM:  # SIGTERM checkpoints the step in flight and says how to resume
        assert checkpoints[-1].name == f"step-{reached:06d}"
        assert "--resume" in first.stderr
    again = subprocess.run(MEGAPAIRS + ["train", str(killed), "--resume", *SLOW_RUN], check=False, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    a, b = losses(clean), losses(killed)
    assert len(a) == len(b) == STEPS
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    wa = (clean / "train" / "model" / "adapter.safetensors").read_bytes()
    assert (killed / "train" / "model" / "adapter.safetensors").read_bytes() == wa


def test_checkpoints_are_never_overwritten_and_settings_must_match(built, tmp_path):
    out = copy_run(built, tmp_path / "out")
    mp.training.train(out, overrides=["train.steps=10", "train.save_every=5", "train.evaluate=false"],
                      progress=False)
    again = subprocess.run(MEGAPAIRS + ["train", str(out), "--set", "train.steps=10"], check=False, capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr and again.stderr.count("\n") == 1, again.stderr
    changed = subprocess.run(MEGAPAIRS + ["train", str(out), "--resume", "--set", "train.lr=0.01"],
                             check=False, capture_output=True, text=True)
    assert changed.returncode == 1 and "other settings" in changed.stderr, changed.stderr
    # a longer schedule is another run too (the cosine decay depends on it), but the saving
    # cadence may change
    ok = subprocess.run(MEGAPAIRS + ["train", str(out), "--resume", "--set", "train.save_every=3"],
                        check=False, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_train_before_export_says_what_to_run(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    done = subprocess.run(MEGAPAIRS + ["train", str(out)], check=False, capture_output=True, text=True)
    assert done.returncode == 1 and "megapairs build" in done.stderr, done.stderr


def test_examples_are_the_same_with_dataloader_workers_and_on_resume(built):
    records = data.read_dataset(built)
    train, held = data.split_records(records, 0.1, 0)
    assert not {r["q_img"] for r in train} & {r["q_img"] for r in held}
    assert 0.05 < len(held) / len(records) < 0.2
    examples = data.Examples(train, num_negatives=4, seed=3)
    batches = data.StepBatches(len(train), 32, seed=3, steps=90)

    def loader(start=0, workers=0):
        sampler = data.StepBatches(len(train), 32, seed=3, steps=90, start=start)
        return list(torch.utils.data.DataLoader(examples, batch_sampler=sampler, num_workers=workers,
                                                collate_fn=lambda b: b))
    plain, workers = loader(), loader(workers=2)
    assert plain == workers
    assert loader(start=57) == plain[57:]
    for step, batch in enumerate(plain):  # every epoch is a permutation; the query image leads the negatives
        assert len(batch) == 32
        for e in batch:
            assert e["hns"][0] == e["q_img"] and e["t_img"] not in e["hns"] and len(e["hns"]) == 4
    per_epoch = batches.steps_per_epoch
    first = [e["q_img"] + e["t_img"] for b in plain[:per_epoch] for e in b]
    assert len(set(first)) == len(first) == per_epoch * 32
