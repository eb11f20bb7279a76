"""MMRet on frozen encoders: a trained linear adapter over cached embeddings.

The encoders stay as they are; ``megapairs encode`` has cached one vector per image, and the
instructions are embedded once by a text encoder whose space matches (the caption space's
sentence model, or the CLIP text tower beside a CLIP image space). The adapter learns two
linear maps and composes as MMRet does::

    query     = normalise(W_I x(q_img) + W_T t(instruction))
    candidate = normalise(W_I x(image))

Both maps start as the identity, so the untrained adapter *is* the zero-shot composition of
the frozen embeddings, and training can only move away from that baseline by what the mined
pairs teach. A step costs a few small GEMMs: hundreds of steps a minute on a laptop CPU, the
InfoNCE loss in the fused C kernel end to end.

>>> model = MMRetAdapter(image_dim=384, text_dim=384)                         # doctest: +SKIP
>>> model.attach(image_table, image_keys, text_table, texts)                  # doctest: +SKIP
>>> model.save_pretrained("out/train/model", meta={...})                      # doctest: +SKIP
>>> MMRetAdapter.from_pretrained("out/train/model").embed(x, t)               # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._version import __version__
from .adapter_io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT, read_config

__all__ = ["AdapterCollate", "MMRetAdapter"]


class AdapterCollate:
    """``examples -> (query_inputs, candidate_inputs)`` for :class:`MMRetAdapter`: image keys
    and instructions become row indices into the cached tables. Candidates of example ``i``
    are rows ``i * G .. i * G + G - 1``: its target, then its hard negatives. Picklable, so a
    ``DataLoader`` can run it in workers."""

    def __init__(self, image_rows: Mapping[str, int], text_rows: Mapping[str, int]):
        self.image_rows, self.text_rows = dict(image_rows), dict(text_rows)

    def _image(self, key: str) -> int:
        try:
            return self.image_rows[key]
        except KeyError:
            raise KeyError(f"image {key!r} has no cached embedding (it failed to encode, or the dataset "
                           "comes from another corpus)") from None

    def __call__(self, examples: Sequence[Mapping]) -> tuple[dict, dict]:
        q_img = torch.tensor([self._image(e["q_img"]) for e in examples], dtype=torch.int64)
        q_txt = torch.tensor([self.text_rows[e["q_text"]] for e in examples], dtype=torch.int64)
        cand = torch.tensor([self._image(k) for e in examples for k in (e["t_img"], *e["hns"])], dtype=torch.int64)
        return {"image_rows": q_img, "text_rows": q_txt}, {"image_rows": cand}


class MMRetAdapter(torch.nn.Module):
    """Two linear maps (no bias) on frozen embeddings: ``image_proj`` (``image_dim -> dim``)
    and ``text_proj`` (``text_dim -> dim``), both the identity at start (a rectangular one
    when the widths differ). The cached tables are buffers that are not saved: a checkpoint
    is the two maps and :attr:`meta`."""

    kind = "adapter"

    def __init__(self, image_dim: int, text_dim: int, dim: int | None = None, meta: Mapping | None = None):
        super().__init__()
        dim = image_dim if dim is None else dim
        self.image_proj = torch.nn.Linear(image_dim, dim, bias=False)
        self.text_proj = torch.nn.Linear(text_dim, dim, bias=False)
        with torch.no_grad():
            self.image_proj.weight.copy_(torch.eye(dim, image_dim))
            self.text_proj.weight.copy_(torch.eye(dim, text_dim))
        self.meta = dict(meta or {})
        self.register_buffer("image_table", torch.empty(0, image_dim), persistent=False)
        self.register_buffer("text_table", torch.empty(0, text_dim), persistent=False)
        self._image_rows: dict[str, int] = {}
        self._text_rows: dict[str, int] = {}

    @property
    def image_dim(self) -> int:
        return self.image_proj.in_features

    @property
    def text_dim(self) -> int:
        return self.text_proj.in_features

    @property
    def dim(self) -> int:
        return self.image_proj.out_features

    # ----------------------------------------------------------------- the frozen tables

    def attach(self, image_table: np.ndarray, image_keys: Sequence[str], text_table: np.ndarray,
               texts: Sequence[str]) -> MMRetAdapter:
        """Give the adapter its cached embeddings: row ``i`` of ``image_table`` is image
        ``image_keys[i]``, row ``j`` of ``text_table`` is instruction ``texts[j]``."""
        for name, table, keys, width in (("image_table", image_table, image_keys, self.image_dim),
                                         ("text_table", text_table, texts, self.text_dim)):
            if table.ndim != 2 or table.shape != (len(keys), width):
                raise ValueError(f"{name} must be ({len(keys)}, {width}), got {table.shape}")
        self.image_table = torch.from_numpy(np.ascontiguousarray(image_table, dtype=np.float32))
        self.text_table = torch.from_numpy(np.ascontiguousarray(text_table, dtype=np.float32))
        self._image_rows = {k: i for i, k in enumerate(image_keys)}
        self._text_rows = {t: i for i, t in enumerate(texts)}
        return self

    def collate_fn(self, images=None) -> AdapterCollate:
        """The collate function of a ``DataLoader`` over :class:`~megapairs.training.data.Examples`
        (``images`` is not read: the adapter works on the cached embeddings)."""
        if not self._image_rows:
            raise RuntimeError("the adapter has no cached embeddings: call attach() first")
        return AdapterCollate(self._image_rows, self._text_rows)

    # ----------------------------------------------------------------- the model

    def embed(self, image: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """normalise(W_I image + W_T text), or normalise(W_I image) without ``text``."""
        z = self.image_proj(image)
        if text is not None:
            z = z + self.text_proj(text)
        return F.normalize(z, dim=-1)

    def encode_query(self, image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        return self.embed(self.image_table[image_rows], self.text_table[text_rows])

    def encode_candidates(self, image_rows: torch.Tensor) -> torch.Tensor:
        return self.embed(self.image_table[image_rows])

    # ----------------------------------------------------------------- saving

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.load_state_dict(dict(tensors), strict=True)

    def save_pretrained(self, folder: str | os.PathLike, meta: Mapping | None = None) -> None:
        """Write ``adapter.safetensors`` (the two maps) and ``adapter.json`` (widths, and
        ``meta``: the space, the text encoder, the temperature, ...) into ``folder``, built
        beside it and swapped in whole."""
        import json

        from safetensors.torch import save_file

        from ..pipeline.layout import atomic_folder

        config = {"format": FORMAT, "image_dim": self.image_dim, "text_dim": self.text_dim, "dim": self.dim,
                  "megapairs_version": __version__, **self.meta, **(meta or {})}
        with atomic_folder(Path(folder)) as tmp:
            save_file({k: v.cpu().contiguous() for k, v in self.state_tensors().items()}, str(tmp / ADAPTER_WEIGHTS))
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> MMRetAdapter:
        """An adapter :meth:`save_pretrained` wrote (the tables are attached separately)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = read_config(folder)
        meta = {k: v for k, v in config.items() if k not in ("format", "image_dim", "text_dim", "dim",
                                                              "megapairs_version")}
        model = cls(int(config["image_dim"]), int(config["text_dim"]), int(config["dim"]), meta=meta)
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
        try:
            model.load_state_tensors(tensors)
        except RuntimeError as e:
            raise ValueError(f"{folder / ADAPTER_WEIGHTS} does not match {ADAPTER_CONFIG}: {e}") from None
        return model
