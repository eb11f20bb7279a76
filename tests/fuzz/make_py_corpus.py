"""Writes the seeds of the Python fuzz targets (tests/fuzz/fuzz_python.py) to
tests/fuzz/corpus/py_<target>/: valid files as megapairs and the tools it reads from write
them, and known-bad ones next to each error path. Every seed stays within 16 KB (a tar
file is at least 10 KB).

    .venv/bin/python tests/fuzz/make_py_corpus.py
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "corpus"
RECORD = {"q_img": "a/0001.jpg", "q_text": ["Find the same mug, but red.", "Show it from above."],
          "t_img": "b/0002.jpg", "hns": ["a/0001.jpg", "c/0003.jpg"]}


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=2)
    return sink.getvalue()


def tar(members: list[tuple[str, bytes]], cut: int | None = None) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    data = sink.getvalue()
    return data[:cut] if cut else data


def image(fmt: str, mode: str = "RGB", size: tuple[int, int] = (24, 16), **save) -> bytes:
    """A small picture with some structure (a gradient and a square) in ``fmt``."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 10 % 256, y * 15 % 256, (x + y) * 5 % 256], axis=-1).astype(np.uint8)
    rgb[4:10, 4:10] = (200, 30, 30)
    im = Image.fromarray(rgb).convert(mode)
    sink = io.BytesIO()
    im.save(sink, fmt, **save)
    return sink.getvalue()


