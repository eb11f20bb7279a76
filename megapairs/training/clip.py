"""MMRet-CLIP: a whole CLIP fine-tuned as MegaPairs trains it, on ``transformers.CLIPModel``.

The query is the sum of the *un-normalised* projected image and text features, normalised
once; a candidate is the normalised projected image feature (Φ_I, Φ_T: the towers with their
projections)::

    query     = normalise(Φ_I(q_img) + Φ_T(instruction))     # megapairs.CLIP.encode_composed
    candidate = normalise(Φ_I(image))                         # megapairs.CLIP.encode_image

trained with InfoNCE over in-batch and hard negatives at τ = 0.02 (``mp.loss.InfoNCELoss``);
CLIP's own ``logit_scale`` is not used and is frozen. Images are preprocessed in C with the
checkpoint's transform (exactly transformers' ``CLIPImageProcessor``), texts tokenised in C
(exactly the Hugging Face / open_clip CLIP tokenizer), so what the model is trained on is what
:class:`megapairs.CLIP` feeds it at inference. A saved model is a Hugging Face CLIP folder that
:class:`megapairs.CLIP` (the C encoders), transformers and :meth:`MMRetCLIP.from_pretrained` load.

>>> model = MMRetCLIP.from_pretrained("openai/clip-vit-base-patch16")         # doctest: +SKIP
>>> loader = DataLoader(examples, batch_size=64, num_workers=2,               # doctest: +SKIP
...                     collate_fn=model.collate_fn("photos/"))
>>> for queries, candidates in loader:                                        # doctest: +SKIP
...     mp.training.grad_cache_step(model.encode_query, model.encode_candidates, queries, candidates,
...                                 mp.loss.InfoNCELoss(0.02), sub_batch=16, group_size=5)
...     optimizer.step(); optimizer.zero_grad()
>>> model.save_pretrained("out/train/model")                                  # doctest: +SKIP
>>> mp.CLIP.from_pretrained("out/train/model").encode_composed(["a.jpg"], ["the same, at night"])  # doctest: +SKIP

Needs PyTorch and transformers (``pip install 'megapairs[train]'``); ``import megapairs``
never imports this module.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import images as _images
from ..dataset import ShardReader, image_loader
from ..errors import FormatError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPConfig, CLIPModel

__all__ = ["TOKENIZER_FILES", "CLIPCollate", "MMRetCLIP", "vit_b16_config"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
#: Files copied from the source checkpoint into a saved model, when it has them: the
#: tokenizer's and the image processor's (they decide how texts and images are read).
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "bpe_simple_vocab_16e6.txt.gz",
                   "preprocessor_config.json", "processor_config.json")
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# Tensors older checkpoints saved that current CLIPModels keep as non-persistent buffers.
_IGNORED_SUFFIXES = ("position_ids",)


def vit_b16_config() -> CLIPConfig:
    """The ``CLIPConfig`` of OpenAI's ViT-B/16 CLIP (``openai/clip-vit-base-patch16``): vision
    ViT-B/16 at 224 px (768 wide, 12 layers, 12 heads), text transformer 512 wide, 12 layers,
    8 heads, 77 tokens, 512-d projections, quick GELU. For :meth:`MMRetCLIP.from_config`
    (random initialisation: benchmarks, tests)."""
    from transformers import CLIPConfig

    return CLIPConfig(
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "hidden_act": "quick_gelu"},
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                     "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
                     "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1},
        projection_dim=512)


# --------------------------------------------------------------------------- collation


def _with_key(exc: BaseException, key: str) -> BaseException:
    """``exc``'s kind with a message that names the image ``key``."""
    if isinstance(exc, KeyError):
        return KeyError(f"image {key!r} is not in the image source given to collate_fn")
    message = f"image {key!r}: {exc}"
    if isinstance(exc, (FileNotFoundError, FormatError)) or type(exc) in (OSError, ValueError, TypeError):
        return type(exc)(message)
    return ValueError(message)


class _Shards:
    """What a :class:`~megapairs.dataset.ShardReader` travels to another process as (the
    reader holds a lock and open files): its shard paths and extension, opened again there."""

    def __init__(self, reader: ShardReader):
        self.paths, self.extension = [str(p) for p in reader.paths], reader.extension

    def open(self) -> ShardReader:
        return ShardReader(self.paths, extension=self.extension)


