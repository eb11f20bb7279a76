"""The pipeline's one configuration: a TOML file, defaults, and overrides.

Precedence is flags > file > defaults. :func:`load_config` reads a file over the defaults,
:func:`apply_overrides` applies ``section.key=value`` strings (what ``--set`` passes) and
:func:`save_config` writes the resolved result, which a run keeps as ``OUT/megapairs.toml``.
:data:`DEFAULT_TOML` is the commented file ``megapairs init`` writes.

Every check of a setting's meaning lives in :func:`validate`; stages read the validated
dataclasses and never re-check.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._args import PRECISIONS
from ..errors import ConfigError, FormatError
from ..limits import check_nesting
from ..training.schedule import SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_TOML",
    "AnnotateConfig",
    "CaptionConfig",
    "Config",
    "ConfigError",
    "CorpusConfig",
    "EncodeConfig",
    "ExportConfig",
    "MiningConfig",
    "SpaceConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "save_config",
    "validate",
]

SPACE_KINDS = ("clip_image", "dinov2", "caption")
CORPUS_KINDS = ("auto", "folder", "shards", "listing")
CAPTION_SOURCES = ("sidecar", "column", "none", "mllm")
ANNOTATORS = ("template", "openai")
EXPORT_FORMATS = ("jsonl", "parquet", "shards")
TRAIN_MODELS = ("adapter", "clip")
#: train.lr = 0 means this rate: the adapter's maps move far from the identity in a few hundred
#: steps; a CLIP fine-tune uses the paper's 5e-6.
DEFAULT_LR = {"adapter": 1e-3, "clip": 5e-6}
POOLINGS = ("cls", "cls+mean", "mean")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class CorpusConfig:
    path: str = ""
    kind: str = "auto"
    captions: str = "sidecar"
    path_column: str = "path"
    caption_column: str = "caption"
    root: str = ""  # listing only: the folder the listed paths are relative to (default: the listing's)


@dataclass
class CaptionConfig:
    api_base: str = ""
    model: str = ""
    prompt: str = "Describe this image in one sentence."
    max_tokens: int = 96
    concurrency: int = 8
    max_image_side: int = 768


@dataclass
class SpaceConfig:
    name: str = ""
    kind: str = "caption"
    model: str = ""
    band: list[float] = field(default_factory=lambda: [0.8, 0.96])
    precision: str = "fp32"
    batch_size: int = 0  # 0: the encode section's batch size
    pooling: str = "cls"  # dinov2 only


@dataclass
class EncodeConfig:
    batch_size: int = 32  # inputs read, encoded and recorded per step (the unit a killed run resumes at)
    forward_batch: int = 8  # images per forward pass of an image tower: bounds the activation memory
    num_threads: int = 0  # 0: megapairs.get_num_threads()


@dataclass
class MiningConfig:
    targets_per_query: int = 3
    hard_negatives: int = 5
    k: int = 50
    seed: int = 0


@dataclass
class AnnotateConfig:
    annotator: str = "template"
    api_base: str = ""
    llm_api_base: str = ""
    servers: list[str] = field(default_factory=list)  # several servers of the same models (overrides api_base)
    mllm_model: str = ""
    llm_model: str = ""
    concurrency: int = 8
    seed: int = 0
    max_image_side: int = 1024
    prompt_version: str = "v1"


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: list(EXPORT_FORMATS))
    shard_max_count: int = 10_000
    resize: int = 0  # 0: images copied as they are; 512 gives the released MegaPairs size


@dataclass
class RayConfig:
    """Used with ``megapairs build --ray`` (executor="ray"); never changes a result."""

    address: str = ""  # "": a local cluster; "auto": the running one; or host:port / ray://host:10001
    workers: int = 2  # encoder actors per space, and kNN tasks at a time
    cpus_per_worker: int = 1  # CPUs (and threads) of each actor and task
    batch_size: int = 256  # manifest rows per encode task: the unit redone when a worker dies
    shard_rows: int = 50_000  # corpus rows per kNN task: bounds a task's memory
    query_rows: int = 8192  # query rows per kNN task


@dataclass
class TrainConfig:
    model: str = "adapter"  # adapter: linear maps on cached embeddings; clip: full fine-tune
    space: str = ""  # adapter: the space whose cached vectors stand for the images (default: the first)
    text_model: str = ""  # adapter: the instruction encoder (default: the space's own text model)
    init: str = ""  # clip: the CLIP checkpoint to fine-tune (a folder or hub id)
    steps: int = 300
    batch_size: int = 64  # queries per step; each brings 1 + negatives candidates
    sub_batch: int = 0  # GradCache: rows per forward (0: the whole batch at once)
    accumulation: int = 1  # batches whose gradients are summed before one optimiser step
    negatives: int = 4  # hard negatives per query, the query image first (the paper: 4 for CLIP)
    lr: float = 0.0  # 0: DEFAULT_LR of the model
    weight_decay: float = 0.01
    warmup: int = 0  # optimiser steps of linear warm-up
    schedule: str = "cosine"
    temperature: float = 0.02
    holdout: float = 0.1  # fraction of query images kept out of training, for `megapairs eval heldout`
    evaluate: bool = True  # score the held-out pairs before and after training (train/heldout.json)
    seed: int = 0
    save_every: int = 100
    keep: int = 2  # checkpoints kept
    num_workers: int = 0  # DataLoader workers
    num_threads: int = 0  # 0: all cores
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    tensorboard: bool = False

    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.model]


@dataclass
class Config:
    """The resolved configuration of one output folder (see ``docs/pipeline.md``)."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    spaces: list[SpaceConfig] = field(default_factory=list)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def space(self, name: str) -> SpaceConfig:
        for s in self.spaces:
            if s.name == name:
                return s
        raise KeyError(name)

    def space_batch_size(self, space: SpaceConfig) -> int:
        return space.batch_size or self.encode.batch_size


