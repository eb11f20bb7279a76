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

# One private module per benchmark family, over the shared helpers of _datasets_common.
from ._datasets_circo import CIRCO, CIRCOQuery, load_circo
from ._datasets_cirr import CIRR, CIRRQuery, load_cirr
from ._datasets_common import (
    CIRCO_TEMPLATE,
    FormatError,  # noqa: F401 (a name of this module before the split, not in __all__)
    circo_query_text,
    fashioniq_query_text,
    format_string,
)
from ._datasets_fashioniq import (
    FASHIONIQ_CATEGORIES,
    FashionIQ,
    FashionIQCategory,
    FashionIQQuery,
    load_fashioniq,
)
from ._datasets_genecis import (
    Crop,
    GeneCIS,
    GeneCISQuery,
    ImageRef,  # noqa: F401 (likewise)
    load_genecis,
)
from ._datasets_mbeir import (
    MBEIR,
    MBEIRCandidate,
    MBEIRQuery,
    load_mbeir,
    load_mbeir_pool,
    mbeir_pool_path,
    read_qrels,
)
from ._datasets_mmeb import MMEB, MMEBRow, load_mmeb

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

