"""A static HTML report of a pipeline run: what was mined, shown as pictures.

``megapairs report OUT`` (and ``build`` and ``demo`` at their end) writes ``OUT/report/``:
``index.html`` (the configuration and counts, each space's similarity histogram with its
band, a gallery of mined pairs — query | target | hard negatives with captions, the spaces
and scores that found the pair, the instructions —, the failures and, after ``megapairs
train``, the loss curve and held-out Recall@K before and after training), the pictures it shows,
and ``contact_sheet.png``, the gallery's first pairs as one image. The folder is
self-contained: copy it anywhere and open ``index.html``.

>>> import megapairs as mp
>>> mp.report.write_report("out/")          # doctest: +SKIP
PosixPath('out/report/index.html')
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

__all__ = ["write_report"]

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.note { background: #fff4d6; border: 1px solid #f2b134; padding: 8px 12px; border-radius: 4px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #e4e4e4;
  text-align: left; vertical-align: top; }
.pair { border: 1px solid #ddd; border-radius: 6px; padding: 10px; margin: 12px 0; }
.row { display: flex; gap: 10px; align-items: flex-start; }
figure { margin: 0; width: 150px; font-size: 12px; }
figure img { width: 150px; height: 150px; object-fit: contain; background: #fff; border: 1px solid #eee; }
figure.target img { border: 2px solid #1f5fa8; } figure.query img { border: 2px solid #333; }
figcaption b { display: block; } .scores { color: #1f5fa8; }
ul.instr { margin: 6px 0 0 0; } pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def _thumb(view, image: int, folder: Path, size: int) -> str:
    from PIL import Image

    from .viz import thumbnail

    name = f"thumbs/{image}.jpg"
    path = folder / name
    if not path.exists():
        Image.fromarray(thumbnail(view.load(view.keys[image]), size)).save(path, quality=85)
    return name


def _figure(view, image: int, role: str, folder: Path, size: int, extra: str = "") -> str:
    src = _thumb(view, image, folder, size)
    cap = html.escape(view.captions[image] or "(no caption)")
    key = html.escape(view.keys[image])
    return (f'<figure class="{role}"><img src="{src}" alt="{key}" title="{key}">'
            f"<figcaption><b>{role}</b>{extra}{cap}</figcaption></figure>")


def write_report(out: str | os.PathLike, n_pairs: int = 24, negatives: int = 3, thumb: int = 192,
                 contact_sheet_pairs: int = 8) -> Path:
    """Write ``out/report/`` for a pipeline output folder and return the path of its
    ``index.html``.

    Parameters
    ----------
    out : path
        A folder ``megapairs build`` wrote (at least through ``mine``).
    n_pairs : int
        Pairs in the gallery, spread over the mined table.
    negatives : int
        Hard negatives shown per pair (after the query image, which is always the first).
    thumb : int
        Thumbnail size in pixels.
    contact_sheet_pairs : int
        Pairs in ``contact_sheet.png``.
    """
    from . import viz
    from .pipeline.config import load_config
    from .pipeline.layout import Output, atomic_folder

    o = Output(out)
    view = viz.load_pairs(o.root)
    cfg = load_config(o.config)
    folder = o.root / "report"
    with atomic_folder(folder) as tmp:
        _write(o, view, cfg, tmp, n_pairs, negatives, thumb, contact_sheet_pairs)
    return folder / "index.html"


def _write(o, view, cfg, tmp: Path, n_pairs: int, negatives: int, thumb: int, contact_sheet_pairs: int) -> None:
    """The report's files into the empty folder ``tmp``."""
    import matplotlib
    import pyarrow.parquet as pq

    from . import viz
    from .pipeline import status

    (tmp / "thumbs").mkdir()

    with matplotlib.rc_context({"figure.dpi": 100}):
        import matplotlib.pyplot as plt

        fig = viz.score_histograms(o.root)
        fig.savefig(tmp / "histograms.png", bbox_inches="tight")
        plt.close(fig)
        if (o.root / "train" / "log.jsonl").is_file():
            fig = viz.training_curves(o.root)
            fig.savefig(tmp / "training.png", bbox_inches="tight")
            plt.close(fig)
        rows = viz.pair_sample(view, contact_sheet_pairs)
        if rows:
            fig = viz.show_pairs(view, rows=rows, negatives=negatives)
            fig.savefig(tmp / "contact_sheet.png", bbox_inches="tight", dpi=90)
            plt.close(fig)

    annotator = cfg.annotate.annotator
    header = None
    if o.annotations.is_file():
        from .annotate import read_journal

        journal = read_journal(o.annotations)
        header = journal.header or {}
        annotator = (header.get("settings") or {}).get("annotator", "openai")
    stages = status(o.root)
    manifest = pq.read_table(o.manifest).to_pydict()
    failures = [(k, e) for k, s, e in zip(manifest["key"], manifest["status"], manifest["error"]) if s != "ok"]
    stats = json.loads(o.pairs_stats.read_text()) if o.pairs_stats.is_file() else {}

    parts = [(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>megapairs report: "
             f"{html.escape(o.root.name)}</title><style>{_CSS}</style></head><body>"),
             f"<h1>megapairs report — {html.escape(str(o.root))}</h1>"]
    if annotator == "template":
        parts.append("<p class='note'>Instructions by the offline <b>template</b> annotator: a baseline composed "
                     "from the two captions, not the paper's MLLM + LLM annotation. Use "
                     "<code>annotate.annotator = \"openai\"</code> with a server for that.</p>")
    else:
        s = (header or {}).get("settings") or {}
        parts.append(f"<p>Instructions by the two-stage MLLM ({html.escape(str(s.get('mllm_model')))}) + LLM "
                     f"({html.escape(str(s.get('llm_model')))}) annotator.</p>")
    parts.append("<h2>Counts</h2><table><tr><th>stage</th><th>state</th><th>what it did</th></tr>")
    for r in stages:
        done = ", ".join(f"{k} {v}" for k, v in r["stats"].items() if not isinstance(v, (dict, list)))
        parts.append(f"<tr><td>{html.escape(r['stage'])}</td><td>{r['state']}</td><td>{html.escape(done)}</td></tr>")
    parts.append("</table>")
    if stats:
        per_space = ", ".join(f"{k}: {v}" for k, v in stats.get("pairs_per_space", {}).items())
        parts.append(f"<p>{stats.get('pairs', 0)} pairs from {stats.get('images', 0)} images ({per_space}); "
                     f"{stats.get('queries_without_pair', 0)} queries without a pair.</p>")
    parts.append("<h2>Similarity in each space</h2><p>Cosines of a sample of images to their nearest neighbours, "
                 "the mined pairs' scores, and the band a pair must fall in.</p>"
                 "<img src='histograms.png' alt='similarity histograms' style='max-width:100%'>")
    parts.append(f"<h2>Mined pairs</h2><p>{min(n_pairs, len(view.query))} of {len(view.query)} pairs, spread over "
                 "the table. The query image is always the first hard negative; the others follow it. "
                 "<a href='contact_sheet.png'>contact sheet</a></p>")
    for row in viz.pair_sample(view, n_pairs):
        q, t = view.query[row], view.target[row]
        found = " ".join(f"{html.escape(s)} {x:.3f}" for s, x in zip(view.spaces[row], view.scores[row]))
        cells = [_figure(view, q, "query", tmp, thumb),
                 _figure(view, t, "target", tmp, thumb, f"<span class='scores'>{found}</span><br>")]
        negs = [h for h in view.negatives[row][1:] if h != q][:negatives]
        cells += [_figure(view, h, "negative", tmp, thumb) for h in negs]
        instructions = view.instructions.get((view.keys[q], view.keys[t]), [])
        items = "".join(f"<li>{html.escape(x)}</li>" for x in instructions) or "<li><i>not annotated</i></li>"
        parts.append(f"<div class='pair'><div class='row'>{''.join(cells)}</div><ul class='instr'>{items}</ul></div>")
    if (tmp / "training.png").is_file():
        parts.extend(_training_section(o.root / "train"))
    parts.append(f"<h2>Failures</h2><p>{len(failures)} images the pipeline could not use (kept in "
                 "manifest.parquet with their error).</p>")
    if failures:
        parts.append("<table><tr><th>image</th><th>error</th></tr>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(e or '')}</td></tr>" for k, e in failures[:200]) + "</table>")
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(o.config.read_text(encoding='utf-8'))}</pre>")
    parts.append("</body></html>\n")
    (tmp / "index.html").write_text("\n".join(parts), encoding="utf-8")


