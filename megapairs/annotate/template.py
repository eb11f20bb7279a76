"""An offline baseline annotator: instructions composed from the two images' captions.

**A baseline, not the paper's method.** MegaPairs asks a multimodal LLM to describe what a
pair shares and how it differs, then an LLM to write open-ended instructions
(:func:`megapairs.annotate.annotate`). This module needs neither: it fills fixed sentence
templates with the target's caption and with the words the two captions share and do not
share. It lets a pipeline run end to end without a server (tests, demos, a first look at
the mined pairs), and its records are labelled ``"annotator": "template"`` in the journal
header and in the dataset metadata. Do not train a model you mean to publish on them.

>>> from megapairs.annotate import template
>>> template.instructions("A red apple on a table.", "A green apple in a bowl.", seed=0)[:2]
['Find a green apple in a bowl.', 'I want a green apple in a bowl instead of what is shown here.']
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping

from .journal import Journal
from .parsing import validate_instructions
from .pipeline import AnnotationResult, _input_pairs, outcomes

__all__ = ["TEMPLATE_VERSION", "annotate_template", "instructions"]

TEMPLATE_VERSION = "template/1"

_STOP = frozenset("""a an the and or of on in at to for with by from into onto over under near its it this that
these those is are was were be been being has have had as up down out off some any very his her their our your my
""".split())
_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)


def _words(caption: str) -> list[str]:
    """Content words in order, lower-cased, each once."""
    out: dict[str, None] = {}
    for w in _WORD.findall(caption.lower()):
        if w not in _STOP and len(w) > 1:
            out.setdefault(w)
    return list(out)


def _phrase(caption: str) -> str:
    """The caption as a noun phrase inside a sentence: trimmed, no final full stop, and a
    lower-case first letter unless the first word looks like a name (two capitals)."""
    text = " ".join(caption.split()).rstrip(" .!")
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        text = text[0].lower() + text[1:]
    return text


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _mix(*values) -> int:
    """A stable 64-bit mix of ints and strings (str hash() is salted per process)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for v in values:
        h.update(str(v).encode("utf-8"))
        h.update(b"\0")
    return int.from_bytes(h.digest(), "little")


def instructions(q_caption: str, t_caption: str, seed: int = 0, key: str = "") -> list[str]:
    """Instructions for retrieving the image captioned ``t_caption`` given the image
    captioned ``q_caption``, in a deterministic order chosen by ``(seed, key)``.

    Candidates: the target's caption as a request ("Find ..."); "the same <shared words>,
    but with <target-only words>" when the captions share content words and the target has
    its own; "something like this, now with <target-only words>"; "a related picture
    showing <target caption>". Items that fail :func:`validate_instructions` are dropped.
    """
    target = _phrase(t_caption)
    q_words, t_words = _words(q_caption), _words(t_caption)
    shared = [w for w in t_words if w in q_words]
    new = [w for w in t_words if w not in q_words]
    out = [f"Find {target}."] if target else []
    if shared and new:
        out.append(f"Keep the same {_join(shared[:3])}, but with {_join(new[:4])}.")
    if new:
        out.append(f"Something like this, now with {_join(new[:4])}.")
    if target:
        out.append(f"Show a related picture of {target}.")
        out.append(f"I want {target} instead of what is shown here.")
    if shared:
        out.append(f"Another picture with {_join(shared[:3])} in it.")
    rank = {s: _mix(seed, key, s) for s in out}
    first = out[:1]  # the caption request leads: it is the most specific
    rest = sorted(out[1:], key=rank.__getitem__)
    kept, _ = validate_instructions(first + rest, min_count=1)
    return kept


def annotate_template(
    pairs,
    captions: Mapping[str, str | None],
    *,
    journal: str | os.PathLike | None = None,
    seed: int = 0,
    min_instructions: int = 3,
    progress: bool | None = None,
    keys: Iterable[str] | None = None,
) -> AnnotationResult:
    """Annotate pairs with :func:`instructions` (no server; see the module docstring).

    Parameters
    ----------
    pairs : records, pyarrow.Table or MiningResult
        As :func:`megapairs.annotate.annotate` takes them.
    captions : mapping of image key to caption
        A pair whose query or target has no caption fails with stage ``"caption"``.
    journal : path, optional
        The same JSONL journal format as :func:`megapairs.annotate.annotate` (its header
        says ``"annotator": "template"``); a resumed run skips pairs already done.
    seed : int
        Orders the instructions of each pair.
    min_instructions : int
        A pair with fewer usable instructions fails with stage ``"template"``.
    """
    from .pipeline import _MemoryJournal

    todo_pairs = _input_pairs(pairs, list(keys) if keys is not None else None)
    settings = {"annotator": "template", "template_version": TEMPLATE_VERSION, "seed": seed,
                "min_instructions": min_instructions}
    from .._version import __version__

    jr = _MemoryJournal() if journal is None else Journal(journal, settings, {"megapairs_version": __version__})
    t0 = time.monotonic()
    new_done = new_failed = 0
    try:
        state = jr.state
        # the templates are deterministic: a pair that failed would fail again
        todo = [p for p in todo_pairs if (p["q_img"], p["t_img"]) not in state.done
                and (p["q_img"], p["t_img"]) not in state.failed]
        show = len(todo) > 1000 if progress is None else bool(progress)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="annotating (template)", unit="pair")
        try:
            for p in todo:
                qc, tc = captions.get(p["q_img"]), captions.get(p["t_img"])
                missing = [k for k, c in ((p["q_img"], qc), (p["t_img"], tc)) if not c]
                if missing:
                    jr.append({"event": "failed", "q_img": p["q_img"], "t_img": p["t_img"], "stage": "caption",
                               "reason": f"no caption for {missing[0]!r}", "status": None})
                    new_failed += 1
                else:
                    items = instructions(qc, tc, seed, f"{p['q_img']}\0{p['t_img']}")
                    if len(items) < min_instructions:
                        jr.append({"event": "failed", "q_img": p["q_img"], "t_img": p["t_img"],
                                   "stage": "template", "status": None,
                                   "reason": f"{len(items)} usable instructions from the captions, "
                                             f"{min_instructions} needed"})
                        new_failed += 1
                    else:
                        jr.append({"event": "done", "q_img": p["q_img"], "t_img": p["t_img"], "hns": p["hns"],
                                   "q_text": items, "description": None, "annotator": "template"})
                        new_done += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    finally:
        jr.close()
    records, failures = outcomes(todo_pairs, jr.state)
    seconds = time.monotonic() - t0
    stats = {"pairs": len(todo_pairs), "done": len(records), "failed": len(failures), "asked": new_done + new_failed,
             "new_done": new_done, "new_failed": new_failed, "seconds": seconds}
    return AnnotationResult(records, failures, stats, {"annotate": settings, "megapairs_version": __version__})
