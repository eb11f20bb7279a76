"""megapairs.evaluation.evaluate end to end on fixture benchmarks in the official formats.

A designed stand-in retriever (TableEncoder: one-hot gallery embeddings, query vectors that
fix the ranking) makes every expected number a hand computation, and each fixture is built
so that the classic mistakes (reference kept / removed, pooling, ties, raw dot product,
relevance-0 qrels) give a different number. A small random-initialised CLIP then runs the
real encoder path, compared with an independent ranking written here."""

import json

import numpy as np
import pytest
from evaluation_fixtures import (
    TableEncoder,
    cirr_record,
    colour,
    make_circo,
    make_cirr,
    make_fashioniq,
    make_genecis,
    make_mbeir,
    make_mmeb,
    ranked,
    save_tiny_clip,
)

import megapairs as mp
from megapairs.evaluation import Crop, evaluate

# --------------------------------------------------------------------------- CIRCO

CIRCO_IDS = list(range(1000, 1060))


def circo_encoder(extra):
    table = {f"{i:012d}": np.eye(60)[i - 1000] for i in CIRCO_IDS}
    table.update({text: ranked([i - 1000 for i in order], 60) for text, order in extra.items()})
    return TableEncoder(table)


def test_circo_val_end_to_end(tmp_path):
    val = [
        {"reference_img_id": 1000, "target_img_id": 1005, "relative_caption": "is running",
         "shared_concept": "a dog", "gt_img_ids": [1005, 1010, 1020], "id": 0, "semantic_aspects": ["cardinality"]},
        {"reference_img_id": 1001, "target_img_id": 1002, "relative_caption": "is red",
         "shared_concept": "a car", "gt_img_ids": [1002], "id": 1, "semantic_aspects": ["negation", "cardinality"]},
    ]
    root = make_circo(tmp_path / "CIRCO", CIRCO_IDS, {"val": val})
    # the keys are MegaPairs' query texts: another template would miss the table
    model = circo_encoder({
        "Find a picture that also a dog, but is running.": [1000, 1010, 1005, 1030, 1031, 1020],
        "Find a picture that also a car, but is red.": [1003, 1004, 1002],
    })
    out = evaluate(model, "circo", root, split="val")
    # q0 ranking: 1000 (the reference: stays in), 1010, 1005, 1030, 1031, 1020, then 1001, 1002, ...
    #   AP@5 = (1/2 + 2/3) / min(3, 5) = 7/18   (reference removed: (1 + 1 + 3/5) / 3 = 13/15)
    #   AP@10 = (1/2 + 2/3 + 3/6) / 3 = 5/9
    # q1 ranking: 1003, 1004, 1002, ...: AP@5 = AP@10 = (1/3) / min(1, k) = 1/3
    assert out["mAP@5"] == pytest.approx(100 * (7 / 18 + 1 / 3) / 2)   # 36.11
    assert out["mAP@10"] == pytest.approx(100 * (5 / 9 + 1 / 3) / 2)   # 44.44
    assert out["mAP@50"] == pytest.approx(out["mAP@10"])
    assert out["R@5"] == 100.0 and "R@1" not in out                   # targets at rank 3 in both
    assert out["mAP@10[cardinality]"] == pytest.approx(100 * 4 / 9)
    assert out["mAP@10[negation]"] == pytest.approx(100 / 3)


def test_circo_test_split_writes_the_submission(tmp_path):
    test = [{"reference_img_id": 1002, "relative_caption": "is black", "shared_concept": "a cat", "id": 0}]
    root = make_circo(tmp_path / "CIRCO", CIRCO_IDS, {"test": test})
    model = circo_encoder({"Find a picture that also a cat, but is black.": [1007, 1002, 1009]})
    with pytest.raises(ValueError, match="ground truths are hidden: pass submission_path"):
        evaluate(model, "circo", root)                      # the default split is test
    path = tmp_path / "circo_test.json"
    assert evaluate(model, "circo", root, submission_path=path) == {}
    obj = json.loads(path.read_text())
    assert list(obj) == ["0"] and len(obj["0"]) == 50 and len(set(obj["0"])) == 50
    # the reference 1002 is not removed; then the zero scores in gallery order
    assert obj["0"][:6] == [1007, 1002, 1009, 1000, 1001, 1003]


