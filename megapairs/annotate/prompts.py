"""Prompts of the two annotation stages, read from versioned package data.

A prompt version is a folder ``megapairs/annotate/prompts/<version>/`` holding

- ``mllm.txt``: the multimodal stage's instruction, shown after the two images, with a
  ``$word_budget`` placeholder;
- ``llm.txt``: the text stage's prompt, with ``$demonstrations`` and ``$description``;
- ``demonstrations.json``: ``{"version": ..., "demonstrations": [{"id", "connection",
  "queries"}, ...]}``, the pool the text stage samples its examples from (50 in ``v1``).

A version is never edited once released: a change goes into a new folder. The version
string and a SHA-256 of the three files go into every journal and output, so data made with
different prompts cannot be mixed by accident.

Every random choice for a pair (its word budget, the demonstrations of each text-stage
call, the request seeds) is drawn from a generator seeded by ``(seed, q_img, t_img,
purpose)``, so it does not depend on the order pairs are processed in, on concurrency or
on how often a run was resumed.

>>> from megapairs.annotate import prompts
>>> p = prompts.load_prompts("v1")
>>> plan = prompts.plan_pair(p, seed=0, q_img="a.jpg", t_img="b.jpg")   # doctest: +SKIP
>>> plan.word_budget, [d.id for d in plan.demonstrations]              # doctest: +SKIP
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "DEFAULT_PROMPT_VERSION",
    "Demonstration",
    "PairPlan",
    "PromptSet",
    "image_data_url",
    "llm_messages",
    "load_prompts",
    "mllm_messages",
    "pair_rng",
    "plan_pair",
    "sample_demonstrations",
    "sample_word_budget",
]

DEFAULT_PROMPT_VERSION = "v1"
#: The paper draws the MLLM's word limit per pair from this range (inclusive).
WORD_BUDGET = (60, 100)
#: Demonstrations shown to the LLM per call.
NUM_DEMONSTRATIONS = 5

_FILES = ("mllm.txt", "llm.txt", "demonstrations.json")
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True)
class Demonstration:
    """One worked example for the text stage: an MLLM-style comparison and its queries."""

    id: str
    connection: str
    queries: tuple[str, ...]


@dataclass(frozen=True)
class PromptSet:
    """The templates and demonstration pool of one prompt version.

    Attributes
    ----------
    version : str
        Folder name, e.g. ``"v1"``.
    mllm_template, llm_template : str
        ``string.Template`` texts (``$word_budget``; ``$demonstrations``, ``$description``).
    demonstrations : tuple of Demonstration
        The pool, in file order.
    digest : str
        SHA-256 (hex) over the three files, recorded with every output.
    """

    version: str
    mllm_template: str
    llm_template: str
    demonstrations: tuple[Demonstration, ...]
    digest: str

    def mllm_text(self, word_budget: int) -> str:
        """The multimodal stage's instruction for a word limit of ``word_budget``."""
        return string.Template(self.mllm_template).substitute(word_budget=int(word_budget)).strip()

    def llm_text(self, description: str, demonstrations: Sequence[Demonstration]) -> str:
        """The text stage's prompt: the demonstrations, then the pair's description."""
        blocks = "\n\n".join(f"Comparison: {d.connection}\nQueries: {json.dumps(list(d.queries), ensure_ascii=False)}"
                             for d in demonstrations)
        description = " ".join(description.split())
        return string.Template(self.llm_template).substitute(demonstrations=blocks, description=description).strip()


@functools.cache
def load_prompts(version: str = DEFAULT_PROMPT_VERSION) -> PromptSet:
    """Read prompt version ``version`` from the package data.

    Raises
    ------
    ValueError
        If no such version ships with the package, or its files are malformed (naming the file).
    """
    if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
        raise ValueError(f"prompt version must be a folder name such as 'v1', got {version!r}")
    folder = resources.files("megapairs.annotate").joinpath("prompts", version)
    if not folder.is_dir():
        shipped = sorted(p.name for p in resources.files("megapairs.annotate").joinpath("prompts").iterdir()
                         if p.is_dir() and not p.name.startswith(("_", ".")))
        raise ValueError(f"unknown prompt version {version!r}; this package ships {shipped}")
    raw = {}
    for name in _FILES:
        entry = folder.joinpath(name)
        if not entry.is_file():
            raise ValueError(f"prompt version {version!r} has no {name}")
        raw[name] = entry.read_bytes()
    digest = hashlib.sha256(b"".join(hashlib.sha256(raw[n]).digest() for n in _FILES)).hexdigest()
    mllm, llm = raw["mllm.txt"].decode("utf-8"), raw["llm.txt"].decode("utf-8")
    for name, text, keys in (("mllm.txt", mllm, ("word_budget",)), ("llm.txt", llm, ("demonstrations", "description"))):
        found = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)} - {None}
        if found != set(keys):
            raise ValueError(f"prompts/{version}/{name}: placeholders {sorted(found)}, expected {sorted(keys)}")
    try:
        data = json.loads(raw["demonstrations.json"])
        demos = tuple(Demonstration(str(d["id"]), str(d["connection"]), tuple(str(q) for q in d["queries"]))
                      for d in data["demonstrations"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"prompts/{version}/demonstrations.json is malformed: {e}") from None
    ids = [d.id for d in demos]
    if len(set(ids)) != len(ids):
        raise ValueError(f"prompts/{version}/demonstrations.json repeats a demonstration id")
    return PromptSet(version, mllm, llm, demos, digest)


# --------------------------------------------------------------------------- per-pair choices


def pair_rng(seed: int, q_img: str, t_img: str, purpose: str) -> random.Random:
    """A generator for one pair and one purpose (``"budget"``, ``"llm/0"``, ...): a pure
    function of its arguments, independent of processing order."""
    material = json.dumps([int(seed), str(q_img), str(t_img), str(purpose)]).encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))


