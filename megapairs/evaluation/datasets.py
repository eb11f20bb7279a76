"""Loaders for local copies of the evaluation benchmarks, in each benchmark's own on-disk
format, and the canonical query texts.

>>> from megapairs.evaluation import datasets
>>> circo = datasets.load_circo("/data/CIRCO", split="val")             # doctest: +SKIP
>>> circo.queries[0].text                                              # doctest: +SKIP
'Find a picture that also a girl with a traditional Chinese umbrella, but shows two people ...'
>>> fiq = datasets.load_fashioniq("/data/fashionIQ_dataset", caption_style="megapairs")  # doctest: +SKIP

Each loader reads the annotation files the benchmark ships, checks them (ids consecutive
or unique as the official code assumes, every referenced image present in the gallery and
on disk) and returns plain dataclasses holding image *paths* (or :class:`Crop` boxes for
GeneCIS' attribute tasks) and query texts. Nothing is decoded here. Errors name the file and
the record: ``FileNotFoundError`` for a missing file, :class:`megapairs.FormatError` (a
``ValueError``) for malformed JSON or records, ``ValueError`` for ids that do not match.
The directory layouts are in ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import _core
from .metrics import GENECIS_TASKS, MBEIR_TASKS, MMEB_DATASETS

__all__ = [
    "CIRCO",
    "CIRCO_TEMPLATE",
    "CIRR",
    "FASHIONIQ_CATEGORIES",
    "MBEIR",
    "MMEB",
    "CIRCOQuery",
    "CIRRQuery",
    "Crop",
    "FashionIQ",
    "FashionIQCategory",
    "FashionIQQuery",
    "GeneCIS",
    "GeneCISQuery",
    "MBEIRCandidate",
    "MBEIRQuery",
    "MMEBRow",
    "circo_query_text",
    "fashioniq_query_text",
    "format_string",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_genecis",
    "load_mbeir",
    "load_mbeir_pool",
    "load_mmeb",
    "mbeir_pool_path",
    "read_qrels",
]

logger = logging.getLogger("megapairs")

#: The CIRCO query MegaPairs evaluates (its ``eval/data/circo_query.jsonl``, following
#: MagicLens). Leaving out the shared concept is what broke reproductions.
CIRCO_TEMPLATE = "Find a picture that also {shared_concept}, but {relative_caption}."

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

FormatError = _core.FormatError


# --------------------------------------------------------------------------- shared helpers


def _root(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark root '{path}' is not a directory")
    return path


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no file '{path}'") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: invalid JSON: {exc}") from None


def _expect(value, types, path: Path, where: str, what: str):
    if not isinstance(value, types) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise FormatError(f"{path}: {where}: {what} must be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def _get(record, key: str, types, path: Path, where: str):
    if not isinstance(record, dict):
        raise FormatError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise FormatError(f"{path}: {where}: missing key '{key}'")
    return _expect(record[key], types, path, where, f"'{key}'")


def _check_files(paths: Iterable[tuple[str, str]], check: bool) -> None:
    """FileNotFoundError for the first (path, description) whose file is missing."""
    if not check:
        return
    for path, who in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{who}: image file '{path}' does not exist")


def _index_images(folder: Path, what: str) -> dict[str, str]:
    """stem -> path of the image files in ``folder`` (one directory listing, not one stat per image)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: no image folder '{folder}'")
    out: dict[str, str] = {}
    with os.scandir(folder) as entries:
        files = sorted((entry.name, entry.path) for entry in entries)  # a stem under two suffixes: the first name
    for name, path in files:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in _IMAGE_SUFFIXES and stem not in out:
            out[stem] = path
    return out


# --------------------------------------------------------------------------- query texts


def circo_query_text(shared_concept: str, relative_caption: str, template: str = CIRCO_TEMPLATE) -> str:
    """A CIRCO query text; by default MegaPairs' ``"Find a picture that also {shared_concept},
    but {relative_caption}."`` (fields inserted verbatim)."""
    return template.format(shared_concept=shared_concept, relative_caption=relative_caption)