_SECTIONS = {"corpus": CorpusConfig, "caption": CaptionConfig, "encode": EncodeConfig, "mining": MiningConfig,
             "annotate": AnnotateConfig, "export": ExportConfig, "train": TrainConfig, "ray": RayConfig}


DEFAULT_TOML = '''\
# megapairs pipeline configuration. Every key is optional; what is left out takes the default
# shown. Flags on the command line win over this file (`--set section.key=value`).

[corpus]
path = ""                 # a folder of images (walked recursively), a folder of WebDataset .tar
                          # shards (image + .txt members), or a .csv/.parquet listing of paths
kind = "auto"             # auto | folder | shards | listing
captions = "sidecar"      # sidecar: <image stem>.txt beside each image (its first line)
                          # column: the listing's caption column; none; mllm: written by the
                          # [caption] server for images without one
path_column = "path"      # listing only
caption_column = "caption"
root = ""                 # listing only: the folder paths are relative to (default: the listing's)

[caption]                 # used when corpus.captions = "mllm"
api_base = ""             # OpenAI-compatible server, e.g. http://localhost:8000/v1 (else MEGAPAIRS_API_BASE)
model = ""                # a multimodal model name (else MEGAPAIRS_MLLM_MODEL)
prompt = "Describe this image in one sentence."
max_tokens = 96
concurrency = 8
max_image_side = 768

# One table per similarity space. kind: clip_image (CLIP image tower), dinov2, or caption (a
# sentence-transformers model or a CLIP text tower over the captions). model: a local folder
# or a Hugging Face hub id. Each space has its own band (lo, hi): pairs with lo < cosine < hi.
# Caption cosines sit lower than image ones, hence a lower band. The paper mines with EVA-CLIP
# image, DINOv2 and EVA-CLIP text at (0.8, 0.96).
[[spaces]]
name = "caption"
kind = "caption"
model = "sentence-transformers/all-MiniLM-L6-v2"
band = [0.5, 0.9]
precision = "fp32"        # fp32 | bf16 (AMX where the CPU has it)

# [[spaces]]
# name = "clip_image"
# kind = "clip_image"
# model = "openai/clip-vit-base-patch16"
# band = [0.8, 0.96]
#
# [[spaces]]
# name = "dinov2"
# kind = "dinov2"
# model = "facebook/dinov2-base"
# band = [0.8, 0.96]
# pooling = "cls"         # cls | mean | cls+mean

[encode]
batch_size = 32           # inputs read, encoded and recorded per step (a killed run resumes there)
forward_batch = 8         # images per forward pass of an image tower: bounds the activation memory
                          # (ViT-B/16: ~20 MB an image); 8 is as fast as 32 on a CPU
num_threads = 0           # 0: all cores (megapairs.get_num_threads())

[mining]
targets_per_query = 3     # split across the spaces
hard_negatives = 5        # the query image first, then images retrieved for the query
k = 50                    # neighbours per query and space
seed = 0

[annotate]
annotator = "template"    # template: offline baseline from the two captions (not the paper's
                          # method); openai: MLLM description + LLM instructions on a server
api_base = ""             # else MEGAPAIRS_API_BASE / OPENAI_BASE_URL
llm_api_base = ""         # another server for the text stage (default: api_base)
servers = []              # several servers of the same models, e.g. ["http://gpu0:8000/v1",
                          # "http://gpu1:8000/v1"]: requests go to the least busy, `concurrency`
                          # per server (overrides api_base; see docs/scale.md)
mllm_model = ""           # else MEGAPAIRS_MLLM_MODEL
llm_model = ""            # else MEGAPAIRS_LLM_MODEL
concurrency = 8
seed = 0
max_image_side = 1024
prompt_version = "v1"

[export]
formats = ["jsonl", "parquet", "shards"]
shard_max_count = 10000
resize = 0                # 0 copies images as they are; 512 gives the released MegaPairs size

[train]                   # megapairs train (needs PyTorch: pip install 'megapairs[train]')
model = "adapter"         # adapter: linear maps on the cached embeddings (minutes on a CPU);
                          # clip: full fine-tune of a CLIP (a GPU job at the paper's scale)
space = ""                # adapter: the space whose embeddings stand for images (default: the first)
text_model = ""           # adapter: instruction encoder (default: the space's text model)
init = ""                 # clip: the checkpoint to fine-tune, e.g. openai/clip-vit-base-patch16
steps = 300
batch_size = 64           # queries per step (the paper: 2048 on GPUs)
sub_batch = 0             # GradCache rows per forward, for big batches in small memory (0: off)
accumulation = 1          # batches summed into one optimiser step
negatives = 4             # hard negatives per query, the query image first (the paper: 4)
lr = 0.0                  # 0: 1e-3 for the adapter, 5e-6 for clip (the paper)
weight_decay = 0.01
warmup = 0                # steps of linear warm-up, then cosine (or linear) decay to 0
schedule = "cosine"
temperature = 0.02        # the paper's tau
holdout = 0.1             # query images kept out of training for `megapairs eval heldout`
evaluate = true           # at the end, held-out Recall@1/5/10 untrained vs trained (train/heldout.json;
                          # a clip run encodes the corpus twice for it)
seed = 0
save_every = 100          # checkpoint every N steps (and on Ctrl-C / SIGTERM)
keep = 2
num_workers = 0           # DataLoader workers (clip: decoding and preprocessing)
num_threads = 0           # 0: all cores
device = "auto"           # auto | cpu | cuda | cuda:1 ...
tensorboard = false       # also log to OUT/train/tensorboard (needs the tensorboard package)

[ray]                     # megapairs build --ray [ADDRESS] (needs: pip install 'megapairs[ray]')
address = ""              # "": start a local cluster; "auto": the running one; or host:6379
workers = 2               # encoder actors per space, and kNN tasks at a time
cpus_per_worker = 1       # CPUs (and encoder threads) of each actor and task
batch_size = 256          # manifest rows per encode task: the unit redone when a worker dies
shard_rows = 50000        # corpus rows per kNN task: bounds a task's memory (rows x dims x 4 bytes)
query_rows = 8192         # query rows per kNN task
'''