def sample_word_budget(rng: random.Random, budget: tuple[int, int] = WORD_BUDGET) -> int:
    """A word limit drawn uniformly from ``budget`` (inclusive both ends)."""
    lo, hi = budget
    return rng.randint(lo, hi)


def sample_demonstrations(rng: random.Random, pool: Sequence[Demonstration], k: int = NUM_DEMONSTRATIONS
                          ) -> list[Demonstration]:
    """``k`` distinct demonstrations drawn without replacement from ``pool``."""
    if not 1 <= k <= len(pool):
        raise ValueError(f"cannot draw {k} demonstrations from a pool of {len(pool)}")
    return rng.sample(list(pool), k)


@dataclass(frozen=True)
class PairPlan:
    """The choices made for one pair before any request: word budget and the seeds."""

    word_budget: int
    demonstrations: tuple[Demonstration, ...]  # for the first text-stage call
    mllm_seed: int


def request_seed(seed: int, q_img: str, t_img: str, purpose: str) -> int:
    """A 31-bit ``seed`` to send with a request (servers that honour it sample reproducibly)."""
    return pair_rng(seed, q_img, t_img, "seed/" + purpose).getrandbits(31)


def demonstrations_for_call(prompts: PromptSet, seed: int, q_img: str, t_img: str, call: int,
                            k: int = NUM_DEMONSTRATIONS) -> list[Demonstration]:
    """The demonstrations of the pair's ``call``-th text-stage request (0-based): drawn anew
    for each call, as the paper samples them per call."""
    return sample_demonstrations(pair_rng(seed, q_img, t_img, f"llm/{call}"), prompts.demonstrations, k)


def plan_pair(prompts: PromptSet, seed: int, q_img: str, t_img: str, budget: tuple[int, int] = WORD_BUDGET,
              num_demonstrations: int = NUM_DEMONSTRATIONS) -> PairPlan:
    """Word budget, first demonstrations and the MLLM request seed for the pair (q_img, t_img)."""
    return PairPlan(
        word_budget=sample_word_budget(pair_rng(seed, q_img, t_img, "budget"), budget),
        demonstrations=tuple(demonstrations_for_call(prompts, seed, q_img, t_img, 0, num_demonstrations)),
        mllm_seed=request_seed(seed, q_img, t_img, "mllm/0"),
    )


# --------------------------------------------------------------------------- messages


def image_mime(data: bytes) -> str | None:
    """The MIME type of JPEG, PNG, GIF or WebP bytes, else None."""
    head = bytes(data[:16])
    for magic, mime in _IMAGE_MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def prepare_image(data: bytes, max_side: int | None = None, quality: int = 90) -> tuple[bytes, str]:
    """Bytes and MIME type as sent to a server.

    JPEG, PNG, GIF and WebP within ``max_side`` go as they are; anything else, or anything
    larger, is decoded with Pillow, shrunk to fit ``max_side`` (aspect kept) and re-encoded
    as JPEG.
    """
    data = bytes(data)
    mime = image_mime(data)
    if mime is not None and max_side is None:
        return data, mime
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if mime is not None and max(im.size) <= max_side:
            return data, mime
        im = im.convert("RGB")
        if max_side is not None:
            im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), "image/jpeg"


def image_data_url(data: bytes, max_side: int | None = None) -> str:
    """``data:<mime>;base64,...`` for image bytes (see :func:`prepare_image`)."""
    payload, mime = prepare_image(data, max_side)
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def mllm_messages(prompts: PromptSet, source: bytes, target: bytes, word_budget: int,
                  max_side: int | None = None) -> list[dict]:
    """Chat-completions messages for the multimodal stage: one user turn holding
    ``"Source Image:"``, the source image, ``"Target Image:"``, the target image, then the
    instruction with the pair's word budget. Images are base64 data URLs."""
    return [{"role": "user", "content": [
        {"type": "text", "text": "Source Image:"},
        {"type": "image_url", "image_url": {"url": image_data_url(source, max_side)}},
        {"type": "text", "text": "Target Image:"},
        {"type": "image_url", "image_url": {"url": image_data_url(target, max_side)}},
        {"type": "text", "text": prompts.mllm_text(word_budget)},
    ]}]


def llm_messages(prompts: PromptSet, description: str, demonstrations: Sequence[Demonstration]) -> list[dict]:
    """Chat-completions messages for the text stage: one user turn with the prompt."""
    return [{"role": "user", "content": prompts.llm_text(description, demonstrations)}]