class CLIPCollate:
    """``examples -> (query_inputs, candidate_inputs)`` for :class:`MMRetCLIP`.

    ``examples`` are :class:`megapairs.dataset.InstructionSampler` items (``q_img``,
    ``q_text``, ``t_img``, ``hns``; the same number of ``hns`` in each). Returns::

        query_inputs     = {"pixel_values": (B, 3, S, S) float32,
                            "input_ids": (B, T) int64, "attention_mask": (B, T) int64}
        candidate_inputs = {"pixel_values": (B * G, 3, S, S) float32}

    with ``G = 1 + len(hns)`` and example ``i``'s candidates at rows ``i*G .. i*G+G-1``:
    ``[t_img, *hns]`` (so row ``i*G + 1`` is the query image, ``hns[0]``). Each distinct image
    of a batch is read and preprocessed once. Pixels come from
    :func:`megapairs.images.preprocess` with ``transform``; ids from
    :class:`megapairs.text.CLIPTokenizer` (start token, tokens, end token, zeros), the
    attention mask 1 up to and including each row's end token (where CLIP pools) and 0 on the
    padding after it.

    Picklable (a ``DataLoader`` with workers may send it to them): the tokenizer is rebuilt
    in each process from ``tokenizer_dir``, and a :class:`~megapairs.dataset.ShardReader`
    travels as its shard paths. A source that is a callable or another mapping must be
    picklable itself for workers started with ``spawn`` / ``forkserver``.

    Parameters
    ----------
    images : folder, mapping or callable
        Where image bytes come from, as :func:`megapairs.dataset.image_loader` takes it: a
        folder (keys are relative paths), a mapping key -> bytes such as
        :class:`~megapairs.dataset.ShardReader`, or a callable key -> bytes.
    transform : megapairs.images.Transform
        The model's preprocessing.
    tokenizer_dir : path or None
        A folder with ``vocab.json`` + ``merges.txt``; None for OpenAI CLIP's vocabulary
        (open_clip's ``bpe_simple_vocab_16e6.txt.gz``).
    context_length : int
        Token row length (the text tower's positions).
    eos_token_id : int
        The text config's ``eos_token_id``: where transformers pools (2: the legacy
        ``argmax(ids)``; otherwise the first token of this id, which must be the tokenizer's
        end token).
    num_threads : int, optional
        Threads for decoding and tokenising; default 1 inside a ``DataLoader`` worker (the
        workers are the parallelism) and :func:`megapairs.get_num_threads` elsewhere.
    """

    def __init__(self, images: str | os.PathLike | Mapping | Callable[[str], bytes], transform: _images.Transform,
                 tokenizer_dir: str | os.PathLike | None, context_length: int, eos_token_id: int,
                 num_threads: int | None = None):
        if isinstance(images, (str, os.PathLike)):
            images = Path(images)
        image_loader(images)  # checks the source now, in the caller's process
        if not isinstance(transform, _images.Transform):
            raise TypeError(f"transform must be a megapairs.images.Transform, got {type(transform).__name__}")
        if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool)
                                        or num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        self.images = images
        self.transform = transform
        self.tokenizer_dir = None if tokenizer_dir is None else Path(tokenizer_dir)
        self.context_length = int(context_length)
        self.eos_token_id = int(eos_token_id)
        self.num_threads = num_threads
        self._load: Callable[[str], bytes] | None = None
        self._tokenizer = None
        eot = self.tokenizer.eot_token_id
        if self.eos_token_id != 2 and self.eos_token_id != eot:
            raise ValueError(f"the text config pools at token id {self.eos_token_id} (eos_token_id) but the "
                             f"tokenizer ends texts with {eot}: every text would be pooled at its first "
                             "position; use the checkpoint's own vocab.json + merges.txt")

    # ----------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_load"] = state["_tokenizer"] = None  # rebuilt on first use
        if isinstance(self.images, ShardReader):
            state["images"] = _Shards(self.images)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], _Shards):
            state["images"] = state["images"].open()
        self.__dict__.update(state)

    # ----------------------------------------------------------------- the parts

    @property
    def tokenizer(self):
        """The :class:`megapairs.text.CLIPTokenizer` (built on first use in each process)."""
        if self._tokenizer is None:
            from ..text import CLIPTokenizer

            self._tokenizer = CLIPTokenizer.from_pretrained(self.tokenizer_dir)
        return self._tokenizer

    def _threads(self) -> int | None:
        if self.num_threads is not None:
            return self.num_threads
        return 1 if torch.utils.data.get_worker_info() is not None else None

    def _read(self, key: str) -> bytes:
        if self._load is None:
            self._load = image_loader(self.images)
        try:
            return self._load(key)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise _with_key(exc, key) from exc

    def pixels(self, keys: Sequence[str]) -> np.ndarray:
        """``(len(keys), 3, S, S)`` float32: the images of ``keys`` read and preprocessed.

        Raises
        ------
        FileNotFoundError, KeyError
            An image is not in the source (the message names its key).
        megapairs.FormatError
            An image's bytes do not decode (the message names its key).
        """
        data = [self._read(k) for k in keys]
        failures: dict[int, Exception] = {}
        pixels, _ = _images.preprocess(data, self.transform, num_threads=self._threads(), progress=False,
                                       on_error=lambda i, exc: failures.setdefault(i, exc))
        if failures:
            first = min(failures)
            raise _with_key(failures[first], keys[first])
        return pixels

    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, attention_mask)``, both ``(len(texts), context_length)`` int64."""
        ids = self.tokenizer(list(texts), context_length=self.context_length, num_threads=self._threads())
        end = (ids == self.tokenizer.eot_token_id).argmax(axis=1)  # every row has its end token
        mask = (np.arange(ids.shape[1])[None, :] <= end[:, None]).astype(np.int64)
        return ids.astype(np.int64, copy=False), mask

    def __call__(self, examples: Sequence[Mapping]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if not examples:
            raise ValueError("empty batch: no examples to collate")
        groups, texts = [], []
        for i, e in enumerate(examples):
            missing = [k for k in ("q_img", "q_text", "t_img", "hns") if k not in e]
            if missing:
                raise KeyError(f"example {i} has no {', '.join(missing)} (expected InstructionSampler items)")
            if not isinstance(e["q_text"], str):
                raise TypeError(f"example {i}: q_text must be one instruction (str), got {type(e['q_text']).__name__}")
            groups.append([e["t_img"], *e["hns"]])
            texts.append(e["q_text"])
        G = len(groups[0])
        for i, g in enumerate(groups):
            if len(g) != G:
                raise ValueError(f"example {i} has {len(g) - 1} hard negatives, example 0 has {G - 1}: "
                                 "every example of a batch needs the same number")
        keys = list(dict.fromkeys([e["q_img"] for e in examples] + [k for g in groups for k in g]))
        row = {k: i for i, k in enumerate(keys)}
        pixels = self.pixels(keys)
        ids, mask = self.tokens(texts)
        query = {"pixel_values": torch.from_numpy(pixels[[row[e["q_img"]] for e in examples]]),
                 "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        candidates = {"pixel_values": torch.from_numpy(pixels[[row[k] for g in groups for k in g]])}
        return query, candidates


# --------------------------------------------------------------------------- the model


def _weights_file(root: Path) -> Path:
    """``model.safetensors`` or its sharded index in ``root``; a clear error for pickles."""
    for name in (WEIGHTS, WEIGHTS + ".index.json"):
        if (root / name).is_file():
            return root / name
    pickles = sorted(p.name for pattern in _PICKLES for p in root.glob(pattern))
    if pickles:
        raise FileNotFoundError(
            f"no {WEIGHTS} in '{root}', only pickled PyTorch weights ({', '.join(pickles)}): these are not "
            "loaded, since unpickling can run arbitrary code. Convert them once, where you trust the file: "
            "transformers.CLIPModel.from_pretrained(folder).save_pretrained(new_folder)")
    raise FileNotFoundError(f"no {WEIGHTS} (or {WEIGHTS}.index.json) in '{root}'")


class MMRetCLIP(torch.nn.Module):
    """MMRet-CLIP for full fine-tuning: a ``transformers.CLIPModel`` (:attr:`clip`), every
    weight trained except ``logit_scale`` (the loss holds the temperature).

    Build it with :meth:`from_pretrained` (a Hugging Face CLIP folder or hub id) or
    :meth:`from_config` (random initialisation, e.g. ``from_config(vit_b16_config())``).
    The training loop drives it through :meth:`collate_fn`, :meth:`encode_query`,
    :meth:`encode_candidates`, :meth:`state_tensors` / :meth:`load_state_tensors` and
    :meth:`save_pretrained`. It starts in training mode, as ``torch.nn.Module`` does.
    """

    kind = "clip"

    def __init__(self, clip: CLIPModel, source: str | os.PathLike | None = None):
        super().__init__()
        from transformers import CLIPModel

        if not isinstance(clip, CLIPModel):
            raise TypeError(f"expected a transformers.CLIPModel, got {type(clip).__name__}")
        self.clip = clip
        self.clip.logit_scale.requires_grad_(False)
        #: The folder the weights came from: its tokenizer and preprocessor files are used and saved.
        self.source = None if source is None else Path(source)

    # ----------------------------------------------------------------- building

    @classmethod
    def from_config(cls, config: CLIPConfig, seed: int | None = None) -> MMRetCLIP:
        """A randomly initialised model of ``config`` (a ``transformers.CLIPConfig``), from
        ``torch.manual_seed(seed)`` when a seed is given. Texts use OpenAI CLIP's vocabulary,
        images OpenAI CLIP's transform at the config's image size."""
        from transformers import CLIPConfig, CLIPModel

        if not isinstance(config, CLIPConfig):
            raise TypeError(f"config must be a transformers.CLIPConfig, got {type(config).__name__}")
        if seed is not None:
            torch.manual_seed(seed)
        return cls(CLIPModel(config).float())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> MMRetCLIP:
        """Load a Hugging Face ``CLIPModel`` checkpoint: a folder (or hub id) with
        ``config.json`` and ``model.safetensors`` (or a sharded index; F32, F16 or BF16 stored,
        float32 loaded), with its tokenizer (``vocab.json`` + ``merges.txt``) and
        ``preprocessor_config.json`` when it has them.

        Raises
        ------
        FileNotFoundError
            No folder, no ``config.json``, or no safetensors weights; pickled weights
            (``pytorch_model.bin``) are refused, never unpickled.
        megapairs.FormatError
            The config is not a CLIPModel's (both towers), or a tensor is missing, extra or of
            another shape than the config says.
        """
        from transformers import CLIPConfig, CLIPModel

        from .._hub import read_json, resolve_model_dir
        from ..weights import SafetensorsFile

        root = resolve_model_dir(path)
        raw = read_json(root / CONFIG)
        if raw.get("model_type") != "clip" or "text_config" not in raw or "vision_config" not in raw:
            raise FormatError(f"{root / CONFIG}: not a CLIPModel config with both towers "
                                    f"(model_type {raw.get('model_type')!r}); MMRet-CLIP needs the image and text towers")
        weights = _weights_file(root)
        model = CLIPModel(CLIPConfig.from_dict(raw)).float()
        want = model.state_dict()
        with SafetensorsFile(weights) as f:
            names = list(f.keys())
            missing = [k for k in want if k not in f]
            extra = [k for k in names if k not in want and not k.endswith(_IGNORED_SUFFIXES)]
            if missing or extra:
                said = "; ".join(f"{what} {', '.join(ks[:5])}{' ...' if len(ks) > 5 else ''} ({len(ks)})"
                                 for what, ks in (("missing", missing), ("unexpected", extra)) if ks)
                raise FormatError(f"{weights}: the tensors do not match {root / CONFIG}: {said}")
            with torch.no_grad():
                for name, tensor in want.items():
                    if tuple(f.shape(name)) != tuple(tensor.shape):
                        raise FormatError(f"{weights}: tensor '{name}' has shape {tuple(f.shape(name))}, "
                                                f"expected {tuple(tensor.shape)}")
                    tensor.copy_(torch.from_numpy(np.array(f.get(name, "float32"))))
        return cls(model, root)

    # ----------------------------------------------------------------- what the model reads

    @property
    def config(self) -> CLIPConfig:
        return self.clip.config

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings (the projection dimension)."""
        return int(self.clip.config.projection_dim)

    @property
    def image_size(self) -> int:
        return int(self.clip.config.vision_config.image_size)

    @property
    def context_length(self) -> int:
        """Token positions of the text tower (77 for OpenAI CLIP)."""
        return int(self.clip.config.text_config.max_position_embeddings)

    @property
    def transform(self) -> _images.Transform:
        """The image preprocessing: the source's ``preprocessor_config.json``, else OpenAI
        CLIP's at :attr:`image_size`; what :class:`megapairs.CLIP` uses for the same folder."""
        from .._checkpoints import processor_transform

        size = self.image_size
        fallback = _images.Transform(size, size, _images.OPENAI_CLIP_MEAN, _images.OPENAI_CLIP_STD)
        return fallback if self.source is None else processor_transform(self.source, fallback, size)

    @property
    def tokenizer_dir(self) -> Path | None:
        """The source folder when it has ``vocab.json`` + ``merges.txt`` (as
        :class:`megapairs.CLIP` decides), else None: OpenAI CLIP's vocabulary."""
        root = self.source
        if root is not None and (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
            return root
        return None

    def collate_fn(self, images: str | os.PathLike | Mapping | Callable[[str], bytes], *,
                   num_threads: int | None = None) -> CLIPCollate:
        """The ``DataLoader`` collate function for this model (a picklable
        :class:`CLIPCollate`): examples -> ``(query_inputs, candidate_inputs)``.

        Parameters
        ----------
        images : folder, mapping or callable
            Where the images are: a folder (keys are relative paths in it), a mapping key ->
            bytes (:class:`megapairs.dataset.ShardReader`), or a callable key -> bytes.
        num_threads : int, optional
            Threads for preprocessing; default 1 in ``DataLoader`` workers, else the
            megapairs default.
        """
        return CLIPCollate(images, self.transform, self.tokenizer_dir, self.context_length,
                           int(self.clip.config.text_config.eos_token_id), num_threads)

    # ----------------------------------------------------------------- encoding

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Φ_I: projected image features, ``(N, E)``, not normalised (transformers'
        ``get_image_features``)."""
        pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
        return self.clip.visual_projection(pooled)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Φ_T: projected text features, ``(B, E)``, not normalised (transformers'
        ``get_text_features``; pooled at each row's end token)."""
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.clip.text_projection(pooled)

    def encode_query(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Composed queries, ``(B, E)`` unit rows: normalise(Φ_I(image) + Φ_T(text))."""
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"encode_query needs one text per image, got {pixel_values.shape[0]} images "
                             f"and {input_ids.shape[0]} texts")
        return F.normalize(self.image_features(pixel_values) + self.text_features(input_ids, attention_mask), dim=-1)

    def encode_candidates(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Candidate images, ``(N, E)`` unit rows: normalise(Φ_I(image))."""
        return F.normalize(self.image_features(pixel_values), dim=-1)

    # ----------------------------------------------------------------- state and saving

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every weight of the CLIPModel, by its Hugging Face name, as detached copies (what
        ``model.safetensors`` holds)."""
        return {k: v.detach().clone() for k, v in self.clip.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Put back what :meth:`state_tensors` returned, bit for bit (all names required)."""
        self.clip.load_state_dict(dict(tensors), strict=True)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a Hugging Face CLIP folder: ``config.json``, ``model.safetensors`` (float32,
        no pickles) and the source's tokenizer and preprocessor files (:data:`TOKENIZER_FILES`).
        Built in a temporary folder beside ``folder`` and swapped in whole, so a run killed
        midway leaves the previous folder (or none), never half a checkpoint. Loads with
        :class:`megapairs.CLIP`, ``transformers.CLIPModel`` and :meth:`from_pretrained`."""
        from safetensors.torch import save_file

        from ..pipeline.layout import atomic_folder, disk_errors

        folder = Path(folder)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.clip.state_dict().items()}
        source = self.source
        with disk_errors(str(folder)), atomic_folder(folder) as tmp:
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
            # every field, defaults included: readers that fill in their own defaults read the same model
            (tmp / CONFIG).write_text(self.clip.config.to_json_string(use_diff=False), encoding="utf-8")
            if source is not None:
                for name in TOKENIZER_FILES:
                    if (source / name).is_file():
                        shutil.copyfile(source / name, tmp / name)
            for path in tmp.iterdir():  # on disk before the swap
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