# --------------------------------------------------------------------------- reading


def _check_type(where: str, value, default):
    """``value`` converted to the type of ``default`` or ConfigError naming ``where``."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            return list(value)
    else:  # pragma: no cover - every field has one of the types above
        return value
    raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")


def _fill(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting {where}.{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {k: _check_type(f"{where}.{k}", v, getattr(defaults, k)) for k, v in data.items()}
    return dataclasses.replace(defaults, **values)


def from_dict(data: dict) -> Config:
    """A :class:`Config` from parsed TOML (unknown keys and wrong types are errors)."""
    data = copy.deepcopy(data)
    unknown = sorted(set(data) - set(_SECTIONS) - {"spaces"})
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] (known: {', '.join(sorted([*_SECTIONS, 'spaces']))})")
    cfg = Config(**{name: _fill(cls, data[name], name) for name, cls in _SECTIONS.items() if name in data})
    if "spaces" in data:
        spaces = data["spaces"]
        if not isinstance(spaces, list):
            raise ConfigError(f"spaces must be an array of tables ([[spaces]]), got {spaces!r}")
        cfg.spaces = [_fill(SpaceConfig, s, f"spaces[{i}]") for i, s in enumerate(spaces)]
    else:
        cfg.spaces = [SpaceConfig(name="caption", kind="caption", model="sentence-transformers/all-MiniLM-L6-v2",
                                  band=[0.5, 0.9])]
    return cfg


def load_config(path: str | os.PathLike | None = None) -> Config:
    """The defaults, with the TOML file at ``path`` over them (not validated yet)."""
    if path is None:
        return from_dict({})
    path = Path(path)
    try:
        raw = path.read_bytes()
        check_nesting(raw, str(path))
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such config file: '{path}'") from None
    except FormatError as e:
        raise ConfigError(str(e)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _parse_value(text: str):
    """A TOML value (``3``, ``[0.5, 0.9]``, ``"x"``), else the text as a string."""
    try:
        check_nesting(text, f"value {text[:40]!r}")
        return tomllib.loads(f"v = {text}")["v"]
    except FormatError as e:
        raise ConfigError(str(e)) from None
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] | dict) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied (a new object).

    Spaces are addressed by name: ``spaces.caption.band=[0.6, 0.9]``. Values are TOML
    (``3``, ``[0.6, 0.9]``, ``"text"``); a value that is not valid TOML is taken as a string.
    """
    data = cfg.to_dict()
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, value in items:
        value = _parse_value(value) if isinstance(value, str) and not isinstance(overrides, dict) else value
        parts = key.split(".")
        if parts[0] == "spaces":
            if len(parts) != 3:
                raise ConfigError(f"override {key!r}: spaces are set as spaces.<name>.<key>")
            names = [s["name"] for s in data["spaces"]]
            if parts[1] not in names:
                raise ConfigError(f"override {key!r}: no space named {parts[1]!r} (spaces: {', '.join(names) or 'none'})")
            data["spaces"][names.index(parts[1])][parts[2]] = value
        elif len(parts) == 2 and parts[0] in data:
            data[parts[0]][parts[1]] = value
        else:
            raise ConfigError(f"override {key!r}: expected section.key (sections: {', '.join(_SECTIONS)}) "
                              "or spaces.<name>.<key>")
    return from_dict(data)


