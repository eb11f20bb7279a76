"""Encoders in the C core: CLIP (image and text towers), DINOv2, and BERT-family sentence
encoders.

>>> import megapairs as mp
>>> clip = mp.CLIP.from_pretrained("openai/clip-vit-base-patch16")      # doctest: +SKIP
>>> clip.encode_image(["a.jpg", "b.jpg"]).shape                          # doctest: +SKIP
(2, 512)
>>> clip.encode_text(["a dog on a beach", "a red car"]).shape            # doctest: +SKIP
(2, 512)
>>> clip.encode_composed(["a.jpg"], ["the same dog, but asleep"]).shape  # doctest: +SKIP
(1, 512)
>>> st = mp.SentenceEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
>>> st.encode(["A blackbird.", "A crow."]).shape                         # doctest: +SKIP
(2, 384)
>>> dino = mp.DINOv2.from_pretrained("facebook/dinov2-base")             # doctest: +SKIP
>>> dino.encode(["a.jpg", "b.jpg"], pooling="cls+mean").shape            # doctest: +SKIP
(2, 1536)

Checkpoints: the Hugging Face layouts (``config.json`` + ``model.safetensors`` or a sharded
index) for CLIPModel, CLIPVisionModelWithProjection, Dinov2Model and
Dinov2WithRegistersModel, and OpenCLIP's (``open_clip_config.json`` +
``open_clip_model.safetensors``). ``megapairs._checkpoints`` is the one place that knows
how checkpoints name their tensors; ``megapairs._hub`` finds the model folder;
``megapairs._streaming`` batches and streams the inputs. This module holds the model classes. Text runs on packed sequences: each text is computed only up to its
own length (CLIP: up to its end-of-text token, which is all the causal pooled output depends on).
Images given as paths, bytes or any other iterable are read, preprocessed and encoded
``batch_size`` at a time, so memory is bounded by a batch and not by the corpus.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import _args, _checkpoints, _core, fusion, images
from ._hub import read_json, resolve_model_dir
from ._positions import interpolate_positions
from ._streaming import VisionTower, l2_normalize, pack, pool_positions, progress_bar, text_list
from .weights import SafetensorsFile

__all__ = ["CLIP", "POOLINGS", "DINOv2", "SentenceEncoder", "interpolate_positions", "resolve_model_dir"]

POOLINGS = ("cls", "cls+mean", "mean")


class CLIP(VisionTower):
    """A CLIP model, run by the C core: the image tower, and the text tower when the
    checkpoint has one.

    Use :meth:`from_pretrained`. ``precision='fp32'`` reproduces transformers;
    ``'bf16'`` runs the matmuls in bfloat16 (AMX where the CPU has it) with fp32
    accumulation, LayerNorm, softmax and residual stream.
    """

    def __init__(self, vit: _core.Vit, config: dict, transform: images.Transform, precision: str = "fp32",
                 text: _core.Text | None = None, text_config: dict | None = None, tokenizer_dir: Path | None = None):
        self._vit, self.config, self.transform = vit, config, transform
        self.precision = precision
        self._text, self.text_config, self._tokenizer_dir = text, text_config, tokenizer_dir
        self._tokenizer = None

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32") -> CLIP:
        """Load a CLIP checkpoint from a local directory or a hub id: the Hugging Face layout
        (``config.json`` + ``model.safetensors`` or a sharded index; CLIPModel, or
        CLIPVisionModelWithProjection for the image tower alone) or OpenCLIP's
        (``open_clip_config.json`` + ``open_clip_model.safetensors``). Weights may be stored as
        F32, F16 or BF16. Images are preprocessed as the checkpoint's
        ``preprocessor_config.json`` (or ``preprocess_cfg``) says, else with OpenAI CLIP's
        transform at the model's size. Texts are tokenised with the checkpoint's
        ``vocab.json`` + ``merges.txt`` when it has them, else with the OpenAI CLIP vocabulary
        (see :class:`megapairs.text.CLIPTokenizer`)."""
        precision = _args.precision(precision)
        root = resolve_model_dir(path_or_hub_id)
        text = text_core = None
        if (root / "config.json").is_file():
            raw = read_json(root / "config.json")
            config = _checkpoints.clip_hf_config(raw, root / "config.json")
            text = _checkpoints.clip_text_hf_config(raw, root / "config.json")
            with SafetensorsFile(root) as f:
                vit = _core.Vit(config, f.readers, _checkpoints.clip_hf_aliases())
                if text is not None:
                    text_core = _core.Text(text, f.readers, _checkpoints.clip_text_hf_aliases())
            size = config["image_size"]
            transform = _checkpoints.processor_transform(
                root, images.Transform(size, size, images.OPENAI_CLIP_MEAN, images.OPENAI_CLIP_STD), size)
        elif (root / "open_clip_config.json").is_file():
            raw = read_json(root / "open_clip_config.json")
            config, transform = _checkpoints.clip_open_clip_config(raw, root / "open_clip_config.json")
            weights = root / "open_clip_model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"no open_clip_model.safetensors in '{root}' (pickled .bin files are not loaded)")
            with SafetensorsFile(weights) as f:
                vit = _core.Vit(config, f.readers, _checkpoints.clip_open_clip_aliases())
                if "token_embedding.weight" in f:
                    text = _checkpoints.clip_text_open_clip_config(raw, root / "open_clip_config.json")
                    text_core = _core.Text(text, f.readers, _checkpoints.clip_text_open_clip_aliases())
        else:
            raise FileNotFoundError(f"no config.json or open_clip_config.json in '{root}'")
        return cls(vit, config, transform, precision, text_core, text, root)

    @property
    def embed_dim(self) -> int:
        return self.config["projection"]

    @property
    def tokenizer(self):
        """The :class:`megapairs.text.CLIPTokenizer` for this model's texts (loaded on first use)."""
        if self._tokenizer is None:
            from .text import CLIPTokenizer

            root = self._tokenizer_dir
            has_vocab = root is not None and (root / "vocab.json").is_file() and (root / "merges.txt").is_file()
            self._tokenizer = CLIPTokenizer.from_pretrained(root if has_vocab else None)
        return self._tokenizer

    def encode_image(self, images_or_pixels, normalize: bool = True, batch_size: int = 32,
                     num_threads: int | None = None,
                     on_error: str | Callable[[int, Exception], object] = "raise",
                     show_progress_bar: bool | None = None):
        """Image embeddings, ``(N, E)`` float32; ``(embeddings, kept)`` unless
        ``on_error='raise'``.

        Parameters
        ----------
        images_or_pixels : iterable of images or (N, 3, S, S) array
            Images as :func:`megapairs.images.preprocess` takes them (preprocessed with this
            model's transform), or pixels already preprocessed.
            An iterable of images (a list, or a generator) is read, preprocessed and
            encoded ``batch_size`` images at a time, so memory is bounded by a batch.
        normalize : bool
            L2-normalise the rows; False returns transformers' ``get_image_features``.
        batch_size : int
            Images per forward pass (bounds the activation and preprocessing memory).
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        on_error : {'raise', 'skip'} or callable
            For images that cannot be read: 'raise' raises the first one's error, naming its
            index in ``images_or_pixels``; 'skip' leaves them out and returns
            ``(embeddings, kept)``, ``kept`` the int64 indices of the embedded images; a
            callable ``on_error(index, exc)`` is called once for each (global index, the
            exception saying what is wrong) and the return is ``(embeddings, kept)`` too (see
            :func:`megapairs.images.preprocess`). Pixel arrays are never skipped
            (``kept`` is all of them).
        show_progress_bar : bool, optional
            A tqdm bar on stderr (images per second, and the ETA when the number of images is
            known); by default only for more than 2048 images.

        Returns
        -------
        embeddings : (N, E) float32
        kept : (N,) int64, only with ``on_error='skip'`` or a callable
        """
        return self._encode(images_or_pixels, self.embed_dim, normalize, batch_size, num_threads, on_error,
                            show_progress_bar)

    def tokenize(self, texts) -> np.ndarray:
        """``(N, context_length)`` int64 token ids for a list of texts (open_clip.tokenize)."""
        self._require_text()
        return self.tokenizer(text_list(texts), context_length=self.text_config["positions"])

    def _require_text(self):
        if self._text is None:
            raise ValueError("this checkpoint has no text tower (a CLIPVisionModelWithProjection?); "
                             "load a CLIPModel or an OpenCLIP checkpoint for texts")

    def encode_text(self, texts_or_ids, normalize: bool = True, batch_size: int = 256,
                    num_threads: int | None = None, show_progress_bar: bool | None = None) -> np.ndarray:
        """Text embeddings, ``(N, E)`` float32.

        Parameters
        ----------
        texts_or_ids : list of str or (N, T) integer array
            Texts (tokenised with :attr:`tokenizer`, truncated to the model's context), or
            token ids as ``open_clip.tokenize`` / a Hugging Face CLIP tokenizer gives them.
            Each row is pooled where transformers pools it (its end-of-text token) and computed
            only up to there.
        normalize : bool
            L2-normalise the rows; False returns transformers' ``get_text_features``.
        batch_size : int
            Texts per forward pass.
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        show_progress_bar : bool, optional
            A tqdm bar on stderr (texts per second, ETA); by default only for more than 2048
            texts.
        """
        self._require_text()
        batch_size = _args.positive(batch_size, "batch_size")
        threads = _args.threads(num_threads)
        c = self.text_config
        if not isinstance(texts_or_ids, (str, list, tuple)) and hasattr(texts_or_ids, "__array__"):
            ids = np.asarray(texts_or_ids)  # NumPy ids, or the torch tensor open_clip.tokenize returns
            if ids.dtype.kind not in "iu":
                raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
            if ids.ndim != 2 or ids.shape[1] < 1 or ids.shape[1] > c["positions"]:
                raise ValueError(f"ids must be (N, T) with 1 <= T <= {c['positions']}, got shape {ids.shape}")
        else:
            ids = self.tokenize(texts_or_ids)
        ids = ids.astype(np.int64, copy=False)
        out = []
        bar = progress_bar(show_progress_bar, len(ids), "texts", type(self).__name__)
        try:
            for i in range(0, len(ids), batch_size):
                chunk = ids[i:i + batch_size]
                packed, offsets = pack(chunk, pool_positions(chunk, c["eos_token_id"]) + 1)
                out.append(self._text.encode(packed, offsets, precision=self.precision, num_threads=threads))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        emb = np.concatenate(out) if out else np.empty((0, self.embed_dim), np.float32)
        return l2_normalize(emb) if normalize else emb

    def encode_composed(self, images_or_pixels, texts_or_ids, batch_size: int = 32,
                        num_threads: int | None = None) -> np.ndarray:
        """Composed-query embeddings, ``(N, E)``: L2-normalise(image features + text features),
        the BGE-VL-base/large query encoding (each image with the text of the same index),
        fused in the C core (:func:`megapairs.fusion.fuse`).

        Parameters
        ----------
        images_or_pixels : iterable of images or (N, 3, S, S) array
            As :meth:`encode_image` takes them (images are read ``batch_size`` at a time);
            every image must be readable.
        texts_or_ids : list of str or (N, T) integer array
            As :meth:`encode_text` takes them; the same N.
        """
        self._require_text()
        images_sized = isinstance(images_or_pixels, (list, tuple)) or (
            isinstance(images_or_pixels, np.ndarray) and images_or_pixels.ndim == 4)
        if images_sized and isinstance(texts_or_ids, (list, tuple, np.ndarray)) \
                and len(images_or_pixels) != len(texts_or_ids):  # before encoding anything
            raise ValueError(f"encode_composed needs one text per image, got {len(images_or_pixels)} images "
                             f"and {len(texts_or_ids)} texts")
        image = self.encode_image(images_or_pixels, normalize=False, batch_size=batch_size, num_threads=num_threads)
        text = self.encode_text(texts_or_ids, normalize=False, num_threads=num_threads)
        if len(image) != len(text):
            raise ValueError(f"encode_composed needs one text per image, got {len(image)} images and {len(text)} texts")
        return fusion.fuse([image, text], out=image, num_threads=num_threads)


