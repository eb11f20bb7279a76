"""The ``megapairs`` command: the pipeline from the shell (``megapairs --help``).

Every command is a thin call into :mod:`megapairs.pipeline`; this module only parses
arguments, prints what happened, and turns errors into one line and a non-zero exit
(``--verbose`` shows the traceback).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import click

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail_cleanly(fn):
    """One line on stderr and exit 1 for a user error; the traceback only with --verbose."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        verbose = (ctx.find_root().obj or {}).get("verbose", False)
        from .errors import Error

        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            resume = " with --resume" if ctx.info_name == "train" else ""
            click.echo(f"megapairs: interrupted; run the same command again{resume} to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except (ValueError, TypeError, OSError, RuntimeError, ImportError, Error) as e:
            if verbose:
                raise
            message = str(e) or type(e).__name__
            if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
                message = f"{message}: {e.filename}"
            click.echo(f"megapairs: error: {message}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


def _config_options(fn):
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="Override a setting, e.g. mining.seed=1 or spaces.caption.band=[0.6,0.9] "
                           "(repeatable; wins over the config file).")(fn)
    fn = click.option("-c", "--config", type=click.Path(dir_okay=False, path_type=Path),
                      help="TOML configuration (default: OUT/megapairs.toml, else the defaults).")(fn)
    fn = click.option("--no-progress", is_flag=True, help="No progress bars.")(fn)
    return fn


def _summary(stats: dict) -> str:
    """``key value, ...`` of the plain values; per-space dicts as ``space: key value``."""
    parts = []
    for k, v in stats.items():
        if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()) and len(v) <= 4:
            parts.append(f"{k}: " + " ".join(f"{kk} {vv}" for kk, vv in v.items()))
        elif not isinstance(v, (dict, list)):
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def _report(result) -> None:
    if result.stage == "caption" and result.stats.get("source", "mllm") != "mllm":
        click.echo(f"  caption: not needed (captions: {result.stats['source']})")
        return
    stats = _summary(result.stats)
    if result.ran:
        click.echo(f"{result.stage:>9}: done in {result.seconds:.1f} s" + (f" ({stats})" if stats else ""))
    else:
        click.echo(f"{result.stage:>9}: up to date" + (f" ({stats})" if stats else ""))


def _resolve(out: Path, config, overrides, images=None):
    from .pipeline import resolve_config

    return resolve_config(out, config, images=images, overrides=list(overrides))


