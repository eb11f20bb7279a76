"""CIRR's loader (:func:`load_cirr`, annotation version rc2) and its query and dataset
classes. Re-exported by :mod:`megapairs.evaluation.datasets`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._datasets_common import (
    FormatError,
    _check_files,
    _expect,
    _get,
    _read_json,
    _root,
)

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
