"""Pictures of mined pairs and of similarity distributions (matplotlib, an optional extra).

>>> import megapairs as mp
>>> fig = mp.viz.show_pairs("out/", n=8)                # query | target | hard negatives
>>> fig = mp.viz.score_histograms("out/")              # each space's scores with its band
>>> fig = mp.viz.training_curves("out/")               # after megapairs train: loss, held-out recall

Both take a pipeline output folder (``megapairs build``); :func:`show_pairs` also takes a
mined table with the image keys and where the images are. matplotlib is imported on first
use (``pip install megapairs[demo]`` or ``pip install matplotlib``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PairView", "load_pairs", "pair_sample", "score_histograms", "show_pairs", "thumbnail", "training_curves"]


@dataclass
class PairView:
    """What a picture of pairs needs: the mined table's columns as lists, and per image its
    key, caption and bytes (``load``); ``instructions`` by (q_img, t_img) when annotated."""

    query: list[int]
    target: list[int]
    spaces: list[list[str]]
    scores: list[list[float]]
    negatives: list[list[int]]
    keys: list[str]
    captions: list[str | None]
    load: Callable[[str], bytes]
    instructions: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def _pyplot():
    try:
        import matplotlib.pyplot as plt  # picks Agg by itself without a display
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'megapairs[demo]' (or pip install matplotlib)") \
            from None
    return plt


def load_pairs(folder: str | os.PathLike) -> PairView:
    """The mined pairs of a pipeline output folder, with captions and instructions."""
    import pyarrow.parquet as pq

    from .pipeline.ingest import image_source
    from .pipeline.layout import Output

    o = Output(folder)
    if not o.pairs.is_file():
        raise FileNotFoundError(f"no pairs in {o.root}: run `megapairs build` (or `megapairs mine`) first")
    manifest = pq.read_table(o.manifest)
    meta = json.loads(manifest.schema.metadata[b"megapairs.manifest"])
    keys, captions = manifest["key"].to_pylist(), manifest["caption"].to_pylist()
    t = pq.read_table(o.pairs).to_pydict()
    instructions = {}
    if o.annotations.is_file():
        from .annotate import read_journal

        instructions = {k: list(e["q_text"]) for k, e in read_journal(o.annotations).done.items()}
    return PairView(t["query"], t["target"], t["spaces"], t["scores"], t["hard_negatives"], keys, captions,
                    image_source(meta["kind"], Path(meta["root"]), keys), instructions)


def _view(result_or_folder, keys, images, captions) -> PairView:
    if isinstance(result_or_folder, PairView):
        return result_or_folder
    if isinstance(result_or_folder, (str, os.PathLike)):
        return load_pairs(result_or_folder)
    from . import dataset, mining

    table = result_or_folder.table if isinstance(result_or_folder, mining.MiningResult) else result_or_folder
    if keys is None or images is None:
        raise ValueError("a mined table needs keys= (image keys, row i = image i) and images= (a folder, "
                         "mapping or callable giving the bytes)")
    t = table.to_pydict()
    keys = list(keys)
    caps = [captions.get(k) for k in keys] if isinstance(captions, Mapping) else (
        list(captions) if captions is not None else [None] * len(keys))
    return PairView(t["query"], t["target"], t["spaces"], t["scores"], t["hard_negatives"], keys, caps,
                    dataset.image_loader(images))


def pair_sample(view: PairView, n: int) -> list[int]:
    """``n`` table rows spread evenly over the table (one per query where possible), so a
    picture shows many queries rather than the first query's targets."""
    rows = len(view.query)
    if rows == 0 or n <= 0:
        return []
    firsts = [i for i in range(rows) if i == 0 or view.query[i] != view.query[i - 1]]
    pool = firsts if len(firsts) >= n else list(range(rows))
    picks = np.linspace(0, len(pool) - 1, num=min(n, len(pool))).round().astype(int)
    return [pool[i] for i in dict.fromkeys(picks.tolist())]