@click.group(context_settings=_CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log details, and show the traceback of an error.")
@click.version_option(package_name="megapairs", prog_name="megapairs")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Build MegaPairs-style training data for multimodal retrieval from a folder of images.

    \b
    Stages, in order, over one output folder (each resumable; a rerun skips what is done):
      ingest    list the corpus into manifest.parquet (keys, captions, unreadable images)
      caption   caption images that have none with a multimodal LLM (optional)
      encode    embed every image/caption in each similarity space (embeddings/*.npy)
      mine      pairs whose similarity lies in each space's band (pairs.parquet)
      annotate  instructions for each pair (annotations.jsonl)
      export    records (JSONL, Parquet) and WebDataset image shards (dataset/)

    \b
    Examples:
      megapairs init out/                      # write a commented out/megapairs.toml
      megapairs build photos/ out/             # every stage
      megapairs build photos/ out/ --set spaces.caption.band=[0.6,0.9]
      megapairs status out/
      megapairs encode out/ --space caption    # one stage alone
      megapairs report out/                    # out/report/index.html
      megapairs demo                           # the whole run on an embedded corpus
    """
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


@main.command(context_settings=_CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), help="Set corpus.path in the new file.")
@click.option("--force", is_flag=True, help="Replace an existing megapairs.toml.")
@_fail_cleanly
def init(out: Path, images: Path | None, force: bool) -> None:
    """Write a commented default configuration to OUT/megapairs.toml.

    \b
    Examples:
      megapairs init out/ --images photos/
      $EDITOR out/megapairs.toml && megapairs build out/
    """
    from .pipeline import DEFAULT_TOML, Output, load_config

    o = Output(out)
    if o.config.exists() and not force:
        raise FileExistsError(f"{o.config} exists; pass --force to replace it")
    text = DEFAULT_TOML
    if images is not None:
        text = text.replace('path = ""                 # a folder',
                            f'path = {json.dumps(str(images))}  # a folder', 1)
    o.root.mkdir(parents=True, exist_ok=True)
    o.config.write_text(text, encoding="utf-8")
    load_config(o.config)  # the file we wrote must read back
    click.echo(f"wrote {o.config}")


@main.command(context_settings=_CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[IMAGES] OUT")
@click.option("--until", type=click.Choice(["ingest", "caption", "encode", "mine", "annotate", "export"]),
              default="export", show_default=True, help="Stop after this stage.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Encode and mine on a Ray cluster: ADDRESS is 'auto' (the cluster this machine is in), "
                   "host:6379 or ray://host:10001; none starts a local one. Sets ray.address; "
                   "needs pip install 'megapairs[ray]'.")
@_config_options
@_fail_cleanly
def build(paths: tuple[Path, ...], until: str, ray_address: str | None, config, overrides, no_progress: bool) -> None:
    """Run every stage: IMAGES (a folder, a folder of .tar shards, or a .csv/.parquet
    listing) to a MegaPairs dataset in OUT.

    IMAGES may be left out when the configuration names the corpus (corpus.path). Kill it at
    any moment and run the same command again: finished work is kept and the results equal
    those of an uninterrupted run. Change a setting and run again: only the stages it
    affects run (a new band re-mines without re-encoding).

    \b
    Examples:
      megapairs build photos/ out/
      megapairs build listing.csv out/ --set corpus.captions=column
      megapairs build photos/ out/ -c my.toml --set mining.targets_per_query=5
      megapairs build out/                      # corpus from out/megapairs.toml
      megapairs build photos/ out/ --ray        # on a local Ray cluster
      megapairs build photos/ out/ --ray auto --set ray.workers=32
    """
    from .pipeline import build as run

    if len(paths) > 2:
        raise click.UsageError("expected [IMAGES] OUT")
    images, out = (paths[0], paths[1]) if len(paths) == 2 else (None, paths[0])
    overrides = list(overrides)
    if ray_address and Path(ray_address).exists():
        raise click.UsageError(f"--ray took {ray_address!r} as the cluster's address; put --ray after the paths "
                               "or write --ray=ADDRESS")
    if ray_address is not None:
        from .cluster import require_ray

        require_ray()  # before any work: says how to install it
        if ray_address:
            overrides.append(f"ray.address={json.dumps(ray_address)}")
    run(images, out, config, overrides=overrides, progress=False if no_progress else None,
        until=until, on_stage=_report, executor="local" if ray_address is None else "ray")
    if until == "export":
        click.echo(f"  dataset: {Path(out) / 'dataset'}")
        _write_report(out)


def _write_report(out: Path) -> None:
    """The report after a run; without matplotlib, one line saying how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        click.echo("   report: skipped (pip install matplotlib, then `megapairs report OUT`)")
        return
    from .report import write_report

    click.echo(f"   report: {write_report(out).resolve()}")


@main.command(context_settings=_CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--pairs", "n_pairs", default=24, show_default=True, help="Pairs in the gallery.")
@_fail_cleanly
def report(out: Path, n_pairs: int) -> None:
    """Write OUT/report/: an HTML page of the run (counts, similarity histograms with the
    bands, a gallery of mined pairs with their instructions, failures) and contact_sheet.png.

    \b
    Example:
      megapairs report out/ && xdg-open out/report/index.html
    """
    from .report import write_report

    click.echo(f"report: {write_report(out, n_pairs=n_pairs)}")


@main.command(context_settings=_CONTEXT)
@click.argument("out", default="megapairs-demo", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--clip", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A CLIP checkpoint folder: adds the CLIP-image space.")
@click.option("--dinov2", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A DINOv2 checkpoint folder: adds the DINOv2 space.")
@click.option("--llm-url", help="An OpenAI-compatible server: annotate with the MLLM + LLM method.")
@click.option("--mllm-model", help="Multimodal model on that server (default: MEGAPAIRS_MLLM_MODEL).")
@click.option("--llm-model", help="Text model on that server (default: MEGAPAIRS_LLM_MODEL).")
@click.option("--train", "train_steps", is_flag=False, flag_value=300, type=click.IntRange(min=1), default=None,
              metavar="[STEPS]", help="Then train the adapter on what was mined (default 300 steps; needs "
                                      "PyTorch) and show held-out recall before and after in the report.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_fail_cleanly
def demo(out: Path, clip, dinov2, llm_url, mllm_model, llm_model, train_steps: int | None, no_progress: bool) -> None:
    """Build a MegaPairs dataset from Debian's tuxpaint stamps (photos and drawings with
    English descriptions) into OUT (default ./megapairs-demo) and write its report.

    The caption space uses the real all-MiniLM-L6-v2. Image spaces join only with real
    weights (--clip, --dinov2). Annotation uses --llm-url when given, else the offline
    template baseline.

    \b
    Examples:
      megapairs demo
      megapairs demo --clip ~/models/clip-vit-base-patch16 --dinov2 ~/models/dinov2-base
      megapairs demo --llm-url http://localhost:8000/v1 --mllm-model Qwen2-VL-7B-Instruct --llm-model Llama-3-8B
      megapairs demo --train
    """
    from .pipeline import build as run
    from .pipeline.demo import demo_config

    cfg, notes = demo_config(clip=clip, dinov2=dinov2, llm_url=llm_url, mllm_model=mllm_model, llm_model=llm_model)
    for line in notes:
        click.echo(f"demo: {line}")
    run(None, out, cfg, progress=False if no_progress else None, on_stage=_report)
    click.echo(f"  dataset: {Path(out) / 'dataset'}")
    if train_steps is not None:
        import shutil

        from .training.loop import train_dir

        shutil.rmtree(train_dir(out), ignore_errors=True)  # the demo trains anew each time
        _train_summary(_run_training(out, None, [f"train.steps={train_steps}"], resume=False,
                                     no_progress=no_progress))
    _write_report(out)


def _run_training(out: Path, config, overrides, resume: bool, no_progress: bool):
    from .training.loop import train

    return train(out, config, overrides=list(overrides), resume=resume, progress=False if no_progress else None)


def _train_summary(result) -> None:
    start = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    click.echo(f"  train: {result.steps} steps{start} in {result.seconds:.1f} s, last loss {result.loss:.4f}")
    click.echo(f"  model: {result.model_dir}")
    if result.heldout:
        h = result.heldout
        click.echo(f"  held-out pairs ({h['queries']} queries): " + ", ".join(
            f"{k} {h['before'][k]:.1f} -> {h['after'][k]:.1f}" for k in h["after"]))


@main.command(context_settings=_CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in OUT/train/checkpoints.")
@_config_options
@_fail_cleanly
def train(out: Path, resume: bool, config, overrides, no_progress: bool) -> None:
    """Train MMRet on the dataset in OUT (the [train] section of OUT/megapairs.toml).

    The default model is an adapter on the embeddings `megapairs encode` cached (minutes on
    a CPU); train.model=clip fine-tunes a whole CLIP (train.init). Checkpoints go to
    OUT/train/checkpoints every train.save_every steps and on Ctrl-C; --resume continues
    exactly where a run stopped. The trained model is OUT/train/model; at the end the
    held-out pairs are scored before and after (OUT/train/heldout.json). Needs PyTorch:
    pip install 'megapairs[train]'.

    \b
    Examples:
      megapairs train out/
      megapairs train out/ --set train.steps=1000 --set train.batch_size=128
      megapairs train out/ --resume
      megapairs train out/ --set train.model=clip --set train.init=openai/clip-vit-base-patch16 \\
          --set train.sub_batch=32 --set train.device=cuda
    """
    _train_summary(_run_training(out, config, overrides, resume, no_progress))


def _stage_command(name: str, summary: str, example: str):
    @main.command(name=name, context_settings=_CONTEXT, help=f"{summary}\n\n\b\nExample:\n  {example}")
    @click.argument("out", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--images", type=click.Path(path_type=Path), help="The corpus (sets corpus.path).")
    @_config_options
    @_fail_cleanly
    def command(out: Path, images, config, overrides, no_progress: bool, **extra) -> None:
        from . import pipeline

        cfg = _resolve(out, config, overrides, images)
        kwargs = {"progress": False if no_progress else None}
        if extra.get("space"):
            kwargs["spaces"] = list(extra["space"])
        _report(getattr(pipeline, name)(out, cfg, **kwargs))

    return command


ingest = _stage_command("ingest", "List the corpus into OUT/manifest.parquet (unreadable images are kept, "
                                  "marked with their error).", "megapairs ingest out/ --images photos/")
caption = _stage_command("caption", "Caption the images that have none with a multimodal LLM on an "
                                    "OpenAI-compatible server (only with corpus.captions = \"mllm\").",
                         "megapairs caption out/ --set caption.api_base=http://localhost:8000/v1")
encode = _stage_command("encode", "Embed every image (and caption) in each similarity space into "
                                  "OUT/embeddings/<space>.npy; resumes at the first unfinished batch.",
                        "megapairs encode out/ --space caption")
encode = click.option("--space", multiple=True, help="Only this space (repeatable).")(encode)
mine = _stage_command("mine", "Mine pairs inside each space's band into OUT/pairs.parquet.",
                      "megapairs mine out/ --set spaces.caption.band=[0.6,0.9]")
annotate = _stage_command("annotate", "Write instructions for the mined pairs into OUT/annotations.jsonl "
                                      "(template baseline offline, or an OpenAI-compatible server).",
                          "megapairs annotate out/ --set annotate.annotator=openai "
                          "--set annotate.api_base=http://localhost:8000/v1")
export = _stage_command("export", "Write OUT/dataset/: records.jsonl, records.parquet and WebDataset shards.",
                        "megapairs export out/ --set export.resize=512")


@main.command(context_settings=_CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_fail_cleanly
def status(out: Path, as_json: bool) -> None:
    """What each stage has done in OUT.

    \b
    Example:
      megapairs status out/
    """
    from .pipeline import status as get

    rows = get(out)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        stats = _summary(r["stats"])
        when = f" at {r['finished']}" if r["finished"] else ""
        click.echo(f"{r['stage']:<20} {r['state']:<8}{when}" + (f"  ({stats})" if stats else ""))


@main.command(context_settings=_CONTEXT)
@_fail_cleanly
def info() -> None:
    """Versions, oneDNN's runtime and ISA, threads (paste it into bug reports)."""
    from ._config import show_config

    show_config()


# --------------------------------------------------------------------------- eval


class EvalBenchmark(NamedTuple):
    """What ``megapairs eval BENCHMARK`` runs; one entry of :data:`EVAL_BENCHMARKS`.

    Attributes
    ----------
    run : callable
        ``run(model, root, split=, batch_size=, submission_path=, progress=, num_threads=, **options)``
        -> ``{metric: value in percent}``; empty when the split's labels are hidden and only
        the submission was written. ``model`` is what :func:`megapairs.evaluation.models.load_model`
        returns; ``split=None`` means :attr:`default_split`.
    options : tuple of str
        The ``--option`` keys it takes (passed to ``run`` as keyword arguments).
    default_split : str, optional
        The split run without ``--split`` (printed in the help and written in the JSON).
    submission_files : callable, optional
        ``files(path)``: the files ``--submission path`` writes; None when the benchmark has
        no test server.
    server : str, optional
        Where those files are uploaded.
    loads_model : bool
        True: ``run`` gets the model :func:`~megapairs.evaluation.models.load_model` loaded
        from ``--model`` (required). False: ``run`` gets the ``--model`` text itself, or None
        when it is left out (the held-out task loads adapters and CLIPs itself, and scores
        the untrained baseline without one).
    """

    run: Callable[..., dict[str, float]]
    options: tuple[str, ...]
    default_split: str | None = None
    submission_files: Callable[[Path], tuple[Path, ...]] | None = None
    server: str | None = None
    loads_model: bool = True


def _evaluation_benchmark(name: str) -> EvalBenchmark:
    """A benchmark of :func:`megapairs.evaluation.evaluate`."""
    from .evaluation import BENCHMARKS, REPORTED_SPLITS
    from .evaluation.submission import cirr_subset_path

    def run(model, root: Path, **kwargs) -> dict[str, float]:
        from .evaluation import evaluate

        return evaluate(model, name, root, **kwargs)

    servers = {"circo": ((lambda path: (path,)), "https://circo.micc.unifi.it/"),
               "cirr": ((lambda path: (path, cirr_subset_path(path))), "https://cirr.cecs.anu.edu.au/")}
    files, server = servers.get(name, (None, None))
    return EvalBenchmark(run, BENCHMARKS[name], REPORTED_SPLITS[name], files, server)


def _heldout_benchmark() -> EvalBenchmark:
    """Composed retrieval on the held-out mined pairs of a pipeline output folder (ROOT)."""

    def run(model, root: Path, *, split=None, batch_size=None, submission_path=None, progress=None,
            num_threads=None) -> dict[str, float]:
        from .evaluation.heldout import evaluate_heldout

        if split not in (None, "heldout"):
            raise ValueError(f"the held-out task has one split ('heldout'), got {split!r}")
        if submission_path is not None:
            raise ValueError("--submission: the held-out task has no test server")
        return evaluate_heldout(root, model, num_threads=num_threads, progress=progress)

    return EvalBenchmark(run, (), "heldout", loads_model=False)


def _evaluation_benchmarks() -> dict[str, EvalBenchmark]:
    from .evaluation import BENCHMARKS

    benchmarks = {name: _evaluation_benchmark(name) for name in BENCHMARKS}
    # the same task under the demo corpus's name: `megapairs eval tuxpaint megapairs-demo`
    benchmarks["heldout"] = benchmarks["tuxpaint"] = _heldout_benchmark()
    return benchmarks


#: ``megapairs eval`` benchmark name -> how to run it. Another benchmark (one not in
#: megapairs.evaluation) is one more entry; the command, its help and its output follow.
EVAL_BENCHMARKS: dict[str, EvalBenchmark] = _evaluation_benchmarks()


def _eval_help() -> str:
    width = max(map(len, EVAL_BENCHMARKS))
    split_width = max(len(b.default_split or "-") for b in EVAL_BENCHMARKS.values())
    rows = "\n".join(f"  {name:<{width}}  {b.default_split or '-':<{split_width}}  {', '.join(b.options)}"
                     for name, b in EVAL_BENCHMARKS.items())
    return f"""Evaluate the retriever at --model on BENCHMARK, from its local copy at ROOT, scored as the
benchmark's official code scores it; the metrics (percent) print as a table.

\b
BENCHMARK, its default split, and its --option keys:
{rows}

heldout (alias tuxpaint) is composed retrieval on the pairs `megapairs train` held out of a
pipeline output folder ROOT; --model is then a trained adapter (OUT/train/model) or a CLIP,
and without --model the untrained baseline (the frozen embeddings composed) is scored.

ROOT is laid out as the benchmark ships (docs/evaluation.md). CIRCO test and CIRR test1
labels are hidden: --submission FILE writes the server's file (CIRR: FILE and
<stem>_subset.json beside it), or use --split val for scores here. --option values are
JSON when they parse as JSON (true, 3, ["dress"]), else the text as it is.

\b
Examples:
  megapairs eval cirr /data/CIRR --model BAAI/BGE-VL-base --split val
  megapairs eval circo /data/CIRCO --model BAAI/BGE-VL-base --submission circo_test.json
  megapairs eval fashioniq /data/fashionIQ_dataset --model ~/models/bge-vl-base \\
      --option 'categories=["dress"]' --option caption_style=mbeir --json fiq.json
  megapairs eval mbeir /data/M-BEIR --model BAAI/BGE-VL-base --option 'tasks=["cirr_task7"]'
  megapairs eval genecis /data/genecis --model ~/models/clip --option check_images=false
  megapairs eval tuxpaint megapairs-demo --model megapairs-demo/train/model
"""


#: Python spellings that are not JSON: as text they would pass as truthy strings.
_PYTHON_SPELLINGS = {"True": "true", "False": "false", "None": "null"}


def _parse_options(pairs: tuple[str, ...], benchmark: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> keyword arguments; VALUE as JSON when it parses, else the text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE, e.g. check_images=false")
        if key not in allowed:
            raise ValueError(f"--option {key}: {benchmark} takes no such option; its options are "
                             f"{', '.join(allowed)}")
        if key in out:
            raise ValueError(f"--option {key} is given twice")
        if text.strip() in _PYTHON_SPELLINGS:
            raise ValueError(f"--option {key}={text.strip()}: write it as JSON, {key}={_PYTHON_SPELLINGS[text.strip()]}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _metrics_table(metrics: dict[str, float]) -> str:
    """Two aligned columns, metric and value (2 decimals)."""
    width = max(len("metric"), *map(len, metrics))
    lines = [f"{'metric':<{width}}  {'value':>7}"]
    lines += [f"{name:<{width}}  {value:>7.2f}" for name, value in metrics.items()]
    return "\n".join(lines)


@main.command(name="eval", context_settings=_CONTEXT, help=_eval_help())
@click.argument("benchmark")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--model", "model_path", metavar="PATH",
              help="A CLIP checkpoint: a folder (Hugging Face or OpenCLIP layout) or a hub id; for heldout "
                   "also an adapter folder (optional there).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="The encoders' compute precision.")
@click.option("--split", help="Default: the split papers report (listed above).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Items per model call.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads of the encoders and the search (default: all cores).")
@click.option("--submission", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="CIRCO / CIRR: write the test server's file(s) here.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A loader option of BENCHMARK, e.g. 'categories=[\"dress\"]' or check_images=false (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the results as JSON (benchmark, split, model, metrics, version, date).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_fail_cleanly
def eval_command(benchmark: str, root: Path, model_path: str, precision: str, split: str | None, batch_size: int,
                 threads: int | None, submission: Path | None, options: tuple[str, ...], json_path: Path | None,
                 no_progress: bool) -> None:
    from datetime import datetime, timezone

    from . import __version__, set_num_threads
    from .evaluation.models import load_model

    entry = EVAL_BENCHMARKS.get(benchmark)
    if entry is None:
        raise ValueError(f"unknown benchmark {benchmark!r}; the benchmarks are {', '.join(EVAL_BENCHMARKS)}")
    kwargs = _parse_options(options, benchmark, entry.options)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark root '{root}' is not a directory")
    if model_path is None and entry.loads_model:
        raise ValueError(f"{benchmark} needs --model PATH (a CLIP checkpoint folder or hub id)")
    if threads is not None:
        set_num_threads(threads)
    # the slow step last: every cheap check is done
    model = load_model(model_path, precision) if entry.loads_model else model_path
    if submission is not None and entry.submission_files is not None:  # without a server, run() says so
        submission.parent.mkdir(parents=True, exist_ok=True)
    metrics = entry.run(model, root, split=split, batch_size=batch_size, submission_path=submission,
                        progress=False if no_progress else None, num_threads=threads, **kwargs)
    split = split if split is not None else entry.default_split
    files: tuple[Path, ...] = ()
    if submission is not None:
        files = entry.submission_files(submission) if entry.submission_files else (submission,)
    if metrics:
        click.echo(_metrics_table(metrics))
    else:
        click.echo(f"{benchmark} {split}: no scores here" + (" (the labels are hidden)" if files else ""))
    if files:
        where = f" (upload to {entry.server})" if entry.server else ""
        click.echo("submission: " + ", ".join(str(f.resolve()) for f in files) + where)
    if json_path is not None:
        record = {"benchmark": benchmark, "split": split, "model": model_path, "precision": precision,
                  "options": kwargs, "metrics": metrics, "submission": [str(f) for f in files],
                  "megapairs_version": __version__,
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        click.echo(f"results: {json_path.resolve()}")


if __name__ == "__main__":  # pragma: no cover
    main()