# --------------------------------------------------------------------------- CIRR


def cirr_setup(tmp_path, split, prefix, records, orders):
    names = [f"{prefix}-{i}-0-img0" for i in range(56)]
    root = make_cirr(tmp_path / f"CIRR-{split}", split, names, records)
    table = {name: np.eye(56)[i] for i, name in enumerate(names)}
    table.update({text: ranked(order, 56) for text, order in orders.items()})
    return root, names, TableEncoder(table)


def test_cirr_val_end_to_end(tmp_path):
    n = [f"dev-{i}-0-img0" for i in range(56)]
    records = [cirr_record(1, n[0], "is blue", [n[0], n[1], n[2], n[5], n[8], n[9]], n[5]),
               cirr_record(2, n[10], "has two dogs", [n[10], n[11], n[12], n[13], n[14], n[15]], n[12])]
    root, _, model = cirr_setup(tmp_path, "val", "dev", records,
                                {"is blue": [0, 5, 1], "has two dogs": [20, 21, 22, 10, 11, 12]})
    out = evaluate(model, "cirr", root, split="val")
    # pair 1: ranking n0 (reference), n5, ... -> without the reference the target is first
    # pair 2: n20, n21, n22, n10 (reference), n11, n12 -> without it the target is 5th
    assert out["R@1"] == pytest.approx(50.0)    # reference kept: 0
    assert out["R@5"] == pytest.approx(100.0)   # reference kept: 50
    assert out["R@10"] == out["R@50"] == pytest.approx(100.0)
    # members by score: pair 1 n0, n5, n1, n2, n8, n9 -> n5 first once n0 is gone
    #                   pair 2 n10, n11, n12, ...     -> n12 second once n10 is gone
    assert out["R_subset@1"] == pytest.approx(50.0)
    assert out["R_subset@2"] == pytest.approx(100.0)  # reference kept: 50
    assert out["R_subset@3"] == pytest.approx(100.0)


def test_cirr_test1_writes_both_server_files(tmp_path):
    m = [f"test1-{i}-0-img0" for i in range(56)]
    records = [cirr_record(5, m[0], "is red", m[:6])]
    root, _, model = cirr_setup(tmp_path, "test1", "test1", records, {"is red": [0, 3, 40]})
    with pytest.raises(ValueError, match="targets are hidden"):
        evaluate(model, "cirr", root)
    evaluate(model, "cirr", root, submission_path=tmp_path / "cirr.json")
    main = json.loads((tmp_path / "cirr.json").read_text())
    subset = json.loads((tmp_path / "cirr_subset.json").read_text())
    assert (main["version"], main["metric"], subset["metric"]) == ("rc2", "recall", "recall_subset")
    # ranking m0 (reference, removed), m3, m40, then m1, m2, m4, ... by index
    rest = [x for i, x in enumerate(m) if i not in (0, 3, 40)]
    assert main["5"] == ([m[3], m[40]] + rest)[:50]
    assert subset["5"] == [m[3], m[1], m[2]]


# --------------------------------------------------------------------------- FashionIQ


