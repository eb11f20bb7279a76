"""The one place where a model path becomes a retriever that :func:`megapairs.evaluation.evaluate`
accepts (``megapairs eval --model PATH`` calls it).

>>> from megapairs.evaluation.models import load_model
>>> model = load_model("BAAI/BGE-VL-base")                      # doctest: +SKIP
>>> model = load_model("~/models/clip-vit-base-patch16", "bf16")  # doctest: +SKIP

Today every path is a CLIP checkpoint (:meth:`megapairs.CLIP.from_pretrained`). A new kind
of model (a trained adapter over a CLIP, say) is a new branch here, recognised by the files
its folder holds; the command and ``evaluate`` need no change as long as the object has
``encode_image`` / ``encode_text`` / ``encode_composed`` (see
:class:`megapairs.evaluation.Embedder`).
"""

from __future__ import annotations

import os

from ..encoders import CLIP

__all__ = ["load_model"]


def load_model(path: str | os.PathLike, precision: str = "fp32") -> CLIP:
    """Load the retriever stored at ``path``.

    Parameters
    ----------
    path : str or path
        A local folder or a Hugging Face hub id holding a CLIP checkpoint: the Hugging Face
        layout (``config.json`` + ``model.safetensors`` or a sharded index) or OpenCLIP's
        (``open_clip_config.json`` + ``open_clip_model.safetensors``).
    precision : {'fp32', 'bf16'}
        The encoders' compute precision.

    Returns
    -------
    megapairs.CLIP
        An object :func:`megapairs.evaluation.evaluate` accepts.

    Raises
    ------
    FileNotFoundError
        ``path`` is neither a folder nor a hub id that can be fetched, or the folder holds no
        model config or no weights (the message names the folder and what is missing).
    ValueError
        ``path`` is a file, its config is not a CLIP one (:class:`megapairs.FormatError`), or
        ``precision`` is not 'fp32' / 'bf16'.
    """
    return CLIP.from_pretrained(path, precision=precision)
