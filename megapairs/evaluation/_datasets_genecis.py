"""GeneCIS' loader (:func:`load_genecis`) and :class:`Crop`, the dilated and padded object
boxes of its attribute tasks. Re-exported by :mod:`megapairs.evaluation.datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._datasets_common import (
    FormatError,
    _check_files,
    _expect,
    _get,
    _read_json,
    _root,
)
from .metrics import GENECIS_TASKS

# --------------------------------------------------------------------------- GeneCIS


@dataclass(frozen=True)
class Crop:
    """A GeneCIS attribute image: the bounding box ``(x, y, w, h)`` of one object in a Visual
    Genome image, dilated and padded as the official ``vaw_dataset.py`` does it.

    The box grows by ``dilation`` of its size: ``left = max(0, x - 0.7 w)``,
    ``top = max(0, y - 0.7 h)``, ``right = min(W, left + 1.7 w)``,
    ``bottom = min(H, top + 1.7 h)`` (Pillow rounds the corners to whole pixels), and the
    crop is centred on a black square (``expand2square``).
    """

    path: str
    box: tuple[float, float, float, float]
    dilation: float = 0.7

    def load(self) -> np.ndarray:
        """The crop as ``(S, S, 3)`` uint8 RGB."""
        from PIL import Image

        x, y, w, h = self.box
        with Image.open(self.path) as im:
            width, height = im.size
            left, top = max(0, x - self.dilation * w), max(0, y - self.dilation * h)
            right = min(width, left + (1 + self.dilation) * w)
            bottom = min(height, top + (1 + self.dilation) * h)
            crop = im.crop((left, top, right, bottom)).convert("RGB")
        cw, ch = crop.size
        if cw != ch:
            side = max(cw, ch)
            square = Image.new("RGB", (side, side), (0, 0, 0))
            square.paste(crop, ((side - cw) // 2, (side - ch) // 2))
            crop = square
        return np.asarray(crop, dtype=np.uint8)


ImageRef = str | Crop


@dataclass
class GeneCISQuery:
    reference: ImageRef
    condition: str
    text: str
    target: ImageRef
    gallery: list[ImageRef]

    @property
    def candidates(self) -> list[ImageRef]:
        """``[target] + gallery``: the official order, target at index 0."""
        return [self.target, *self.gallery]


@dataclass
class GeneCIS:
    """GeneCIS: per task, its queries (each with its own small gallery)."""

    tasks: dict[str, list[GeneCISQuery]]


def load_genecis(root: str | os.PathLike, tasks: Sequence[str] = GENECIS_TASKS, template: str = "{condition}",
                 coco_images: str | os.PathLike | None = None, vg_images: str | os.PathLike | None = None,
                 check_images: bool = True) -> GeneCIS:
    """Load GeneCIS (facebookresearch/genecis).

    Layout: ``<root>/genecis/{task}.json`` (or ``<root>/{task}.json``): a list of
    ``{"reference", "target", "condition", "gallery"}``. Object tasks name COCO val2017
    images (``{"val_image_id": n}`` -> ``<coco_images>/{n:012d}.jpg``); attribute tasks
    name Visual Genome boxes (``{"image_id": n, "instance_bbox": [x, y, w, h]}`` ->
    ``<vg_images>/{n}.jpg``, cropped, see :class:`Crop`).

    Parameters
    ----------
    root : path
    tasks : sequence of str, or one str
        Some of ``focus_attribute``, ``change_attribute``, ``focus_object``, ``change_object``.
    template : str
        Query text with ``{condition}``; the official code feeds the bare condition word.
    coco_images, vg_images : path, optional
        Default ``<root>/val2017`` and ``<root>/VG_100K_all``.
    check_images : bool
        Check that every image file exists.
    """
    root = _root(root)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)  # one name: not its letters
    unknown = [t for t in tasks if t not in GENECIS_TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {GENECIS_TASKS}, got {tasks!r}")
    coco = Path(coco_images) if coco_images is not None else root / "val2017"
    vg = Path(vg_images) if vg_images is not None else root / "VG_100K_all"
    ann_dir = root / "genecis" if (root / "genecis").is_dir() else root
    out = {}
    for task in tasks:
        path = ann_dir / f"{task}.json"
        records = _read_json(path, f"GeneCIS {task}")
        _expect(records, list, path, "top level", "the annotations")
        is_object = task.endswith("_object")

        def image(entry, where, path=path, is_object=is_object):
            if is_object:
                return str(coco / f"{_get(entry, 'val_image_id', int, path, where):012d}.jpg")
            image_id = _get(entry, "image_id", int, path, where)
            box = _get(entry, "instance_bbox", list, path, where)
            if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise FormatError(f"{path}: {where}: instance_bbox must be 4 numbers [x, y, w, h], got {box!r}")
            if box[2] <= 0 or box[3] <= 0:
                raise FormatError(f"{path}: {where}: instance_bbox has a non-positive size: {box!r}")
            return Crop(str(vg / f"{image_id}.jpg"), tuple(float(v) for v in box))

        queries = []
        for i, r in enumerate(records):
            where = f"record {i}"
            condition = _get(r, "condition", str, path, where)
            gallery = _get(r, "gallery", list, path, where)
            if not gallery:
                raise FormatError(f"{path}: {where}: empty gallery")
            q = GeneCISQuery(image(_get(r, "reference", dict, path, where), where + ", reference"), condition,
                             template.format(condition=condition),
                             image(_get(r, "target", dict, path, where), where + ", target"),
                             [image(g, f"{where}, gallery[{j}]") for j, g in enumerate(gallery)])
            queries.append(q)
        if not queries:
            raise FormatError(f"{path}: no queries")
        if check_images:
            seen: set[str] = set()
            for i, q in enumerate(queries):
                for ref in (q.reference, *q.candidates):
                    p = ref if isinstance(ref, str) else ref.path
                    if p not in seen:
                        seen.add(p)
                        _check_files([(p, f"{path}: record {i}")], True)
        out[task] = queries
    return GeneCIS(out)