def thumbnail(data: bytes, size: int = 160) -> np.ndarray:
    """An RGB thumbnail (longer side ``size``), transparent images on white."""
    from PIL import Image

    from .images import to_rgb

    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im = to_rgb(im)
        im.thumbnail((size, size))
        return np.asarray(im)


def _short(text: str | None, width: int = 38) -> str:
    import textwrap

    if not text:
        return "(no caption)"
    return "\n".join(textwrap.wrap(text, width)[:2])


def show_pairs(result_or_folder, n: int = 8, *, negatives: int = 3, keys: Sequence[str] | None = None,
               images=None, captions: Mapping[str, str] | Sequence[str | None] | None = None,
               rows: Sequence[int] | None = None, thumb: int = 160):
    """A matplotlib figure of mined pairs, one row each: query | target | hard negatives,
    with captions, the spaces that found the pair and their scores, and the first
    instruction when the pair is annotated.

    Parameters
    ----------
    result_or_folder : path, MiningResult or pyarrow.Table
        A pipeline output folder, or mined pairs with ``keys`` and ``images``.
    n : int
        Pairs to show (spread over the table, see :func:`pair_sample`), unless ``rows``.
    negatives : int
        Hard negatives per row, after the query image (which is always the first).
    keys, images, captions
        For a table: image keys (row i = image i), where their bytes are (folder, mapping
        or callable), and optionally their captions.
    rows : sequence of int, optional
        Which table rows to show.
    """
    plt = _pyplot()
    view = _view(result_or_folder, keys, images, captions)
    chosen = list(rows) if rows is not None else pair_sample(view, n)
    if not chosen:
        raise ValueError("no pairs to show (the table is empty)")
    cols = 2 + negatives
    fig, axes = plt.subplots(len(chosen), cols, figsize=(2.3 * cols, 3.0 * len(chosen)), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.35 / len(chosen), bottom=0.3 / len(chosen),
                        wspace=0.08, hspace=0.55)
    for r, row in enumerate(chosen):
        q, t = view.query[row], view.target[row]
        negs = [h for h in view.negatives[row][1:] if h != q][:negatives]
        cells = [(q, "query"), (t, "target")] + [(h, f"negative {j + 1}") for j, h in enumerate(negs)]
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(cells):
                continue
            image, role = cells[c]
            ax.imshow(thumbnail(view.load(view.keys[image]), thumb))
            title = f"{role}\n{_short(view.captions[image], 30)}"
            if role == "target":
                found = ", ".join(f"{s} {x:.3f}" for s, x in zip(view.spaces[row], view.scores[row]))
                title = f"target ({found})\n{_short(view.captions[image], 30)}"
            ax.set_title(title, fontsize=7, color="#1f5fa8" if role == "target" else "black")
        text = view.instructions.get((view.keys[q], view.keys[t]))
        if text:
            axes[r, 0].text(0, -0.08, "“" + _short(text[0], 60).replace("\n", " ") + "”", fontsize=7,
                            transform=axes[r, 0].transAxes, va="top", ha="left", color="#444444")
    return fig


def _space_scores(folder: Path, space: str, k: int, sample: int, seed: int = 0):
    """Cosines of each sampled query to its k nearest images in one space, and the mined
    pairs' scores in it."""
    import pyarrow.parquet as pq

    from . import knn
    from .pipeline.layout import Output

    o = Output(folder)
    emb = np.load(o.embedding(space), mmap_mode="r")
    status = np.asarray([s == "ok" for s in pq.read_table(o.manifest, columns=["status"])["status"].to_pylist()])
    valid = np.flatnonzero(status & (np.einsum("ij,ij->i", emb, emb) > 0))
    E = np.ascontiguousarray(emb[valid])
    if len(E) < 2:
        return np.empty(0), np.empty(0)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(E), size=min(sample, len(E)), replace=False))
    scores, ids = knn.search(E[rows], E, min(k, len(E) - 1) + 1)
    keep = ids != rows[:, None]  # each query finds itself first: drop it
    neighbours = scores[keep & (ids >= 0)]
    mined = []
    if o.pairs.is_file():
        t = pq.read_table(o.pairs, columns=["spaces", "scores"]).to_pydict()
        mined = [sc[s.index(space)] for s, sc in zip(t["spaces"], t["scores"]) if space in s]
    return neighbours, np.asarray(mined)


