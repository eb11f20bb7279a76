"""Atheris (libFuzzer for Python) targets for the Python readers of outside bytes.

    .venv/bin/python tests/fuzz/fuzz_python.py TARGET [libFuzzer flags] [corpus dirs]

Targets (each input is the bytes of one file):

- ``records``: a MegaPairs records file, read as ``.jsonl``, ``.jsonl.gz`` and ``.parquet``
  (``megapairs.dataset.read_records``, ``iter_parquet``);
- ``shard``: a WebDataset tar (``megapairs.dataset.iter_shard``);
- ``journal``: an annotation journal (``megapairs.annotate.read_journal``);
- ``answer``: an LLM's answer (``parse_instructions``, ``validate_instructions``,
  ``check_description``);
- ``checkpoint``: a ``config.json`` given to every checkpoint reader (Hugging Face CLIP,
  OpenCLIP, DINOv2, BERT) and a ``preprocessor_config.json``;
- ``pipeline``: a pipeline ``megapairs.toml`` (``megapairs.pipeline.load_config``);
- ``tokenizer``: tokenizer files (the first byte picks which one the rest is: a CLIP
  ``vocab.json``, a ``tokenizer.json`` standing in for ``merges.txt``, an OpenAI bpe ``.gz``,
  a WordPiece ``tokenizer_config.json`` or a WordPiece ``tokenizer.json``), loaded by
  ``CLIPTokenizer``/``WordPieceTokenizer.from_pretrained`` and used on a text; the C loaders
  under them are ``build/fuzz/fuzz_text``'s;
- ``image``: an image file in any format, through the Pillow side of the image boundary
  (``megapairs.images.decode`` with and without EXIF, ``preprocess``; JPEG goes to the C
  decoder, which ``build/fuzz/fuzz_jpeg`` covers).

A reader may refuse an input only with the exceptions it documents (ValueError, which
includes ``megapairs.FormatError`` and ``ConfigError``); any other exception is a finding and
Atheris stops with the input saved. Seeds: ``tests/fuzz/corpus/py_<target>/`` (made by
``tests/fuzz/make_py_corpus.py``). ``tests/test_fuzz_python.py`` replays every seed and every
crash kept in ``tests/fuzz/regressions/``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TMP = Path(tempfile.mkdtemp(prefix="megapairs-fuzz-"))


def _write(name: str, data: bytes) -> Path:
    path = TMP / name
    path.write_bytes(data)
    return path


def target_records(data: bytes) -> None:
    import gzip

    from megapairs import dataset

    for name, payload in (("r.jsonl", data), ("r.jsonl.gz", gzip.compress(data, mtime=0)), ("r.parquet", data)):
        path = _write(name, payload)
        try:
            if name.endswith(".parquet"):
                dataset.read_records(path)
            else:
                dataset.read_jsonl(path, max_line_bytes=1 << 16)
        except ValueError:
            pass
        if name.endswith(".parquet"):
            try:
                for _ in dataset.iter_parquet(path, batch_size=3):
                    pass
            except ValueError:
                pass
    # a gzip stream of the input itself (not made by us: may be cut or corrupt)
    try:
        dataset.read_jsonl(_write("raw.jsonl.gz", data), max_line_bytes=1 << 16)
    except ValueError:
        pass


def target_shard(data: bytes) -> None:
    from megapairs import dataset

    try:
        for _ in dataset.iter_shard(_write("s.tar", data), max_member_size=1 << 20):
            pass
    except ValueError:
        pass


def target_journal(data: bytes) -> None:
    from megapairs import annotate

    try:
        annotate.read_journal(_write("j.jsonl", data))
    except ValueError:
        pass


def target_answer(data: bytes) -> None:
    from megapairs.annotate import parsing

    text = data.decode("utf-8", "replace")
    items = parsing.parse_instructions(text)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise AssertionError(f"parse_instructions returned {items!r}")
    for call in (lambda: parsing.validate_instructions(items), lambda: parsing.check_description(text),
                 lambda: parsing.check_description(text, "length")):
        try:
            call()
        except ValueError:
            pass


def target_checkpoint(data: bytes) -> None:
    from megapairs import _checkpoints, _hub, images

    path = _write("config.json", data)
    try:
        config = _hub.read_json(path)
    except ValueError:
        return
    for reader in (_checkpoints.clip_hf_config, _checkpoints.clip_open_clip_config, _checkpoints.clip_text_hf_config,
                   _checkpoints.clip_text_open_clip_config, _checkpoints.dinov2_config, _checkpoints.bert_config):
        try:
            reader(config, path)
        except ValueError:
            pass
    folder = TMP / "processor"
    folder.mkdir(exist_ok=True)
    (folder / "preprocessor_config.json").write_bytes(data)
    try:
        _checkpoints.processor_transform(folder, images.PRESETS["clip"])
    except ValueError:
        pass


def target_pipeline(data: bytes) -> None:
    from megapairs.pipeline import load_config

    try:
        load_config(_write("megapairs.toml", data))
    except ValueError:
        pass


_TINY_VOCAB = {"a": 0, "b": 1, "ab": 2, "a</w>": 3, "b</w>": 4, "ab</w>": 5, "<|startoftext|>": 6,
               "<|endoftext|>": 7}


def target_tokenizer(data: bytes) -> None:
    import json
    import shutil

    from megapairs import text

    kind, body = (data[0] % 5, data[1:]) if data else (0, b"")
    folder = TMP / "tokenizer"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    if kind == 0:
        files = {"vocab.json": body, "merges.txt": b"#version: 0.2\na b\n"}
    elif kind == 1:
        files = {"vocab.json": json.dumps(_TINY_VOCAB).encode(), "tokenizer.json": body}
    elif kind == 2:
        files = {"bpe_simple_vocab_16e6.txt.gz": body}
    elif kind == 3:
        files = {"vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n##b\n", "tokenizer_config.json": body}
    else:
        files = {"tokenizer.json": body}
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    try:
        tok = text.CLIPTokenizer.from_pretrained(folder) if kind < 3 else text.WordPieceTokenizer.from_pretrained(folder)
    except ValueError:
        return
    sample = ["ab a b", body[:200].decode("utf-8", "replace")]
    ids = tok(sample) if kind < 3 else tok(sample, max_length=16)["input_ids"]
    if ids.min() < 0 or ids.max() >= tok.vocab_size:
        raise AssertionError(f"ids out of range [0, {tok.vocab_size}): {ids}")


def target_image(data: bytes) -> None:
    import dataclasses

    import numpy as np

    from megapairs import images

    limit = 1 << 22
    small = dataclasses.replace(images.PRESETS["clip"], size=32, crop_size=(24, 24))
    for exif in (False, True):
        try:
            pixels = images.decode(data, apply_exif=exif, max_pixels=limit)
        except ValueError:
            continue
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or not 0 < pixels.size <= 3 * limit:
            raise AssertionError(f"decode returned {pixels.dtype} {pixels.shape}")
    try:
        batch = images.preprocess([data], small, max_pixels=limit, num_threads=1)
    except ValueError:
        return
    if batch.shape != (1, 3, 24, 24) or not np.isfinite(batch).all():
        raise AssertionError(f"preprocess returned {batch.shape}")


TARGETS = {name[len("target_"):]: fn for name, fn in globals().items() if name.startswith("target_")}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus dirs]")
    import atheris

    name = sys.argv.pop(1)
    with atheris.instrument_imports(include=["megapairs"]):
        import megapairs
        import megapairs.annotate.parsing
        import megapairs.dataset
        import megapairs.pipeline  # noqa: F401
    os.environ.setdefault("MEGAPAIRS_NUM_THREADS", "1")
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
