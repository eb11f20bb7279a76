"""FashionIQ's loader (:func:`load_fashioniq`): per category its own gallery and queries.
Re-exported by :mod:`megapairs.evaluation.datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._datasets_common import (
    FormatError,
    _expect,
    _get,
    _index_images,
    _read_json,
    _root,
    fashioniq_query_text,
)

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


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