class DINOv2(VisionTower):
    """A DINOv2 image encoder (with or without registers), run by the C core.

    Use :meth:`from_pretrained`. Any input size works: position embeddings are resampled to
    the patch grid as transformers does it, once per size.
    """

    def __init__(self, vit: _core.Vit, config: dict, positions: np.ndarray, transform: images.Transform,
                 precision: str = "fp32"):
        self._vit, self.config, self.transform = vit, config, transform
        self.precision = precision
        self._table = positions
        self._positions: dict[int, np.ndarray | None] = {}

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32",
                        transform: str | images.Transform | None = None) -> DINOv2:
        """Load a Dinov2Model or Dinov2WithRegistersModel checkpoint (``config.json`` +
        safetensors, F32/F16/BF16) from a local directory or a hub id. ``transform`` is the
        preprocessing applied to images; by default the checkpoint's
        ``preprocessor_config.json``, else the ``"dinov2"`` preset (resize 256, crop 224,
        ImageNet mean/std)."""
        precision = _args.precision(precision)
        root = resolve_model_dir(path_or_hub_id)
        if transform is None:
            transform = _checkpoints.processor_transform(root, images.PRESETS["dinov2"])
        transform = images._transform(transform)
        config = _checkpoints.dinov2_config(read_json(root / "config.json"), root / "config.json")
        with SafetensorsFile(root) as f:
            vit = _core.Vit(config, f.readers, _checkpoints.dinov2_aliases(f.keys(), config))
        return cls(vit, config, vit.positions(), transform, precision)

    @property
    def embed_dim(self) -> int:
        """Width of ``pooling='cls'`` or ``'mean'`` embeddings (``'cls+mean'`` is twice this)."""
        return self.config["width"]

    def positions(self, image_size: int) -> np.ndarray | None:
        """Position embeddings for ``image_size`` pixel inputs (None: the checkpoint's own)."""
        grid = image_size // self.config["patch_size"]
        if grid not in self._positions:
            native = self.config["image_size"] // self.config["patch_size"]
            self._positions[grid] = (None if grid == native
                                     else interpolate_positions(self._table, grid, self.config["antialias"]))
        return self._positions[grid]

    def encode(self, images_or_pixels, pooling: str = "cls", normalize: bool = True, batch_size: int = 32,
               num_threads: int | None = None, on_error: str | Callable[[int, Exception], object] = "raise",
               show_progress_bar: bool | None = None):
        """Image embeddings, ``(N, D)`` float32 (``(N, 2D)`` for ``'cls+mean'``);
        ``(embeddings, kept)`` unless ``on_error='raise'``.

        Parameters
        ----------
        images_or_pixels : iterable of images or (N, 3, S, S) array
            Images as :func:`megapairs.images.preprocess` takes them (preprocessed with this
            model's transform), or pixels already preprocessed (any S >= patch size).
            An iterable of images (a list, or a generator) is read, preprocessed and
            encoded ``batch_size`` images at a time, so memory is bounded by a batch.
        pooling : {'cls', 'cls+mean', 'mean'}
            'cls': the class token after the final LayerNorm (transformers' ``pooler_output``);
            'mean': the mean of the patch tokens after it (class and registers excluded);
            'cls+mean': both concatenated, the DINOv2 linear-probe features.
        normalize : bool
            L2-normalise the rows (after concatenation for 'cls+mean').
        batch_size : int
            Images per forward pass (bounds the activation and preprocessing memory).
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        on_error : {'raise', 'skip'} or callable
            For images that cannot be read: 'raise' raises the first one's error, naming its
            index in ``images_or_pixels``; 'skip' leaves them out and returns
            ``(embeddings, kept)``, ``kept`` the int64 indices of the embedded images; a
            callable ``on_error(index, exc)`` is called once for each (global index, the
            exception saying what is wrong) and the return is ``(embeddings, kept)`` too (see
            :func:`megapairs.images.preprocess`). Pixel arrays are never skipped
            (``kept`` is all of them).
        show_progress_bar : bool, optional
            A tqdm bar on stderr (images per second, and the ETA when the number of images is
            known); by default only for more than 2048 images.

        Returns
        -------
        embeddings : (N, D) or (N, 2D) float32
        kept : (N,) int64, only with ``on_error='skip'`` or a callable
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

        def check(pixels):
            if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3]:
                raise ValueError(f"pixels must be (N, 3, S, S), got {pixels.shape}")

        def forward(pixels, threads):
            size = pixels.shape[2]
            positions = self.positions(size) if size >= self.config["patch_size"] else None
            return self._vit.encode(pixels, precision=self.precision, num_threads=threads, pooling=pooling,
                                    positions=positions)

        width = self.embed_dim * (2 if pooling == "cls+mean" else 1)
        return self._encode(images_or_pixels, width, normalize, batch_size, num_threads, on_error, show_progress_bar,
                            forward=forward, check=check)


# --------------------------------------------------------------------------- sentence encoders


# --------------------------------------------------------------------------- sentence encoders


class SentenceEncoder:
    """A BERT-family sentence encoder (sentence-transformers model folders such as
    all-MiniLM-L6-v2), run by the C core: WordPiece tokenisation, the post-norm BERT encoder
    on packed sequences (no padding computed), mean or CLS pooling, optional L2
    normalisation.

    Use :meth:`from_pretrained`. ``precision='fp32'`` reproduces sentence-transformers;
    ``'bf16'`` runs the matmuls in bfloat16 with fp32 accumulation.
    """

    def __init__(self, text: _core.Text, config: dict, tokenizer, pooling: str = "mean", normalize: bool = True,
                 max_seq_length: int = 512, precision: str = "fp32", lowercase: bool = False):
        self._text, self.config, self.tokenizer = text, config, tokenizer
        self.pooling, self.normalize, self.max_seq_length = pooling, normalize, max_seq_length
        self.precision = precision
        self.lowercase = lowercase  # sentence_bert_config.json do_lower_case: str.lower() before tokenising

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32") -> SentenceEncoder:
        """Load a sentence-transformers model folder (``modules.json``: Transformer, Pooling
        mean or cls, optional Normalize) or a plain Hugging Face BERT folder (``config.json``,
        ``model.safetensors``, ``vocab.txt``), from a local directory or a hub id. Sequences are
        truncated at ``max_seq_length`` from ``sentence_bert_config.json`` (else the model's
        position count)."""
        from .text import WordPieceTokenizer

        precision = _args.precision(precision)
        root = resolve_model_dir(path_or_hub_id)
        folder, pooling, normalize, settings = _checkpoints.sentence_transformers_layout(root)
        config = _checkpoints.bert_config(read_json(folder / "config.json"), folder / "config.json")
        with SafetensorsFile(folder) as f:
            text = _core.Text(config, f.readers, _checkpoints.bert_aliases(f.keys()))
        tokenizer = WordPieceTokenizer.from_pretrained(folder)
        max_len = min(int(settings.get("max_seq_length") or config["positions"]), config["positions"])
        return cls(text, config, tokenizer, pooling, normalize, max_len, precision,
                   bool(settings.get("do_lower_case", False)))

    @property
    def embed_dim(self) -> int:
        return self.config["width"]

    def encode(self, texts, normalize: bool | None = None, batch_size: int = 64,
               num_threads: int | None = None, show_progress_bar: bool | None = None) -> np.ndarray:
        """Sentence embeddings, ``(N, D)`` float32.

        Parameters
        ----------
        texts : list of str
            The sentences; each is truncated to :attr:`max_seq_length` tokens.
        normalize : bool, optional
            L2-normalise the rows; default as the model folder says (its Normalize module).
        batch_size : int
            Texts per forward pass.
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        show_progress_bar : bool, optional
            A tqdm bar on stderr (texts per second, ETA), as sentence-transformers'
            argument of that name; by default only for more than 2048 texts.
        """
        texts = text_list(texts)
        if self.lowercase:
            texts = [t.lower() for t in texts]
        batch_size = _args.positive(batch_size, "batch_size")
        threads = _args.threads(num_threads)
        out = []
        bar = progress_bar(show_progress_bar, len(texts), "texts", type(self).__name__)
        try:
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[i:i + batch_size], max_length=self.max_seq_length)
                ids, mask = batch["input_ids"], batch["attention_mask"]
                packed, offsets = pack(ids, mask.sum(axis=1))
                out.append(self._text.encode(packed, offsets, pooling=self.pooling, precision=self.precision,
                                             num_threads=threads))
                if bar is not None:
                    bar.update(len(ids))
        finally:
            if bar is not None:
                bar.close()
        emb = np.concatenate(out) if out else np.empty((0, self.embed_dim), np.float32)
        return l2_normalize(emb) if (self.normalize if normalize is None else normalize) else emb