def claims_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims another size (the CRC fixed so the header stays valid)."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def images() -> dict[str, bytes]:
    from PIL import Image

    png = image("PNG")
    frames = io.BytesIO()
    Image.new("P", (8, 8), 1).save(frames, "GIF", save_all=True, append_images=[Image.new("P", (8, 8), 2)])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decode(apply_exif=True) transposes
    return {
        "rgb.png": png,
        "rgba.png": image("PNG", "RGBA"),
        "palette.png": image("PNG", "P"),
        "gray16.png": image("PNG", "I;16"),
        "la.png": image("PNG", "LA"),
        "anim.gif": frames.getvalue(),
        "lossy.webp": image("WEBP", quality=50),
        "lossless.webp": image("WEBP", "RGBA", lossless=True),
        "bmp.bmp": image("BMP"),
        "tiff.tif": image("TIFF", compression="tiff_lzw"),
        "rotated.png": image("PNG", exif=exif.tobytes()),
        "cmyk.tif": image("TIFF", "CMYK"),
        "truncated.png": png[:len(png) // 2],
        "claims_huge.png": claims_size(png, 30000, 30000),
        "claims_zero.png": claims_size(png, 0, 16),
        "empty.bin": b"",
        "text.bin": b"not an image at all",
    }


def tokenizer_files() -> dict[str, bytes]:
    """First byte: which file the rest is (see target_tokenizer in fuzz_python.py)."""
    import gzip

    vocab = {"a": 0, "b": 1, "ab": 2, "a</w>": 3, "b</w>": 4, "ab</w>": 5, "<|startoftext|>": 6, "<|endoftext|>": 7}
    wordpiece = {"model": {"type": "WordPiece", "unk_token": "[UNK]",
                           "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "##b": 6}}}
    return {
        "clip_vocab.json": b"\x00" + json.dumps(vocab).encode(),
        "clip_vocab_not_ids.json": b"\x00" + json.dumps({"a": "zero"}).encode(),
        "clip_tokenizer_json_strings.json": b"\x01" + json.dumps({"model": {"merges": ["a b", "a</w> b</w>"]}}).encode(),
        "clip_tokenizer_json_pairs.json": b"\x01" + json.dumps({"model": {"merges": [["a", "b"]]}}).encode(),
        "clip_tokenizer_json_bad.json": b"\x01" + json.dumps({"model": {"merges": [1, 2]}}).encode(),
        "openai_bpe.gz": b"\x02" + gzip.compress(b"#version: 0.2\na b\nab </w>\n", mtime=0),
        "openai_bpe_cut.gz": b"\x02" + gzip.compress(b"#version: 0.2\na b\n", mtime=0)[:12],
        "wordpiece_config.json": b"\x03" + json.dumps({"do_lower_case": False, "strip_accents": True,
                                                       "unk_token": {"content": "[UNK]"},
                                                       "additional_special_tokens": ["[MASK]"]}).encode(),
        "wordpiece_tokenizer.json": b"\x04" + json.dumps(wordpiece).encode(),
        "wordpiece_tokenizer_gap.json": b"\x04" + json.dumps({"model": {"vocab": {"a": 0, "b": 2}}}).encode(),
    }


def seeds() -> dict[str, dict[str, bytes]]:
    rec_line = json.dumps(RECORD).encode()
    table = pa.table({k: [v] * 3 for k, v in RECORD.items()})
    released = pa.table({"q_img": [RECORD["q_img"]], "q_texts": [RECORD["q_text"]], "t_img": [RECORD["t_img"]],
                         "hns": [RECORD["hns"]]})
    journal_head = json.dumps({"event": "start", "settings": {"prompt_version": "v1", "seed": 0}}).encode()
    done = json.dumps({"event": "done", "q_img": "a.jpg", "t_img": "b.jpg", "q_text": ["x", "y", "z"]}).encode()
    failed = json.dumps({"event": "failed", "q_img": "a.jpg", "t_img": "c.jpg", "stage": "llm",
                         "reason": "HTTP 500"}).encode()
    clip_hf = {"model_type": "clip", "projection_dim": 16,
               "vision_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu",
                                 "layer_norm_eps": 1e-5},
               "text_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "max_position_embeddings": 77, "vocab_size": 100}}
    open_clip = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32,
                                                                "patch_size": 8},
                               "text_cfg": {"context_length": 77, "vocab_size": 100, "width": 32, "heads": 2,
                                            "layers": 2}},
                 "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    dinov2 = {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "mlp_ratio": 4, "image_size": 518, "patch_size": 14, "layer_norm_eps": 1e-6, "num_register_tokens": 4,
              "use_swiglu_ffn": False, "layerscale_value": 1.0}
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64, "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12}
    processor = {"crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224},
                 "image_mean": [0.48, 0.45, 0.4], "image_std": [0.26, 0.26, 0.27], "resample": 3,
                 "do_center_crop": True}
    return {
        "py_records": {
            "good.jsonl": rec_line + b"\n" + rec_line + b"\n\n",
            "released.jsonl": json.dumps({**RECORD, "q_texts": RECORD["q_text"], "q_text": None}).encode() + b"\n",
            "bad_json.jsonl": rec_line + b"\n{\"q_img\": \n",
            "bad_field.jsonl": json.dumps({**RECORD, "hns": "not a list"}).encode() + b"\n",
            "latin1.jsonl": b'{"q_img": "caf\xe9"}\n',
            "deep.jsonl": rec_line + b"\n" + b"[" * 3000 + b"]" * 3000 + b"\n",
            "good.parquet": parquet(table),
            "released.parquet": parquet(released),
            "truncated.parquet": parquet(table)[:300],
            "wrong_columns.parquet": parquet(pa.table({"x": [1, 2]})),
        },
        "py_shard": {
            "good.tar": tar([("s/0001.jpg", b"\xff\xd8jpeg"), ("s/0001.txt", b"a caption"),
                             ("s/0002.jpg", b"\xff\xd8jpeg2"), ("s/0002.json", b"{}")]),
            "cut.tar": tar([("s/0001.jpg", b"x" * 600)], cut=700),
            "dotdot.tar": tar([("../evil.jpg", b"x")]),
            "absolute.tar": tar([("/etc/evil.jpg", b"x")]),
            "split.tar": tar([("a.jpg", b"1"), ("b.jpg", b"2"), ("a.txt", b"3")]),
            "empty.tar": tar([]),
        },
        "py_journal": {
            "good.jsonl": b"\n".join([journal_head, done, failed]) + b"\n",
            "torn.jsonl": b"\n".join([journal_head, done]) + b"\n" + done[:20],
            "bad_middle.jsonl": b"\n".join([journal_head, b"{not json", done]) + b"\n",
            "no_header.jsonl": done + b"\n",
            "deep.jsonl": b"\n".join([journal_head, b"[" * 3000 + b"]" * 3000]) + b"\n",
        },
        "py_answer": {
            "json.txt": b'["Find the same dog, but running.", "Show it in the snow.", "What if it were a puppy?"]',
            "fenced.txt": b'```json\n{"instructions": ["A", "B", "C"]}\n```',
            "lines.txt": b"1. Find a red one.\n2. Show it at night.\n- Make it smaller.\n",
            "salvage.txt": b'Sure! ["one", "two", "thr',
            "empty.txt": b"",
            "deep.txt": b'["a", ' + b"[" * 3000 + b"]" * 3000 + b"]",
            "description.txt": b"Both images show a wooden chair; the second is painted blue and stands outside.",
        },
        "py_checkpoint": {
            "clip_hf.json": json.dumps(clip_hf).encode(),
            "open_clip.json": json.dumps(open_clip).encode(),
            "dinov2.json": json.dumps(dinov2).encode(),
            "bert.json": json.dumps(bert).encode(),
            "processor.json": json.dumps(processor).encode(),
            "wrong_types.json": json.dumps({**bert, "hidden_size": "32", "num_hidden_layers": -1}).encode(),
            "not_object.json": b"[1, 2, 3]",
            "bad_utf8.json": b'{"model_type": "\xff"}',
            "deep.json": b"[" * 200 + b"]" * 200,
            "deeper.json": b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        },
        "py_image": images(),
        "py_tokenizer": tokenizer_files(),
        "py_pipeline": {
            "good.toml": b'[corpus]\npath = "photos"\n\n[[spaces]]\nname = "caption"\nkind = "caption"\n'
                         b'model = "m"\nband = [0.5, 0.9]\n\n[ray]\nworkers = 4\n',
            "bad_band.toml": b'[[spaces]]\nname = "c"\nkind = "caption"\nmodel = "m"\nband = [0.9, 0.5]\n',
            "unknown.toml": b"[nonsense]\nx = 1\n",
            "bad_type.toml": b'[encode]\nbatch_size = "many"\n',
            "not_toml.toml": b"[[[\n",
            "deep.toml": b"[mine]\nbands = " + b"[" * 3000 + b"]" * 3000 + b"\n",
            "servers.toml": b'[annotate]\nservers = ["http://a:8000/v1", "ftp://b"]\n',
        },
    }


def main() -> None:
    for target, files in seeds().items():
        folder = OUT / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            assert len(data) <= 16384, (target, name)
            (folder / name).write_bytes(data)
        print(f"{folder}: {len(files)} seeds")


if __name__ == "__main__":
    main()
