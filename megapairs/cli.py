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
from pathlib import Path

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
        from . import _core

        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("megapairs: interrupted; run the same command again to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except (ValueError, TypeError, OSError, RuntimeError, _core.Error) as e:
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
@_config_options
@_fail_cleanly
def build(paths: tuple[Path, ...], until: str, config, overrides, no_progress: bool) -> None:
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
    """
    from .pipeline import build as run

    if len(paths) > 2:
        raise click.UsageError("expected [IMAGES] OUT")
    images, out = (paths[0], paths[1]) if len(paths) == 2 else (None, paths[0])
    run(images, out, config, overrides=list(overrides), progress=False if no_progress else None,
        until=until, on_stage=_report)
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
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_fail_cleanly
def demo(out: Path, clip, dinov2, llm_url, mllm_model, llm_model, no_progress: bool) -> None:
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
    """
    from .pipeline import build as run
    from .pipeline.demo import demo_config

    cfg, notes = demo_config(clip=clip, dinov2=dinov2, llm_url=llm_url, mllm_model=mllm_model, llm_model=llm_model)
    for line in notes:
        click.echo(f"demo: {line}")
    run(None, out, cfg, progress=False if no_progress else None, on_stage=_report)
    click.echo(f"  dataset: {Path(out) / 'dataset'}")
    _write_report(out)


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


if __name__ == "__main__":  # pragma: no cover
    main()