def test_fashioniq_end_to_end_keeps_the_reference_and_averages_categories(tmp_path):
    names = {cat: [f"{cat[0].upper()}{i:02d}" for i in range(12)] for cat in ("dress", "shirt", "toptee")}
    dim = {name: j for j, name in enumerate(names["dress"] + names["shirt"] + names["toptee"])}

    def q(cat, cand, target, caps):
        return {"candidate": names[cat][cand], "target": names[cat][target], "captions": caps}

    queries = {
        "dress": [q("dress", 0, 10, ["is longer", "has no sleeves"])],
        "shirt": [q("shirt", 1, 1, ["is plain", "is white"]), q("shirt", 0, 11, ["is striped", "is black"]),
                  q("shirt", 3, 11, ["has a collar", "is grey"])],
        "toptee": [q("toptee", 0, 5, ["is green", "has a print"]), q("toptee", 1, 6, ["is pink", "is short"])],
    }
    root = make_fashioniq(tmp_path / "fiq", {cat: (names[cat], queries[cat]) for cat in names})
    table = {name: np.eye(36)[j] for name, j in dim.items()}
    d, s, t = (names[c] for c in ("dress", "shirt", "toptee"))
    orders = {  # MegaPairs' "{c0}, and {c1}" texts
        "is longer, and has no sleeves": d[:11],        # reference D00 first, target D10 11th
        "is plain, and is white": [s[1]],
        "is striped, and is black": s[:11],             # target S11 12th
        "has a collar, and is grey": s[:11],
        "is green, and has a print": [t[5]],
        "is pink, and is short": [t[6]],
    }
    table.update({text: ranked([dim[x] for x in order], 36) for text, order in orders.items()})
    out = evaluate(TableEncoder(table), "fashioniq", root, batch_size=4)
    # dress: the target is 11th with the reference left in: R@10 = 0 (removing it would give 100)
    assert out["dress/R@10"] == 0.0
    assert out["shirt/R@10"] == pytest.approx(100 / 3)
    assert out["toptee/R@10"] == 100.0
    # mean over categories (0 + 33.3 + 100) / 3 = 44.4; pooled 3/6 = 50; reference removed 77.8
    assert out["R@10"] == pytest.approx((0 + 100 / 3 + 100) / 3)
    assert out["R@50"] == 100.0 and out["dress/R@50"] == 100.0


# --------------------------------------------------------------------------- GeneCIS


def test_genecis_end_to_end_ties_and_task_mean(tmp_path):
    def coco(i):
        return {"val_image_id": i}

    def vg(i):
        return {"image_id": i, "instance_bbox": [5, 4, 10, 8]}

    tasks = {
        "focus_object": [
            {"condition": "cat", "reference": coco(1), "target": coco(2), "gallery": [coco(3), coco(4), coco(5)]},
            {"condition": "dog", "reference": coco(1), "target": coco(4), "gallery": [coco(2), coco(3)]},
        ],
        # the target repeated inside the gallery (as change_object.json[19]): identical embeddings tie
        "change_object": [{"condition": "tree", "reference": coco(6), "target": coco(7),
                           "gallery": [coco(8), coco(7), coco(9)]}],
        "focus_attribute": [{"condition": "red", "reference": vg(11), "target": vg(12), "gallery": [vg(13), vg(14)]}],
    }
    root = make_genecis(tmp_path / "genecis", tasks, coco_ids=range(1, 10), vg_ids=range(11, 15))
    table = {f"{i:012d}": np.eye(20)[i] for i in range(1, 10)}
    table.update({colour(i): np.eye(20)[i] for i in range(11, 15)})  # crops, keyed by their colour
    table.update({"cat": ranked([3, 2], 20), "dog": ranked([4], 20), "tree": ranked([7, 8], 20),
                  "red": ranked([12], 20)})
    out = evaluate(TableEncoder(table), "genecis", root, tasks=["focus_attribute", "focus_object", "change_object"])
    # focus_object: target 2nd, then 1st -> R@1 50, R@2 100; change_object: tie at the top -> hit
    assert out["focus_object/R@1"] == pytest.approx(50.0) and out["focus_object/R@2"] == 100.0
    assert out["change_object/R@1"] == 100.0            # "target loses ties": 0
    assert out["focus_attribute/R@1"] == 100.0
    # mean over tasks (100 + 50 + 100) / 3 = 83.3; pooling the 4 queries: 75
    assert out["R@1"] == pytest.approx(250 / 3)
    assert out["R@2"] == out["R@3"] == 100.0


# --------------------------------------------------------------------------- MMEB