def _split_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. mining.seed=1")
    return key.strip(), value.strip()


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``cfg`` as TOML (atomically: a temporary file renamed into place)."""
    import tomli_w

    from .layout import atomic_write_bytes

    header = "# The resolved configuration of this output folder, written by megapairs.\n"
    atomic_write_bytes(Path(path), (header + tomli_w.dumps(cfg.to_dict())).encode("utf-8"))


# --------------------------------------------------------------------------- meaning


def _one_of(where: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _positive(where: str, value) -> None:
    if value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")


def _band(where: str, band) -> None:
    if (len(band) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in band)
            or any(math.isnan(x) for x in band) or not band[0] < band[1]):
        raise ConfigError(f"{where} must be [lo, hi] with lo < hi, got {band!r}")


def validate(cfg: Config) -> Config:
    """``cfg`` if every setting makes sense, else ConfigError naming the first that does not."""
    c = cfg.corpus
    _one_of("corpus.kind", c.kind, CORPUS_KINDS)
    _one_of("corpus.captions", c.captions, CAPTION_SOURCES)
    if c.captions == "column" and c.kind not in ("listing", "auto"):
        raise ConfigError("corpus.captions = 'column' needs a listing corpus (a .csv or .parquet file)")
    for key in ("max_tokens", "concurrency", "max_image_side"):
        _positive(f"caption.{key}", getattr(cfg.caption, key))
    if not cfg.spaces:
        raise ConfigError("no similarity space: add at least one [[spaces]] table")
    seen = set()
    for i, s in enumerate(cfg.spaces):
        where = f"spaces[{i}]" if not s.name else f"space {s.name!r}"
        if not _NAME.match(s.name):
            raise ConfigError(f"{where}: name must be letters, digits, '_', '-' or '.', got {s.name!r}")
        if s.name in seen:
            raise ConfigError(f"two spaces are named {s.name!r}")
        seen.add(s.name)
        _one_of(f"{where}: kind", s.kind, SPACE_KINDS)
        if not s.model:
            raise ConfigError(f"{where}: no model (a local folder or a hub id)")
        _band(f"{where}: band", s.band)
        _one_of(f"{where}: precision", s.precision, PRECISIONS)
        _one_of(f"{where}: pooling", s.pooling, POOLINGS)
        if s.batch_size < 0:
            raise ConfigError(f"{where}: batch_size must be >= 0, got {s.batch_size}")
    _positive("encode.batch_size", cfg.encode.batch_size)
    _positive("encode.forward_batch", cfg.encode.forward_batch)
    if cfg.encode.num_threads < 0:
        raise ConfigError(f"encode.num_threads must be >= 0, got {cfg.encode.num_threads}")
    m = cfg.mining
    for key in ("targets_per_query", "hard_negatives", "k"):
        _positive(f"mining.{key}", getattr(m, key))
    a = cfg.annotate
    _one_of("annotate.annotator", a.annotator, ANNOTATORS)
    for key in ("concurrency", "max_image_side"):
        _positive(f"annotate.{key}", getattr(a, key))
    for url in a.servers:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"annotate.servers: {url!r} is not an http(s) URL such as 'http://gpu0:8000/v1'")
    e = cfg.export
    for fmt in e.formats:
        _one_of("export.formats entry", fmt, EXPORT_FORMATS)
    _positive("export.shard_max_count", e.shard_max_count)
    if e.resize < 0:
        raise ConfigError(f"export.resize must be >= 0, got {e.resize}")
    for key in ("workers", "cpus_per_worker", "batch_size", "shard_rows", "query_rows"):
        _positive(f"ray.{key}", getattr(cfg.ray, key))
    _validate_train(cfg)
    return cfg


def _validate_train(cfg: Config) -> None:
    t = cfg.train
    _one_of("train.model", t.model, TRAIN_MODELS)
    _one_of("train.schedule", t.schedule, SCHEDULES)
    for key in ("steps", "batch_size", "accumulation", "negatives", "save_every", "keep"):
        _positive(f"train.{key}", getattr(t, key))
    for key in ("sub_batch", "warmup", "num_workers", "num_threads", "seed"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(t, key)}")
    for key in ("lr", "weight_decay"):
        value = getattr(t, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"train.{key} must be a number >= 0, got {value!r}")
    if not math.isfinite(t.temperature) or t.temperature <= 0:
        raise ConfigError(f"train.temperature must be a positive number, got {t.temperature!r}")
    if not 0 <= t.holdout < 1:
        raise ConfigError(f"train.holdout must be a fraction in [0, 1), got {t.holdout!r}")
    if t.warmup >= t.steps:
        raise ConfigError(f"train.warmup ({t.warmup}) must be fewer steps than train.steps ({t.steps})")
    if t.space and t.space not in [s.name for s in cfg.spaces]:
        raise ConfigError(f"train.space {t.space!r} is not a space (spaces: {', '.join(s.name for s in cfg.spaces)})")
    if t.device != "auto" and not re.match(r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$", t.device):
        raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N, mps or xpu, got {t.device!r}")
    if t.model == "clip" and not t.init:
        raise ConfigError("train.model = 'clip' needs train.init: the CLIP checkpoint to fine-tune")
