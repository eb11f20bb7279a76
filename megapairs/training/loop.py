"""``megapairs train``: MMRet on the pairs a pipeline output folder holds.

>>> from megapairs.training import train
>>> result = train("out")                                  # the [train] section of out/megapairs.toml  # doctest: +SKIP
>>> result = train("out", overrides=["train.steps=1000"], resume=True)                                 # doctest: +SKIP

One optimiser step takes ``train.accumulation`` batches of ``train.batch_size`` examples
(:mod:`megapairs.training.data`), embeds the queries and their ``1 + negatives`` candidates
each, and back-propagates InfoNCE (:class:`megapairs.loss.InfoNCELoss`, τ = 0.02): directly,
or with :func:`~megapairs.training.grad_cache_step` when ``train.sub_batch`` is set.
``torch.optim.AdamW`` steps with a linear warm-up and cosine (or linear) decay
(:func:`~megapairs.training.lr_factor` in a ``LambdaLR``).

Files, under ``OUT/train/``: ``log.jsonl`` (one line per step: loss, learning rate,
throughput), ``checkpoints/step-NNNNNN/`` (every ``train.save_every`` steps, at the end and
on Ctrl-C / SIGTERM; :mod:`megapairs.training.checkpoint`), ``model/`` (the trained model:
an adapter folder, or a Hugging Face CLIP folder that ``megapairs.CLIP.from_pretrained``
loads), ``texts.npy`` + ``texts.json`` (the adapter's instruction embeddings) and, with
``train.tensorboard``, ``tensorboard/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pipeline.config import Config, TrainConfig
from ..pipeline.layout import Output, atomic_write_bytes, atomic_write_json, digest, disk_errors
from ..pipeline.stages import StageFailed, _upstream, resolve_config
from .data import (
    Examples,
    StepBatches,
    image_table,
    instruction_model,
    read_dataset,
    split_records,
    text_encoder,
)
from .schedule import lr_factor

__all__ = ["TrainResult", "build_model", "train", "train_dir"]

#: Settings that do not change what a step computes: a run may resume with them changed.
RESUMABLE = ("save_every", "keep", "num_workers", "tensorboard", "evaluate")


@dataclass
class TrainResult:
    steps: int  # optimiser steps done, in all runs
    resumed_from: int  # the step this run started at (0 for a fresh run)
    loss: float  # the last step's loss
    model_dir: Path
    seconds: float  # this run's wall time
    heldout: dict | None = None  # {"before": {"R@1": ...}, "after": {...}, "queries": n} when evaluated


def train_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "train"


def _import_torch():
    try:
        import torch
    except ImportError:
        raise StageFailed("megapairs train needs PyTorch: pip install 'megapairs[train]'") from None
    return torch


def _device(torch, name: str):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fingerprint(o: Output, t: TrainConfig) -> str:
    settings = {k: v for k, v in dataclasses.asdict(t).items() if k not in RESUMABLE}
    return digest("train", _upstream(o, "export", None), settings)


# --------------------------------------------------------------------------- the models


def _text_table(o: Output, cfg: Config, texts: list[str]) -> tuple[np.ndarray, str]:
    """The instructions' embeddings, cached in OUT/train/texts.npy (a resumed run reads the
    same bits back instead of encoding again)."""
    folder = train_dir(o.root)
    name = instruction_model(cfg)
    key = digest("texts", name, texts)
    meta_path, npy_path = folder / "texts.json", folder / "texts.npy"
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(meta_path.read_text(encoding="utf-8"))["key"] == key:
            table = np.load(npy_path)
            if table.shape[0] == len(texts):
                return table, name
    space = cfg.space(cfg.train.space) if cfg.train.space else cfg.spaces[0]
    table = text_encoder(name, space.precision, cfg.train.num_threads or None)(texts)
    folder.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    np.save(buf, table)
    atomic_write_bytes(npy_path, buf.getvalue())
    atomic_write_json(meta_path, {"key": key, "text_model": name, "count": len(texts)})
    return table, name


def build_model(o: Output, cfg: Config, records: list[dict]):
    """The model ``train.model`` names, ready to train, and the image source its collate reads."""
    t = cfg.train
    if t.model == "adapter":
        from .adapter import MMRetAdapter

        space = cfg.space(t.space) if t.space else cfg.spaces[0]
        images, keys = image_table(o, space.name)
        texts = sorted({text for r in records for text in r["q_text"]})
        text_table, text_model = _text_table(o, cfg, texts)
        model = MMRetAdapter(images.shape[1], text_table.shape[1],
                             meta={"space": space.name, "space_kind": space.kind, "image_model": space.model,
                                   "text_model": text_model, "temperature": t.temperature})
        return model.attach(images, keys, text_table, texts), None
    from ..pipeline.stages import _manifest_corpus
    from .clip import MMRetCLIP

    kind, root = _manifest_corpus(o)
    if kind == "shards":
        raise StageFailed("train.model = 'clip' reads images from a folder or listing corpus; a shard corpus is "
                          "not supported yet")
    return MMRetCLIP.from_pretrained(t.init), str(root)


# --------------------------------------------------------------------------- signals and logs


@contextlib.contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """An event set by SIGINT / SIGTERM (the loop checkpoints and stops at the end of the step)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if stop.is_set():  # a second Ctrl-C: stop now
            signal.signal(signum, previous[signum])
            raise KeyboardInterrupt
        stop.set()
    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _Log:
    """OUT/train/log.jsonl (one JSON object a step), and TensorBoard when asked for."""

    def __init__(self, folder: Path, upto: int, tensorboard: bool):
        self.path = folder / "log.jsonl"
        kept = []
        if upto and self.path.is_file():  # a resumed run: the lines past its checkpoint are redone
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    if json.loads(line)["step"] <= upto:
                        kept.append(line + "\n")
        atomic_write_bytes(self.path, "".join(kept).encode("utf-8"))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise StageFailed("train.tensorboard = true needs the tensorboard package: pip install tensorboard") \
                    from None
            self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=upto + 1)

    def write(self, entry: dict) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key in ("loss", "lr", "examples_per_s"):
                self.writer.add_scalar(f"train/{key}", entry[key], entry["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------- the loop


def _to(inputs: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def train(out: str | os.PathLike, config: Config | str | os.PathLike | None = None, *, resume: bool = False,
          overrides: list[str] | dict | None = None, progress: bool | None = None,
          on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train the ``[train]`` model of ``out`` on its exported dataset.

    Parameters
    ----------
    out : path
        A pipeline output folder whose ``dataset/`` is built (``megapairs build``).
    config : Config or path, optional
        Default: ``out/megapairs.toml``. ``overrides`` (``"train.steps=1000"``) apply on top.
    resume : bool
        Continue from the newest checkpoint in ``out/train/checkpoints``: the model, the
        optimiser, the schedule, the RNGs and the data order are restored, so the run repeats
        what an uninterrupted one would have done. Without it, a folder that has checkpoints
        is an error (nothing is overwritten).
    progress : bool, optional
        A tqdm bar with the loss and examples/s (default: on a terminal).
    on_step : callable, optional
        Called with each step's log entry.

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C or SIGTERM, after the checkpoint of the step in flight is written.
    """
    torch = _import_torch()
    from ..loss import InfoNCELoss
    from . import checkpoint
    from .gradcache import grad_cache_step

    t0 = time.monotonic()
    o = Output(out)
    cfg = resolve_config(out, config, overrides=overrides, save=False)  # saved once the run may start
    t = cfg.train
    folder = train_dir(o.root)
    ckpt_dir = folder / "checkpoints"
    fp = _fingerprint(o, t)
    last = checkpoint.latest(ckpt_dir)
    if last is not None and not resume:
        raise StageFailed(f"{folder} holds checkpoints of an earlier run: pass --resume to continue it, "
                          f"or delete {folder} to start over")
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    torch.manual_seed(t.seed)

    records = read_dataset(o.root)
    train_records, _ = split_records(records, t.holdout, t.seed)
    device = _device(torch, t.device)
    model, images = build_model(o, cfg, train_records)
    model.to(device).train()
    loss_fn = InfoNCELoss(temperature=t.temperature)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate(), weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.steps, t.warmup, t.schedule))

    start = 0
    if resume and last is not None:
        state = checkpoint.load(last, model, optimizer, scheduler)
        if state["fingerprint"] != fp:
            raise StageFailed(f"{last} comes from other settings or another dataset: only "
                              f"{', '.join('train.' + k for k in RESUMABLE)} may change on --resume; "
                              f"delete {folder} to start over")
        start = int(state["step"])
    resolve_config(out, cfg)  # OUT/megapairs.toml now holds the settings of this run
    if start >= t.steps:
        return _finish(o, model, cfg, start, start, math.nan, t0)

    group = 1 + t.negatives
    examples = Examples(train_records, num_negatives=t.negatives, seed=t.seed)
    batches = StepBatches(len(train_records), t.batch_size, t.seed, t.steps * t.accumulation,
                          start=start * t.accumulation)
    loader = torch.utils.data.DataLoader(examples, batch_sampler=batches, collate_fn=model.collate_fn(images),
                                         num_workers=t.num_workers, persistent_workers=False)
    sub_batch = t.sub_batch if 0 < t.sub_batch < t.batch_size * group else 0

    def scaled_loss(q, c, **layout):
        return loss_fn(q, c, **layout) / t.accumulation

    def one_batch(query_inputs, candidate_inputs) -> float:
        query_inputs, candidate_inputs = _to(query_inputs, device), _to(candidate_inputs, device)
        if sub_batch:
            return t.accumulation * grad_cache_step(
                lambda **k: model.encode_query(**k), lambda **k: model.encode_candidates(**k),
                query_inputs, candidate_inputs, scaled_loss, sub_batch=min(sub_batch, t.batch_size),
                candidate_sub_batch=sub_batch, group_size=group)
        loss = scaled_loss(model.encode_query(**query_inputs), model.encode_candidates(**candidate_inputs),
                           group_size=group)
        loss.backward()
        return t.accumulation * float(loss.detach())

    folder.mkdir(parents=True, exist_ok=True)
    log = _Log(folder, start, t.tensorboard)
    bar = None
    if progress if progress is not None else os.isatty(2):
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    step, loss = start, math.nan
    try:
        with _stop_requests() as stop, disk_errors(str(folder)):
            batches_iter = iter(loader)
            while step < t.steps:
                tick = time.monotonic()
                losses = [one_batch(*next(batches_iter)) for _ in range(t.accumulation)]
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                loss = float(np.mean(losses))
                seconds = time.monotonic() - tick
                entry = {"step": step, "loss": loss, "lr": lr, "epoch": (step * t.accumulation - 1) //
                         batches.steps_per_epoch, "examples_per_s": t.batch_size * t.accumulation / seconds,
                         "seconds": seconds}
                if not math.isfinite(loss):
                    raise StageFailed(f"the loss is {loss} at step {step}: lower train.lr (now {lr:g}) or check "
                                      "the embeddings for NaN")
                log.write(entry)
                if on_step is not None:
                    on_step(entry)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{entry['examples_per_s']:.0f}")
                if step % t.save_every == 0 or step == t.steps or stop.is_set():
                    checkpoint.save(ckpt_dir, step, model, optimizer, scheduler, fp, t.keep)
                if stop.is_set():
                    raise KeyboardInterrupt
    finally:
        log.close()
        if bar is not None:
            bar.close()
    return _finish(o, model, cfg, step, start, loss, t0)


def _finish(o: Output, model, cfg: Config, step: int, start: int, loss: float, t0: float) -> TrainResult:
    t = cfg.train
    model_dir = train_dir(o.root) / "model"
    with disk_errors(str(model_dir)):
        if t.model == "adapter":
            model.save_pretrained(model_dir, meta={"steps": step, "holdout": t.holdout, "seed": t.seed})
        else:
            model.save_pretrained(model_dir)
    atomic_write_json(train_dir(o.root) / "result.json",
                      {"steps": step, "loss": loss if math.isfinite(loss) else None, "model": t.model, "model_dir": "model",
                       "settings": dataclasses.asdict(t)})
    heldout = evaluate_before_after(o.root, cfg, model_dir) if t.evaluate and t.holdout > 0 else None
    return TrainResult(step, start, loss, model_dir, time.monotonic() - t0, heldout)


def evaluate_before_after(out: Path, cfg: Config, model_dir: Path) -> dict:
    """Held-out Recall@K of the untrained model (the frozen embeddings composed, or the CLIP
    ``train.init``) and of ``model_dir``, written to ``OUT/train/heldout.json``."""
    from ..evaluation.heldout import evaluate_heldout, heldout_queries

    t = cfg.train
    threads = t.num_threads or None
    before = evaluate_heldout(out, None if t.model == "adapter" else t.init, num_threads=threads)
    after = evaluate_heldout(out, model_dir, num_threads=threads)
    scores = {"before": before, "after": after, "queries": len(heldout_queries(out, t.holdout, t.seed)),
              "model": t.model, "steps": t.steps}
    atomic_write_json(train_dir(out) / "heldout.json", scores)
    return scores