def test_mmeb_end_to_end_cosine_and_ties(tmp_path):
    rep = "<|image_1|>\nRepresent the given image."
    q0 = "<|image_1|>\nGiven an image, find a similar everyday image with the described changes: Show three bottles."
    q1 = "<|image_1|>\nGiven an image, find a similar everyday image with the described changes: Show a dog."
    cls = "<|image_1|> Represent the given image for classification."
    datasets = {
        "CIRR": [(q0, "CIRR/q0.png", [rep, rep], ["CIRR/c0.png", "CIRR/c1.png"]),
                 (q1, "CIRR/q1.png", [rep, rep], ["CIRR/c0.png", "CIRR/c2.png"])],
        "ImageNet-1K": [(cls, "ImageNet-1K/i0.png", ["cat", "dog", "cat"], ["", "", ""])],
    }
    root = make_mmeb(tmp_path / "mmeb", datasets)
    model = TableEncoder({
        ("q0", q0): [1, 0], ("c0", rep): [1, 0], ("c1", rep): [3, 3],   # cosine: c0 1.0 > c1 0.71; dot: 1 < 6
        ("q1", q1): [0, 1], ("c2", rep): [0, 1],                         # positive c0 scores 0: miss
        ("i0", cls): [1, 1], "cat": [2, 2], "dog": [1, -1],              # "cat" twice: a tie with the positive
    })
    out = evaluate(model, "mmeb", root, datasets=["CIRR", "ImageNet-1K"])
    assert out["CIRR/P@1"] == pytest.approx(50.0)        # raw dot product: 0
    assert out["ImageNet-1K/P@1"] == 100.0
    assert out["overall"] == pytest.approx(75.0) and out["retrieval"] == 50.0 and out["classification"] == 100.0
    assert out["IND"] == pytest.approx(75.0) and "OOD" not in out


# --------------------------------------------------------------------------- M-BEIR


def test_mbeir_end_to_end_relevance_zero(tmp_path):
    img = "mbeir_images/cirr_images/dev/"
    queries = [
        {"qid": "8:1", "query_txt": "show three bottles", "query_img_path": img + "q1.jpg",
         "query_modality": "image,text", "pos_cand_list": ["8:5"], "neg_cand_list": []},
        {"qid": "8:2", "query_txt": "has two dogs", "query_img_path": img + "q2.jpg",
         "query_modality": "image,text", "pos_cand_list": ["8:9"], "neg_cand_list": []},
    ]
    pool = [{"txt": None, "img_path": img + f"c{i}.jpg", "modality": "image", "did": f"8:{i}"} for i in range(1, 13)]
    qrels = ["8:1 0 8:5 1 7", "8:1 0 8:3 0 7", "8:2 0 8:9 1 7", "8:2 0 8:10 1 7"]
    root = make_mbeir(tmp_path / "M-BEIR", "cirr_task7", queries, pool, qrels)
    table = {f"c{i}": np.eye(13)[i] for i in range(1, 13)}
    table["c11"] = 5 * np.eye(13)[11]                    # a long vector: it wins a raw dot product
    table.update({"Show three bottles.": ranked([3, 1, 2, 4, 6, 7, 5], 13),
                  "Has two dogs.": np.eye(13)[9] + 0.5 * np.eye(13)[11]})
    out = evaluate(TableEncoder(table), "mbeir", root, tasks=["cirr_task7"])
    # query 8:1: the relevance-0 candidate 8:3 is first, the relevant 8:5 is 7th
    # query 8:2: cosine 8:9 1/|q| > 8:11 0.5/|q| -> hit at 1 (raw dot: 8:11 scores 2.5 > 1, a miss)
    assert out["cirr_task7/R@1"] == pytest.approx(50.0)   # counting relevance 0: 100; raw dot: 0
    assert out["cirr_task7/R@5"] == pytest.approx(50.0)
    assert out["cirr_task7/R@10"] == 100.0
    assert out["average"] == pytest.approx(50.0)          # CIRR reports R@5


# --------------------------------------------------------------------------- arguments


