"""Builders of tiny benchmark trees in each benchmark's official on-disk format, shared by
test_evaluation_loaders.py and test_evaluate.py (this module holds no tests).

Images are small solid-colour PNG / JPEG files, decodable by megapairs and Pillow. Each
writer follows the layout documented in docs/evaluation.md, which mirrors the official
repositories (miccunifi/CIRCO + SEARLE, Cuberick-Orion/CIRR, XiaoxiaoGuo/fashion-iq,
facebookresearch/genecis, TIGER-Lab/MMEB-eval, TIGER-Lab/M-BEIR)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image


def save_tiny_clip(folder: Path) -> Path:
    """A seeded, randomly initialised one-layer CLIPModel saved in the Hugging Face layout."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = text | {"image_size": 32, "patch_size": 16}
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).eval().save_pretrained(
        folder, safe_serialization=True)
    return folder


def write_image(path: Path, colour=(128, 64, 32), size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(int(c) for c in colour)).save(path)
    return path


def colour(i: int) -> tuple[int, int, int]:
    """A distinct colour per index (no channel 0, so black padding never collides)."""
    return (10 + (i * 37) % 240, 10 + (i * 91) % 240, 10 + (i * 53) % 240)


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CIRCO


def make_circo(root: Path, gallery_ids, splits: dict) -> Path:
    """``splits``: split -> list of annotation records (as in annotations/{split}.json)."""
    images = []
    for i, image_id in enumerate(gallery_ids):
        name = f"{image_id:012d}.jpg"
        write_image(root / "COCO2017_unlabeled" / "unlabeled2017" / name, colour(i))
        images.append({"id": image_id, "file_name": name, "license": 0})
    write_json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
               {"info": {}, "images": images})
    for split, records in splits.items():
        write_json(root / "annotations" / f"{split}.json", records)
    return root


# --------------------------------------------------------------------------- CIRR


def make_cirr(root: Path, split: str, names, records) -> Path:
    """Gallery ``names`` stored as ./<folder>/<name>.png, as the rc2 image splits do."""
    folder = {"val": "dev", "test1": "test1", "train": "train"}[split]
    mapping = {}
    for i, name in enumerate(names):
        write_image(root / folder / f"{name}.png", colour(i))
        mapping[name] = f"./{folder}/{name}.png"
    write_json(root / "cirr" / "image_splits" / f"split.rc2.{split}.json", mapping)
    write_json(root / "cirr" / "captions" / f"cap.rc2.{split}.json", records)
    return root


def cirr_record(pair_id, reference, caption, members, target=None):
    r = {"pairid": pair_id, "reference": reference, "caption": caption,
         "img_set": {"id": pair_id, "members": list(members), "reference_rank": 0}}
    if target is not None:
        r["target_hard"] = target
        r["target_soft"] = {target: 1.0}
        r["img_set"]["target_rank"] = 1
    return r


# --------------------------------------------------------------------------- FashionIQ


def make_fashioniq(root: Path, categories: dict, split: str = "val", ext: str = ".png") -> Path:
    """``categories``: category -> (gallery ASINs, caption records)."""
    n = 0
    for cat, (names, records) in categories.items():
        for name in names:
            write_image(root / "images" / f"{name}{ext}", colour(n))
            n += 1
        write_json(root / "image_splits" / f"split.{cat}.{split}.json", list(names))
        write_json(root / "captions" / f"cap.{cat}.{split}.json", records)
    return root


# --------------------------------------------------------------------------- GeneCIS


def make_genecis(root: Path, tasks: dict, coco_ids=(), vg_ids=(), vg_size=(40, 30)) -> Path:
    """``tasks``: task -> records. COCO val2017 and Visual Genome images are solid colours:
    colour(image id)."""
    for image_id in coco_ids:
        write_image(root / "val2017" / f"{image_id:012d}.jpg", colour(image_id))
    for image_id in vg_ids:
        write_image(root / "VG_100K_all" / f"{image_id}.png", colour(image_id), vg_size)
        # the official loader opens <id>.jpg; keep PNG bytes (lossless colours) under that name
        (root / "VG_100K_all" / f"{image_id}.png").rename(root / "VG_100K_all" / f"{image_id}.jpg")
    for task, records in tasks.items():
        write_json(root / "genecis" / f"{task}.json", records)
    return root


# --------------------------------------------------------------------------- MMEB


def make_mmeb(root: Path, datasets: dict) -> Path:
    """``datasets``: name -> rows of (qry_text, qry_img_path, tgt_text list, tgt_img_path list);
    images (paths relative to eval_images/) are written for every non-empty path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    for name, rows in datasets.items():
        for _, qimg, _, timgs in rows:
            for p in [qimg, *timgs]:
                if p and not (root / "eval_images" / p).exists():
                    write_image(root / "eval_images" / p, colour(n))
                    n += 1
        table = pa.table({
            "qry_text": [r[0] for r in rows],
            "qry_img_path": [r[1] for r in rows],
            "tgt_text": [list(r[2]) for r in rows],
            "tgt_img_path": [list(r[3]) for r in rows],
        })
        (root / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / name / "test-00000-of-00001.parquet")
    return root


# --------------------------------------------------------------------------- M-BEIR


def make_mbeir(root: Path, task: str, queries, pool, qrels_lines, split="test") -> Path:
    """Query and pool records as M-BEIR stores them; their image files are written."""
    n = 0
    for r in [*queries, *pool]:
        p = r.get("query_img_path") or r.get("img_path")
        if p:
            write_image(root / p, colour(n))
            n += 1
    q = root / "query" / split / f"mbeir_{task}_{split}.jsonl"
    q.parent.mkdir(parents=True, exist_ok=True)
    q.write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    name = f"{task}_{split}" if task.startswith("mscoco_") else task
    c = root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl"
    c.parent.mkdir(parents=True, exist_ok=True)
    c.write_text("".join(json.dumps(r) + "\n" for r in pool), encoding="utf-8")
    qr = root / "qrels" / split / f"mbeir_{task}_{split}_qrels.txt"
    qr.parent.mkdir(parents=True, exist_ok=True)
    qr.write_text("".join(line + "\n" for line in qrels_lines), encoding="utf-8")
    return root


# --------------------------------------------------------------------------- a designed encoder


def ranked(order, dim):
    """A query vector that ranks one-hot gallery rows by ``order``: row order[j] scores
    (len(order) - j) / norm, every other row 0 (ranked after, by index, as knn breaks ties)."""
    w = np.zeros(dim)
    for j, i in enumerate(order):
        w[i] = len(order) - j
    return w


class TableEncoder:
    """A stand-in retriever, ``model(images, texts) -> (N, E)``, that looks embeddings up in a
    table: image items by the file stem (or, for an array such as a GeneCIS crop, by its
    brightest colour, which is the solid colour of the source image), text items by their
    text, composed items by (stem, text) when the table has that key, else by their text.
    A missing key fails the test, so the table also pins the query texts."""

    def __init__(self, table):
        self.table = {k: np.asarray(v, dtype=np.float64) for k, v in table.items()}
        self.calls = 0

    def key(self, image, text):
        if image is None:
            return text
        if isinstance(image, np.ndarray):
            stem = tuple(int(c) for c in image.reshape(-1, 3).max(axis=0))
        else:
            stem = Path(image).stem
        if text is None:
            return stem
        return (stem, text) if (stem, text) in self.table else text

    def __call__(self, images, texts):
        self.calls += 1
        assert len(images) == len(texts)
        return np.stack([self.table[self.key(i, t)] for i, t in zip(images, texts)])