def _training_section(train: Path) -> list[str]:
    """The loss curve and, when the run evaluated, held-out Recall@K before and after."""
    result = json.loads((train / "result.json").read_text(encoding="utf-8")) if (train / "result.json").is_file() \
        else {}
    parts = [(f"<h2>Training</h2><p>{html.escape(str(result.get('model', '')))} trained for "
             f"{result.get('steps', '?')} steps (<code>megapairs train</code>; the log is train/log.jsonl).</p>")]
    heldout = train / "heldout.json"
    if heldout.is_file():
        scores = json.loads(heldout.read_text(encoding="utf-8"))
        names = sorted(scores["before"], key=lambda name: int(name.split("@")[1]))  # R@1, R@5, R@10
        parts.append(f"<p>Composed retrieval on the held-out pairs: {scores['queries']} queries (query image + "
                     "instruction) each ranking every image of the corpus, the query image left out; a query is "
                     "right at K when its target is among the first K.</p><table id='heldout'><tr><th>model</th>"
                     + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>")
        for label, key in (("untrained (frozen embeddings composed)", "before"), ("trained", "after")):
            parts.append(f"<tr><td>{label}</td>" + "".join(f"<td>{scores[key][n]:.1f}</td>" for n in names) + "</tr>")
        parts.append("</table>")
    parts.append("<img src='training.png' alt='training loss and held-out recall' style='max-width:100%'>")
    return parts