def test_evaluate_argument_errors(tmp_path):
    model = TableEncoder({})
    with pytest.raises(ValueError, match="benchmark must be one of"):
        evaluate(model, "coco", tmp_path)
    with pytest.raises(ValueError, match="fashioniq: unknown option 'tasks'"):
        evaluate(model, "fashioniq", tmp_path, tasks=["dress"])
    with pytest.raises(ValueError, match="only CIRCO and CIRR have test servers"):
        evaluate(model, "fashioniq", tmp_path, submission_path=tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        evaluate(model, "fashioniq", tmp_path / "missing")
    with pytest.raises(TypeError, match="model must have encode_image"):
        evaluate(object(), "fashioniq", tmp_path)
    with pytest.raises(ValueError, match="genecis has a single evaluation split"):
        evaluate(model, "genecis", tmp_path, split="val")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluate(model, "fashioniq", tmp_path, batch_size=0)


def test_bad_model_output_is_named(tmp_path):
    names = [f"A{i}" for i in range(3)]
    root = make_fashioniq(tmp_path / "fiq", {"dress": (names, [{"candidate": "A0", "target": "A1",
                                                                 "captions": ["x", "y"]}])})
    zero = TableEncoder({"A0": [1, 0], "A1": [0, 0], "A2": [1, 1], "x, and y": [1, 0]})
    with pytest.raises(ValueError, match=r"all-zero embedding for image '.*A1.png'"):
        evaluate(zero, "fashioniq", root, categories=["dress"])
    with pytest.raises(ValueError, match=r"expected a float \(N, E\) array"):
        evaluate(lambda images, texts: np.zeros(len(images)), "fashioniq", root, categories=["dress"])


# --------------------------------------------------------------------------- a real (tiny) CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return mp.CLIP.from_pretrained(save_tiny_clip(tmp_path_factory.mktemp("tiny_clip")))


def stable_ranking(gallery, query):
    """Indices by descending float64 cosine, ties to the lower index."""
    g = gallery.astype(np.float64)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    s = g @ (query.astype(np.float64) / np.linalg.norm(query))
    return sorted(range(len(g)), key=lambda j: (-s[j], j))


def test_tiny_clip_fashioniq_end_to_end(tmp_path, tiny_clip):
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"B{i:03d}" for i in range(14)]
    records = [{"candidate": names[i], "target": names[(3 * i + 5) % 14], "captions": [f"is colour {i}", "is long"]}
               for i in range(6)]
    root = make_fashioniq(tmp_path / "fiq", {"dress": (names, records)})
    for name in names:  # textured images, so embeddings differ
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    out = evaluate(tiny_clip, "fashioniq", root, categories=["dress"], batch_size=4, progress=True)
    paths = [str(root / "images" / f"{n}.png") for n in names]
    gallery = tiny_clip.encode_image(paths)
    queries = tiny_clip.encode_composed([paths[names.index(r["candidate"])] for r in records],
                                        [f"is colour {i}, and is long" for i in range(6)])
    hits = {10: 0, 50: 0}
    for r, q in zip(records, queries):
        top = [names[j] for j in stable_ranking(gallery, q)]
        for k in hits:
            hits[k] += r["target"] in top[:k]
    assert out["dress/R@10"] == pytest.approx(100 * hits[10] / 6)
    assert out["R@10"] == out["dress/R@10"] and out["R@50"] == 100.0


def test_tiny_clip_genecis_crops_end_to_end(tmp_path, tiny_clip):
    from PIL import Image

    rng = np.random.default_rng(1)
    box = [4, 3, 12, 9]
    records = [{"condition": c, "reference": {"image_id": 11 + i, "instance_bbox": box},
                "target": {"image_id": 12 + i, "instance_bbox": box},
                "gallery": [{"image_id": 13 + i, "instance_bbox": box}, {"image_id": 14 + i, "instance_bbox": box}]}
               for i, c in enumerate(["red", "wooden", "striped"])]
    root = make_genecis(tmp_path / "g", {"focus_attribute": records}, vg_ids=range(11, 17))
    for i in range(11, 17):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "VG_100K_all" / f"{i}.jpg",
                                                                                format="PNG")
    out = evaluate(tiny_clip, "genecis", root, tasks=["focus_attribute"])
    hits = {1: 0, 2: 0, 3: 0}
    for r in records:
        crop = [Crop(str(root / "VG_100K_all" / f"{e['image_id']}.jpg"), tuple(map(float, box))).load()
                for e in (r["reference"], r["target"], *r["gallery"])]
        q = tiny_clip.encode_composed([crop[0]], [r["condition"]])[0]
        rank = stable_ranking(tiny_clip.encode_image(crop[1:]), q).index(0)
        for k in hits:
            hits[k] += rank < k
    for k, n in hits.items():
        assert out[f"focus_attribute/R@{k}"] == pytest.approx(100 * n / 3)