def format_string(s: str | None) -> str:
    """UniIR's text clean-up (M-BEIR, MMEB): drop carriage returns, strip spaces and double
    quotes at the ends, capitalise the first character and end with '.' unless the text
    already ends with '.', '?' or '!'. ``None`` and empty texts give ``""``."""
    text = "" if s is None else s.replace("\r", "")
    text = text.strip().strip('"')
    if not text:
        return ""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _mbeir_caption(caption: str) -> str:
    s = caption.strip()
    if not s:
        return s
    s = s[0].lower() + s[1:]
    return s.removesuffix(".")


def fashioniq_query_text(captions: Sequence[str], style: str | Callable[[Sequence[str]], str] = "megapairs") -> str:
    """The query text of a FashionIQ caption pair.

    Parameters
    ----------
    captions : sequence of str
        The record's ``captions`` (two relative captions).
    style : {'megapairs', 'mbeir'} or callable
        ``'megapairs'`` (default; MegaPairs' released eval jsonl): ``f"{c0}, and {c1}"``, raw,
        in the stored order. ``'mbeir'`` (UniIR's M-BEIR and MMEB): each caption stripped,
        its first letter lower-cased and one trailing '.' dropped, empty ones skipped,
        joined with ``" and "``, then :func:`format_string`. A callable receives the
        captions and returns the text.
    """
    captions = list(captions)
    if callable(style):
        return style(captions)
    if style == "megapairs":
        return ", and ".join(captions)
    if style == "mbeir":
        return format_string(" and ".join(c for c in (_mbeir_caption(c) for c in captions if c) if c))
    raise ValueError(f"style must be 'megapairs', 'mbeir' or a callable, got {style!r}")


# --------------------------------------------------------------------------- CIRCO


@dataclass
class CIRCOQuery:
    """One CIRCO query. ``target_id`` and ``ground_truths`` are None / empty in the test split."""

    id: int
    reference_id: int
    reference_path: str
    relative_caption: str
    shared_concept: str
    text: str
    target_id: int | None = None
    ground_truths: list[int] = field(default_factory=list)
    semantic_aspects: list[str] = field(default_factory=list)


@dataclass
class CIRCO:
    """CIRCO: the COCO 2017 unlabeled gallery (same for val and test) and the split's queries."""

    split: str
    gallery_ids: list[int]
    gallery_paths: list[str]
    queries: list[CIRCOQuery]

    @property
    def has_labels(self) -> bool:
        return all(q.ground_truths for q in self.queries)


