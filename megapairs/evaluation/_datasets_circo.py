"""CIRCO's loader (:func:`load_circo`) and its query and dataset classes: the COCO 2017
unlabeled gallery and the val/test queries. Re-exported by :mod:`megapairs.evaluation.datasets`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._datasets_common import (
    CIRCO_TEMPLATE,
    FormatError,
    _check_files,
    _expect,
    _get,
    _read_json,
    _root,
    circo_query_text,
)

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
