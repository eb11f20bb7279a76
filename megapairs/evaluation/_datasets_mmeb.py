"""MMEB-eval's loader (:func:`load_mmeb`, the v1 protocol MegaPairs reports): Parquet rows of
each of its 36 datasets. Re-exported by :mod:`megapairs.evaluation.datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._dataset_records import open_parquet
from ._datasets_common import (
    FormatError,
    _check_files,
    _expect,
    _root,
)
from .metrics import MMEB_DATASETS

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

    folder = root / name
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files and (root / f"{name}.parquet").is_file():
        files = [root / f"{name}.parquet"]
    if not files:
        raise FileNotFoundError(f"MMEB {name}: no parquet file in '{folder}' (nor '{root / name}.parquet')")
    tables = []
    for f in files:
        try:
            tables.append((f, open_parquet(f).read()))
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