def score_histograms(folder: str | os.PathLike, *, k: int | None = None, sample: int = 2000,
                     bands: Mapping[str, Sequence[float]] | None = None):
    """One histogram per similarity space of a pipeline output folder: the cosines of (a
    sample of) queries to their k nearest images, the mined pairs' scores over them, and
    the space's band shaded.

    Parameters
    ----------
    folder : path
        A pipeline output folder with embeddings.
    k : int, optional
        Neighbours per query; default the folder's ``mining.k``.
    sample : int
        Queries drawn (seeded) from the embedded images.
    bands : mapping, optional
        Bands to mark instead of the configured ones (to try a band before mining with it).
    """
    from .pipeline.config import load_config
    from .pipeline.layout import Output

    plt = _pyplot()
    o = Output(folder)
    cfg = load_config(o.config)
    k = cfg.mining.k if k is None else k
    spaces = [s for s in cfg.spaces if o.embedding(s.name).is_file()]
    if not spaces:
        raise FileNotFoundError(f"no embeddings in {o.root}: run `megapairs encode` first")
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.2 * len(spaces), 3.4), squeeze=False)
    for ax, s in zip(axes[0], spaces):
        neighbours, mined = _space_scores(o.root, s.name, k, sample)
        lo, hi = (bands or {}).get(s.name, s.band)
        bins = np.linspace(min(-0.1, float(neighbours.min()) if len(neighbours) else 0), 1.0, 56)
        ax.hist(neighbours, bins=bins, color="#9bb7d4", label=f"top-{k} neighbours")
        if len(mined):
            ax.hist(mined, bins=bins, color="#1f5fa8", label=f"mined pairs ({len(mined)})")
        ax.axvspan(lo, hi, color="#f2b134", alpha=0.25, label=f"band ({lo:g}, {hi:g})")
        ax.set_title(f"{s.name} ({s.kind})", fontsize=10)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel("count")
    fig.tight_layout()
    return fig


def training_curves(folder: str | os.PathLike):
    """After ``megapairs train``: the loss of each step (and its running mean) beside the
    held-out Recall@K of the untrained and the trained model (``train/heldout.json``, when
    the run evaluated)."""
    plt = _pyplot()
    train = Path(folder) / "train"
    log = train / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"no training log in {train}: run `megapairs train` first")
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    heldout = train / "heldout.json"
    scores = json.loads(heldout.read_text(encoding="utf-8")) if heldout.is_file() else None
    fig, axes = plt.subplots(1, 2 if scores else 1, figsize=(10.4 if scores else 5.2, 3.4), squeeze=False)
    ax = axes[0, 0]
    steps = np.array([e["step"] for e in entries])
    loss = np.array([e["loss"] for e in entries])
    ax.plot(steps, loss, color="#9bb7d4", lw=0.8, label="loss")
    if len(loss) >= 10:
        w = max(2, len(loss) // 20)
        ax.plot(steps[w - 1:], np.convolve(loss, np.ones(w) / w, mode="valid"), color="#1f5fa8",
                label=f"mean of {w} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("training loss", fontsize=10)
    ax.legend(fontsize=7)
    if scores:
        ax = axes[0, 1]
        names = sorted(scores["before"], key=lambda name: int(name.split("@")[1]))  # R@1, R@5, R@10
        x = np.arange(len(names))
        for offset, (label, key, colour) in zip((-0.2, 0.2), (("untrained", "before", "#9bb7d4"),
                                                              ("trained", "after", "#1f5fa8"))):
            values = [scores[key][n] for n in names]
            bars = ax.bar(x + offset, values, width=0.4, color=colour, label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(x, names)
        ax.set_ylim(0, 105)
        ax.set_ylabel("percent")
        ax.set_title(f"held-out pairs: {scores['queries']} composed queries", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