def load_circo(root: str | os.PathLike, split: str = "val", template: str = CIRCO_TEMPLATE,
               check_images: bool = True) -> CIRCO:
    """Load CIRCO (miccunifi/CIRCO annotations + COCO 2017 unlabeled images).

    Layout under ``root``: ``annotations/{split}.json`` (a list whose position is the query
    ``id``), ``COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`` and
    ``COCO2017_unlabeled/unlabeled2017/<file_name>``.

    Parameters
    ----------
    root : path
    split : {'val', 'test'}
        Test ground truths are hidden (the server scores them).
    template : str
        Query text template with ``{shared_concept}`` and ``{relative_caption}``.
    check_images : bool
        Check that every gallery image file exists.
    """
    root = _root(root)
    if split not in ("val", "test"):
        raise ValueError(f"CIRCO split must be 'val' or 'test', got {split!r}")
    ann_path = root / "annotations" / f"{split}.json"
    info_path = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    image_dir = root / "COCO2017_unlabeled" / "unlabeled2017"
    info = _read_json(info_path, "CIRCO gallery (COCO 2017 unlabeled image info)")
    images = _get(info, "images", list, info_path, "top level")
    gallery_ids, gallery_paths, position = [], [], {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        image_id = _get(img, "id", int, info_path, where)
        name = _get(img, "file_name", str, info_path, where)
        if image_id in position:
            raise FormatError(f"{info_path}: {where}: image id {image_id} is listed twice")
        position[image_id] = i
        gallery_ids.append(image_id)
        gallery_paths.append(str(image_dir / name))
    _check_files(((p, f"{info_path}: image id {i}") for p, i in zip(gallery_paths, gallery_ids)), check_images)

    records = _read_json(ann_path, f"CIRCO {split} annotations")
    _expect(records, list, ann_path, "top level", "the annotations")
    queries = []

    def in_gallery(image_id: int, what: str, where: str) -> int:
        """The one check that an annotation's image id is a gallery image (else it could only
        be scored as a silent miss)."""
        if image_id not in position:
            raise ValueError(f"{ann_path}: {where}: {what} {image_id} is not in the gallery ({info_path})")
        return image_id

    for i, r in enumerate(records):
        where = f"record {i}"
        qid = _get(r, "id", int, ann_path, where)
        if qid != i:
            raise FormatError(f"{ann_path}: {where}: id {qid} != its position {i} (CIRCO ids are the list positions)")
        where = f"record {i} (query id {qid})"
        ref = in_gallery(_get(r, "reference_img_id", int, ann_path, where), "reference_img_id", where)
        caption = _get(r, "relative_caption", str, ann_path, where)
        concept = _get(r, "shared_concept", str, ann_path, where)
        query = CIRCOQuery(qid, ref, gallery_paths[position[ref]], caption, concept,
                           circo_query_text(concept, caption, template))
        if "gt_img_ids" in r:
            target = in_gallery(_get(r, "target_img_id", int, ann_path, where), "target_img_id", where)
            gts = [_expect(g, int, ann_path, where, "gt_img_ids entries") for g in
                   _get(r, "gt_img_ids", list, ann_path, where) if g != ""]  # '' is the dataset class' padding
            if not gts:
                raise FormatError(f"{ann_path}: {where}: gt_img_ids is empty")
            if len(set(gts)) != len(gts):
                raise FormatError(f"{ann_path}: {where}: gt_img_ids lists an id twice")
            for g in gts:
                in_gallery(g, "gt_img_ids entry", where)
            if target not in gts:  # CIRCO's README: the target is always the first of gt_img_ids
                raise ValueError(f"{ann_path}: {where}: target_img_id {target} is not among gt_img_ids {gts}")
            query.ground_truths = gts
            query.target_id = target
            aspects = r.get("semantic_aspects", [])
            query.semantic_aspects = [_expect(a, str, ann_path, where, "semantic_aspects entries")
                                      for a in _expect(aspects, list, ann_path, where, "'semantic_aspects'")]
        queries.append(query)
    if not queries:
        raise FormatError(f"{ann_path}: no queries")
    labelled = sum(bool(q.ground_truths) for q in queries)
    if 0 < labelled < len(queries):
        first = next(q.id for q in queries if not q.ground_truths)
        raise FormatError(f"{ann_path}: record {first} has no gt_img_ids but {labelled} other records have them")
    return CIRCO(split, gallery_ids, gallery_paths, queries)


# --------------------------------------------------------------------------- CIRR


@dataclass
class CIRRQuery:
    """One CIRR query. ``target`` is None in test1 (hidden)."""

    pair_id: int
    reference: str
    caption: str
    text: str
    members: list[str]
    target: str | None = None
    target_soft: dict[str, float] = field(default_factory=dict)


@dataclass
class CIRR:
    """CIRR: a split's gallery (the keys of ``split.rc2.<split>.json``) and its queries."""

    split: str
    gallery_names: list[str]
    gallery_paths: list[str]
    queries: list[CIRRQuery]

    @property
    def has_labels(self) -> bool:
        return all(q.target is not None for q in self.queries)


def load_cirr(root: str | os.PathLike, split: str = "val", template: str = "{caption}",
              check_images: bool = True) -> CIRR:
    """Load CIRR (Cuberick-Orion/CIRR, annotation version rc2).

    Layout: ``<root>/cirr/captions/cap.rc2.{split}.json``,
    ``<root>/cirr/image_splits/split.rc2.{split}.json`` (name -> path relative to ``root``,
    such as ``./dev/dev-244-0-img0.png``), and the images under ``root``. ``root`` may also
    be the ``cirr`` folder itself; image paths are then relative to its parent.

    Parameters
    ----------
    root : path
    split : {'val', 'test1', 'train'}
    template : str
        Query text with ``{caption}`` (the raw caption by default).
    check_images : bool
        Check that every gallery image file exists.
    """
    root = _root(root)
    ann = root / "cirr" if (root / "cirr" / "captions").is_dir() else root
    base = ann.parent
    cap_path = ann / "captions" / f"cap.rc2.{split}.json"
    split_path = ann / "image_splits" / f"split.rc2.{split}.json"
    name_to_path = _read_json(split_path, f"CIRR {split} gallery")
    _expect(name_to_path, dict, split_path, "top level", "the image split")
    names, paths = [], []
    for name, rel in name_to_path.items():
        _expect(rel, str, split_path, f"image {name!r}", "its path")
        names.append(name)
        paths.append(str(base / rel))
    gallery = set(names)
    _check_files(((p, f"{split_path}: image {n!r}") for n, p in zip(names, paths)), check_images)

    records = _read_json(cap_path, f"CIRR {split} captions")
    _expect(records, list, cap_path, "top level", "the captions")
    queries, seen = [], set()

    def in_gallery(name: str, what: str, where: str) -> str:
        """The one check that an image a record names is in the split's image index (else it
        could only be scored as a silent miss)."""
        if name not in gallery:
            raise ValueError(f"{cap_path}: {where}: {what} {name!r} is not in the {split} gallery ({split_path})")
        return name

    for i, r in enumerate(records):
        where = f"record {i}"
        pair_id = _get(r, "pairid", int, cap_path, where)
        where = f"record {i} (pairid {pair_id})"
        if pair_id in seen:
            raise FormatError(f"{cap_path}: {where}: pairid {pair_id} appears twice")
        seen.add(pair_id)
        ref = in_gallery(_get(r, "reference", str, cap_path, where), "reference", where)
        caption = _get(r, "caption", str, cap_path, where)
        members = _get(_get(r, "img_set", dict, cap_path, where), "members", list, cap_path, where + ", img_set")
        for m in members:
            in_gallery(_expect(m, str, cap_path, where, "img_set.members entries"), "img_set.members entry", where)
        if len(set(members)) != len(members):
            raise FormatError(f"{cap_path}: {where}: img_set.members lists an image twice")
        query = CIRRQuery(pair_id, ref, caption, template.format(caption=caption), list(members))
        if "target_hard" in r:
            target = in_gallery(_get(r, "target_hard", str, cap_path, where), "target_hard", where)
            if target not in members:
                raise ValueError(f"{cap_path}: {where}: target_hard {target!r} is not in img_set.members")
            query.target = target
            soft = r.get("target_soft", {})
            query.target_soft = {str(k): float(v) for k, v in _expect(soft, dict, cap_path, where,
                                                                        "'target_soft'").items()}
        queries.append(query)
    if not queries:
        raise FormatError(f"{cap_path}: no queries")
    labelled = sum(q.target is not None for q in queries)
    if 0 < labelled < len(queries):
        first = next(q.pair_id for q in queries if q.target is None)
        raise FormatError(f"{cap_path}: pairid {first} has no target_hard but {labelled} other records have one")
    return CIRR(split, names, paths, queries)


# --------------------------------------------------------------------------- FashionIQ


@dataclass
class FashionIQQuery:
    """One FashionIQ query: the candidate (reference) image and two relative captions.
    ``target`` is None in the test split."""

    candidate: str
    captions: list[str]
    text: str
    target: str | None = None


@dataclass
class FashionIQCategory:
    gallery_names: list[str]
    gallery_paths: list[str]
    queries: list[FashionIQQuery]


@dataclass
class FashionIQ:
    """FashionIQ: per category, its own gallery (``split.<cat>.<split>.json``) and queries."""

    split: str
    categories: dict[str, FashionIQCategory]

    @property
    def has_labels(self) -> bool:
        return all(q.target is not None for c in self.categories.values() for q in c.queries)


def load_fashioniq(root: str | os.PathLike, split: str = "val", categories: Sequence[str] = FASHIONIQ_CATEGORIES,
                   caption_style: str | Callable[[Sequence[str]], str] = "megapairs",
                   check_images: bool = True) -> FashionIQ:
    """Load FashionIQ (XiaoxiaoGuo/fashion-iq).

    Layout under ``root``: ``captions/cap.{category}.{split}.json`` (a list of
    ``{"candidate", "target", "captions"}``), ``image_splits/split.{category}.{split}.json``
    (a list of ASINs: the category's gallery) and ``images/<ASIN>.<ext>`` (any image
    extension, found by one listing of the folder).

    Parameters
    ----------
    root : path
    split : {'val', 'test', 'train'}
        Zero-shot results use 'val' (test targets are hidden).
    categories : sequence of str, or one str
    caption_style : {'megapairs', 'mbeir'} or callable
        How the two captions become one query text, see :func:`fashioniq_query_text`.
    check_images : bool
        Check that every gallery image is in ``images/``.
    """
    root = _root(root)
    categories = [categories] if isinstance(categories, str) else list(categories)  # one name: not its letters
    unknown = [c for c in categories if c not in FASHIONIQ_CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"categories must be a non-empty subset of {FASHIONIQ_CATEGORIES}, got {categories!r}")
    fashioniq_query_text(["a", "b"], caption_style)  # validates the style before any file is read
    # the folder is listed whenever it exists: copies ship .jpg or .png
    stems = _index_images(root / "images", "FashionIQ") if check_images or (root / "images").is_dir() else None
    out = {}
    for cat in categories:
        split_path = root / "image_splits" / f"split.{cat}.{split}.json"
        cap_path = root / "captions" / f"cap.{cat}.{split}.json"
        names = _read_json(split_path, f"FashionIQ {cat} {split} gallery")
        _expect(names, list, split_path, "top level", "the image split")
        for j, n in enumerate(names):
            _expect(n, str, split_path, f"entry {j}", "an ASIN")
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise FormatError(f"{split_path}: ASIN {dup!r} is listed twice")
        paths = []
        for n in names:
            if stems is not None and n in stems:
                paths.append(stems[n])
            elif not check_images:
                paths.append(str(root / "images" / f"{n}.jpg"))
            else:
                raise FileNotFoundError(f"{split_path}: image {n!r}: no file '{root / 'images' / n}.<jpg|png|...>'")
        gallery = set(names)
        records = _read_json(cap_path, f"FashionIQ {cat} {split} captions")
        _expect(records, list, cap_path, "top level", "the captions")
        queries = []
        for i, r in enumerate(records):
            where = f"record {i}"
            cand = _get(r, "candidate", str, cap_path, where)
            captions = _get(r, "captions", list, cap_path, where)
            for c in captions:
                _expect(c, str, cap_path, where, "captions entries")
            if cand not in gallery:
                raise ValueError(f"{cap_path}: {where}: candidate {cand!r} is not in the {cat} gallery ({split_path})")
            query = FashionIQQuery(cand, list(captions), fashioniq_query_text(captions, caption_style))
            if "target" in r:
                target = _get(r, "target", str, cap_path, where)
                if target not in gallery:
                    raise ValueError(f"{cap_path}: {where}: target {target!r} is not in the {cat} gallery "
                                     f"({split_path})")
                query.target = target
            queries.append(query)
        if not queries:
            raise FormatError(f"{cap_path}: no queries")
        labelled = sum(q.target is not None for q in queries)
        if 0 < labelled < len(queries):
            raise FormatError(f"{cap_path}: some records have a target and others do not")
        out[cat] = FashionIQCategory(list(names), paths, queries)
    return FashionIQ(split, out)


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


# --------------------------------------------------------------------------- MMEB


@dataclass
class MMEBRow:
    """One MMEB query row: its text / image and its candidates, the positive first.
    Image entries are absolute paths or None."""

    query_text: str
    query_image: str | None
    candidate_texts: list[str]
    candidate_images: list[str | None]


@dataclass
class MMEB:
    datasets: dict[str, list[MMEBRow]]


def _mmeb_table(root: Path, name: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / name
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files and (root / f"{name}.parquet").is_file():
        files = [root / f"{name}.parquet"]
    if not files:
        raise FileNotFoundError(f"MMEB {name}: no parquet file in '{folder}' (nor '{root / name}.parquet')")
    tables = []
    for f in files:
        try:
            tables.append((f, pq.read_table(f)))
        except (OSError, pa.ArrowException) as exc:
            raise FormatError(f"{f}: cannot read as Parquet: {exc}") from None
    return tables


def load_mmeb(root: str | os.PathLike, datasets: Sequence[str] | None = None,
              image_root: str | os.PathLike | None = None, image_token: str | None = None,
              check_images: bool = True) -> MMEB:
    """Load MMEB-eval (TIGER-Lab/MMEB-eval, the v1 protocol MegaPairs reports).

    Layout: ``<root>/<dataset>/*.parquet`` (a Hugging Face snapshot of the dataset) with the
    columns ``qry_text``, ``qry_img_path``, ``tgt_text`` (list) and ``tgt_img_path`` (list,
    the positive first); image paths are relative to ``image_root``.

    Parameters
    ----------
    root : path
    datasets : sequence of str, or one str, optional
        Names from :data:`megapairs.evaluation.metrics.MMEB_DATASETS`; default all 36.
    image_root : path, optional
        Default ``<root>/eval_images`` when it exists (``images.zip`` unpacked), else ``root``.
    image_token : str, optional
        Replaces the ``<|image_1|>`` placeholder in the texts (VLM2Vec swaps in the
        backbone's own token); by default the texts are kept verbatim.
    check_images : bool
        Check that every referenced image file exists.
    """
    root = _root(root)
    names = list(MMEB_DATASETS) if datasets is None else [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [n for n in names if n not in MMEB_DATASETS]
    if unknown or not names:
        raise ValueError(f"datasets must be a non-empty subset of the MMEB datasets {list(MMEB_DATASETS)}, "
                         f"got {names!r}")
    if image_root is None:
        image_root = root / "eval_images" if (root / "eval_images").is_dir() else root
    image_root = Path(image_root)

    def text(value, path, where):
        value = _expect("" if value is None else value, str, path, where, "texts")
        return value.replace("<|image_1|>", image_token) if image_token is not None else value

    def img(value, path, where):
        if value is None or value == "":
            return None
        return str(image_root / _expect(value, str, path, where, "image paths"))

    out = {}
    for name in names:
        rows = []
        for path, table in _mmeb_table(root, name):
            missing = [c for c in ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path") if c not in table.column_names]
            if missing:
                raise FormatError(f"{path}: missing column '{missing[0]}'")
            cols = {c: table.column(c).to_pylist() for c in ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")}
            start = len(rows)  # rows of earlier files of this dataset are already checked
            for i in range(table.num_rows):
                where = f"row {i}"
                texts, images = cols["tgt_text"][i], cols["tgt_img_path"][i]
                _expect(texts, list, path, where, "'tgt_text'")
                _expect(images, list, path, where, "'tgt_img_path'")
                if len(texts) != len(images) or not texts:
                    raise FormatError(f"{path}: {where}: tgt_text has {len(texts)} entries but tgt_img_path has "
                                      f"{len(images)} (need the same number, at least 1)")
                rows.append(MMEBRow(text(cols["qry_text"][i], path, where), img(cols["qry_img_path"][i], path, where),
                                    [text(t, path, where) for t in texts], [img(p, path, where) for p in images]))
            if check_images:
                seen = set()
                for i, row in enumerate(rows[start:]):
                    for p in (row.query_image, *row.candidate_images):
                        if p is not None and p not in seen:
                            seen.add(p)
                            _check_files([(p, f"{path}: row {i}")], True)
        if not rows:
            raise FormatError(f"MMEB {name}: no rows in {root / name}")
        out[name] = rows
    return MMEB(out)


# --------------------------------------------------------------------------- M-BEIR


@dataclass
class MBEIRQuery:
    qid: str
    text: str | None
    image: str | None
    modality: str | None = None


@dataclass
class MBEIRCandidate:
    did: str
    text: str | None
    image: str | None
    modality: str | None = None


@dataclass
class MBEIR:
    """One M-BEIR test set: its queries, its candidate pool and the relevant ``did`` per query."""

    task: str
    queries: list[MBEIRQuery]
    pool: list[MBEIRCandidate]
    relevant: dict[str, list[str]]
    pool_path: str = ""


def read_qrels(path: str | os.PathLike) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Read an M-BEIR qrels file (``qid 0 did relevance task_id`` per line).

    Returns ``(relevant, task_of)``: per ``qid`` the ``did`` with relevance > 0 in file
    order (lines with relevance <= 0 are skipped, as UniIR's ``load_qrel`` does), and the
    task id of each such query.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"M-BEIR qrels: no file '{path}'") from None
    relevant: dict[str, list[str]] = {}
    task_of: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 5:
            raise FormatError(f"{path}: line {n}: expected 'qid 0 did relevance task_id', got {line!r:.100}")
        qid, _, did, relevance, task_id = parts
        try:
            rel = float(relevance)
        except ValueError:
            raise FormatError(f"{path}: line {n}: relevance {relevance!r} is not a number") from None
        if rel > 0:
            relevant.setdefault(qid, []).append(did)
            task_of[qid] = task_id
    return relevant, task_of


def _jsonl(path: Path, what: str) -> list[dict]:
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no file '{path}'") from None
    out = []
    with f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}: line {n}: invalid JSON: {exc}") from None
            if not isinstance(record, dict):
                raise FormatError(f"{path}: line {n}: expected a JSON object")
            out.append(record)
    return out


def _instructions(path: Path) -> dict[str, list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"M-BEIR instructions: no file '{path}'") from None
    out = {}
    for line in lines[1:]:  # header row
        parts = line.strip().split("\t")
        if len(parts) < 5:
            continue
        out[f"{parts[3]}, {parts[0]}, {parts[1]}"] = [p for p in parts[4:] if p]
    return out


def mbeir_pool_path(root: str | os.PathLike, task: str, split: str = "test", pool: str = "local") -> Path:
    """The candidate pool file UniIR uses for ``task``: ``cand_pool/local/mbeir_<task>_cand_pool.jsonl``
    (MSCOCO has per-split pools, ``mscoco_task0_test``) or, for ``pool='global'``,
    ``cand_pool/global/mbeir_union_<split>_cand_pool.jsonl``."""
    root = Path(root)
    if pool == "global":
        return root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl"
    if pool != "local":
        raise ValueError(f"pool must be 'local' or 'global', got {pool!r}")
    name = f"{task}_{split}" if task.startswith("mscoco_") else task
    return root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl"


def load_mbeir_pool(path: str | os.PathLike, root: str | os.PathLike, check_images: bool = True
                    ) -> list[MBEIRCandidate]:
    """Read an M-BEIR candidate pool (``{"did", "txt", "img_path", "modality"}`` per line);
    texts go through :func:`format_string`, image paths are joined to ``root``."""
    path, root = Path(path), Path(root)
    pool, seen = [], set()
    for n, r in enumerate(_jsonl(path, "M-BEIR candidate pool"), start=1):
        where = f"candidate {n}"
        did = _get(r, "did", str, path, where)
        if did in seen:
            raise FormatError(f"{path}: {where}: did {did!r} appears twice")
        seen.add(did)
        txt = r.get("txt")
        img = r.get("img_path")
        text = format_string(_expect(txt, str, path, where, "'txt'")) if txt is not None else ""
        image = str(root / _expect(img, str, path, where, "'img_path'")) if img else None
        if not text and image is None:
            raise FormatError(f"{path}: {where} (did {did!r}) has neither text nor image")
        pool.append(MBEIRCandidate(did, text or None, image, r.get("modality")))
    if not pool:
        raise FormatError(f"{path}: the candidate pool is empty")
    _check_files(((c.image, f"{path}: did {c.did!r}") for c in pool if c.image), check_images)
    return pool


def load_mbeir(root: str | os.PathLike, task: str, split: str = "test", pool: str = "local",
               instruction: str | None = None, seed: int = 0, check_images: bool = True,
               candidates: list[MBEIRCandidate] | None = None) -> MBEIR:
    """Load one M-BEIR test set (TIGER-Lab/M-BEIR).

    Layout under ``root``: ``query/<split>/mbeir_<task>_<split>.jsonl``, the pool of
    :func:`mbeir_pool_path`, ``qrels/<split>/mbeir_<task>_<split>_qrels.txt``, image paths
    relative to ``root`` and, for ``instruction='random'``,
    ``instructions/query_instructions.tsv``.

    Parameters
    ----------
    root : path
    task : str
        A name from :data:`megapairs.evaluation.metrics.MBEIR_TASKS`, e.g. ``'cirr_task7'``.
    split : str
    pool : {'local', 'global'}
        M-BEIR_local (the task's own pool) or the 5.6M union pool.
    instruction : str, optional
        None: the query text alone (UniIR's no-instruction setting; CLIP-style retrievers).
        A string: that instruction before every query text (one fixed instruction, as
        MM-Embed uses). ``'random'``: UniIR's setting, one of the task's prompts from
        ``query_instructions.tsv`` per query, drawn with ``seed`` (the draw cannot replay
        UniIR's own random state); the prompts are those keyed by the query's dataset id, its
        ``query_modality`` and the ``modality`` (in the pool) of its first positive candidate
        of the same dataset, as UniIR keys them. Query texts are ``format_string(f"{prompt} {txt}")``.
    seed : int
    check_images : bool
    candidates : list of MBEIRCandidate, optional
        An already loaded pool (the global pool is shared by all tasks).
    """
    root = _root(root)
    if task not in MBEIR_TASKS:
        raise ValueError(f"unknown M-BEIR task {task!r}; the tasks are {list(MBEIR_TASKS)}")
    query_path = root / "query" / split / f"mbeir_{task}_{split}.jsonl"
    qrels_path = root / "qrels" / split / f"mbeir_{task}_{split}_qrels.txt"
    pool_path = mbeir_pool_path(root, task, split, pool)
    prompts = None
    if instruction == "random":
        prompts = _instructions(root / "instructions" / "query_instructions.tsv")
    rng = random.Random(seed)
    relevant, _ = read_qrels(qrels_path)
    if candidates is None:
        candidates = load_mbeir_pool(pool_path, root, check_images)
    modality_of = {c.did: c.modality for c in candidates} if prompts is not None else {}
    queries, seen = [], set()
    for n, r in enumerate(_jsonl(query_path, f"M-BEIR {task} queries"), start=1):
        where = f"query {n}"
        qid = _get(r, "qid", str, query_path, where)
        if qid in seen:
            raise FormatError(f"{query_path}: {where}: qid {qid!r} appears twice")
        seen.add(qid)
        txt = r.get("query_txt")
        txt = _expect(txt, str, query_path, where, "'query_txt'") if txt is not None else ""
        img = r.get("query_img_path")
        image = str(root / _expect(img, str, query_path, where, "'query_img_path'")) if img else None
        prompt = instruction
        if prompts is not None:
            # UniIR keys the prompt by the modality of a positive candidate of the query's own
            # dataset (the query records have no candidate modality); we take the first one.
            dataset_id = qid.split(":")[0]
            positives = [d for d in (r.get("pos_cand_list") or relevant.get(qid, []))
                         if isinstance(d, str) and d.split(":")[0] == dataset_id and d in modality_of]
            if not positives:
                raise ValueError(f"{query_path}: {where}: qid {qid!r} has no positive candidate of dataset "
                                 f"{dataset_id} in {pool_path}, whose modality selects the instruction")
            key = f"{dataset_id}, {r.get('query_modality')}, {modality_of[positives[0]]}"
            if not prompts.get(key):
                raise ValueError(f"{query_path}: {where}: no instruction for '{key}' in query_instructions.tsv")
            prompt = format_string(rng.choice(prompts[key]))
        text = format_string(f"{prompt} {txt}") if prompt else format_string(txt)
        if not text and image is None:
            raise FormatError(f"{query_path}: {where} (qid {qid!r}) has neither text nor image")
        if qid not in relevant:
            raise ValueError(f"{query_path}: {where}: qid {qid!r} has no line with relevance > 0 in {qrels_path}")
        queries.append(MBEIRQuery(qid, text or None, image, r.get("query_modality")))
    if not queries:
        raise FormatError(f"{query_path}: no queries")
    _check_files(((q.image, f"{query_path}: qid {q.qid!r}") for q in queries if q.image), check_images)
    dids = {c.did for c in candidates}
    missing = [(q.qid, d) for q in queries for d in relevant[q.qid] if d not in dids]
    if missing:
        logger.warning("M-BEIR %s: %d relevant candidates of the qrels are not in %s (first: qid %s, did %s); "
                       "they can never be retrieved", task, len(missing), pool_path, *missing[0])
    return MBEIR(task, queries, candidates, {q.qid: relevant[q.qid] for q in queries}, str(pool_path))
