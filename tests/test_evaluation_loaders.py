"""megapairs.evaluation loaders on tiny trees written in each benchmark's official format,
the canonical query texts, errors that name the file and record, and the CIRCO / CIRR
submission files checked against the servers' documented schema."""

import json

import numpy as np
import pytest
from evaluation_fixtures import (
    cirr_record,
    make_circo,
    make_cirr,
    make_fashioniq,
    make_genecis,
    make_mbeir,
    make_mmeb,
    write_image,
    write_json,
)
from PIL import Image

import megapairs as mp
from megapairs.evaluation import datasets as ds
from megapairs.evaluation import submission as sub

# --------------------------------------------------------------------------- query texts


def test_circo_query_text_is_megapairs_template():
    # MegaPairs' eval/data/circo_query.jsonl, test query 0 (reference doc §1.4 / megapairs.md §2f)
    assert ds.circo_query_text("a double bed", "is in a room with wooden walls") == \
        "Find a picture that also a double bed, but is in a room with wooden walls."


def test_fashioniq_caption_conventions():
    caps = ["is shiny and silver with shorter sleeves", "fit and flare"]
    assert ds.fashioniq_query_text(caps) == "is shiny and silver with shorter sleeves, and fit and flare"
    assert ds.fashioniq_query_text(caps, "mbeir") == "Is shiny and silver with shorter sleeves and fit and flare."
    # M-BEIR: strip, lower-case the first letter, drop one trailing '.', skip empties, then format_string
    assert ds.fashioniq_query_text([" Is red. ", "", "has long sleeves"], "mbeir") == "Is red and has long sleeves."
    assert ds.fashioniq_query_text(["A", "B"], lambda c: " / ".join(reversed(c))) == "B / A"
    with pytest.raises(ValueError, match="style must be"):
        ds.fashioniq_query_text(caps, "searle")


def test_format_string():
    assert ds.format_string('  "show three bottles"\r ') == "Show three bottles."
    assert ds.format_string("what is it?") == "What is it?"
    assert ds.format_string(None) == "" and ds.format_string("  ") == ""


# --------------------------------------------------------------------------- CIRCO


def circo_tree(tmp_path):
    val = [
        {"reference_img_id": 11, "target_img_id": 13, "relative_caption": "shows two people",
         "shared_concept": "a girl with an umbrella", "gt_img_ids": [13, 14], "id": 0,
         "semantic_aspects": ["cardinality"]},
        {"reference_img_id": 12, "target_img_id": 11, "relative_caption": "is at night",
         "shared_concept": "a street", "gt_img_ids": [11], "id": 1, "semantic_aspects": []},
    ]
    test = [{"reference_img_id": 14, "relative_caption": "is bigger", "shared_concept": "a dog", "id": 0}]
    return make_circo(tmp_path / "CIRCO", [11, 12, 13, 14], {"val": val, "test": test}), val


def test_load_circo(tmp_path):
    root, _ = circo_tree(tmp_path)
    data = ds.load_circo(root, "val")
    assert data.gallery_ids == [11, 12, 13, 14]
    assert data.gallery_paths[2].endswith("COCO2017_unlabeled/unlabeled2017/000000000013.jpg")
    q = data.queries[0]
    assert (q.id, q.reference_id, q.target_id, q.ground_truths) == (0, 11, 13, [13, 14])
    assert q.text == "Find a picture that also a girl with an umbrella, but shows two people."
    assert q.reference_path == data.gallery_paths[0] and q.semantic_aspects == ["cardinality"]
    assert data.has_labels
    test = ds.load_circo(root, "test")
    assert not test.has_labels and test.queries[0].target_id is None


def test_circo_errors_name_file_and_record(tmp_path):
    root, val = circo_tree(tmp_path)
    with pytest.raises(ValueError, match="CIRCO split must be 'val' or 'test'"):
        ds.load_circo(root, "train")
    (root / "annotations" / "test.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"CIRCO test annotations: no file '.*annotations/test.json'"):
        ds.load_circo(root, "test")
    ann = root / "annotations" / "val.json"
    write_json(ann, [val[0], dict(val[1], id=5)])
    with pytest.raises(mp.FormatError, match=r"val.json: record 1: id 5 != its position 1"):
        ds.load_circo(root, "val")
    write_json(ann, [val[0], dict(val[1], reference_img_id=99)])
    with pytest.raises(ValueError, match=r"val.json: record 1 \(query id 1\): reference_img_id 99 is not in the "
                                         r"gallery \(.*image_info_unlabeled2017.json\)"):
        ds.load_circo(root, "val")
    write_json(ann, [val[0], {k: v for k, v in val[1].items() if k != "relative_caption"}])
    with pytest.raises(mp.FormatError, match=r"val.json: record 1 \(query id 1\): missing key 'relative_caption'"):
        ds.load_circo(root, "val")
    write_json(ann, [val[0], dict(val[1], reference_img_id="12")])
    with pytest.raises(mp.FormatError, match=r"record 1 \(query id 1\): 'reference_img_id' must be int"):
        ds.load_circo(root, "val")
    ann.write_text("[{")
    with pytest.raises(mp.FormatError, match=r"val.json: invalid JSON"):
        ds.load_circo(root, "val")
    write_json(ann, val)
    (root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000013.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image id 13: image file '.*000000000013.jpg' does not exist"):
        ds.load_circo(root, "val")
    assert len(ds.load_circo(root, "val", check_images=False).queries) == 2


def test_circo_labels_outside_the_gallery_name_the_query(tmp_path):
    # the gallery is 11..14: an id outside it could only ever score as a miss
    root, val = circo_tree(tmp_path)
    ann = root / "annotations" / "val.json"
    write_json(ann, [val[0], dict(val[1], target_img_id=99)])  # gt_img_ids [11]: loaded and missed before
    with pytest.raises(ValueError, match=r"val.json: record 1 \(query id 1\): target_img_id 99 is not in the "
                                         r"gallery \(.*image_info_unlabeled2017.json\)"):
        ds.load_circo(root, "val")
    write_json(ann, [val[0], dict(val[1], gt_img_ids=[11, 98])])
    with pytest.raises(ValueError, match=r"val.json: record 1 \(query id 1\): gt_img_ids entry 98 is not in the "
                                         r"gallery"):
        ds.load_circo(root, "val")
    # the README: target_img_id is always the first of gt_img_ids
    write_json(ann, [dict(val[0], gt_img_ids=[14]), val[1]])
    with pytest.raises(ValueError, match=r"val.json: record 0 \(query id 0\): target_img_id 13 is not among "
                                         r"gt_img_ids \[14\]"):
        ds.load_circo(root, "val")
    write_json(ann, val)
    assert [q.target_id for q in ds.load_circo(root, "val").queries] == [13, 11]


# --------------------------------------------------------------------------- CIRR

CIRR_NAMES = ["dev-1-0-img0", "dev-1-1-img0", "dev-2-0-img1", "dev-2-1-img0", "dev-3-0-img0", "dev-3-1-img1",
              "dev-4-0-img0"]


def cirr_tree(tmp_path, split="val"):
    members = CIRR_NAMES[:6]
    target = None if split == "test1" else "dev-2-0-img1"
    records = [cirr_record(12060, "dev-1-0-img0", "show three bottles of soft drink", members, target)]
    return make_cirr(tmp_path / "CIRR", split, CIRR_NAMES, records)


def test_load_cirr(tmp_path):
    root = cirr_tree(tmp_path)
    data = ds.load_cirr(root, "val")
    assert data.gallery_names == CIRR_NAMES
    assert data.gallery_paths[0] == str(root / "dev" / "dev-1-0-img0.png")
    q = data.queries[0]
    assert (q.pair_id, q.reference, q.target, q.text) == (12060, "dev-1-0-img0", "dev-2-0-img1",
                                                          "show three bottles of soft drink")
    assert q.members == CIRR_NAMES[:6] and q.target_soft == {"dev-2-0-img1": 1.0}
    # root may be the cirr/ annotation folder itself; images stay relative to its parent
    assert ds.load_cirr(root / "cirr", "val").gallery_paths == data.gallery_paths
    test = ds.load_cirr(cirr_tree(tmp_path / "t", "test1"), "test1")
    assert not test.has_labels


def test_cirr_errors_name_file_and_record(tmp_path):
    root = cirr_tree(tmp_path)
    cap = root / "cirr" / "captions" / "cap.rc2.val.json"
    record = json.loads(cap.read_text())[0]
    write_json(cap, [dict(record, img_set={"members": [*CIRR_NAMES[:5], "dev-9-9-img0"]})])
    with pytest.raises(ValueError, match=r"cap.rc2.val.json: record 0 \(pairid 12060\): img_set.members entry "
                                         r"'dev-9-9-img0' is not in the val gallery \(.*split.rc2.val.json\)"):
        ds.load_cirr(root, "val")
    write_json(cap, [dict(record, reference="dev-9-9-img0")])
    with pytest.raises(ValueError, match=r"record 0 \(pairid 12060\): reference 'dev-9-9-img0' is not in the val "
                                         r"gallery"):
        ds.load_cirr(root, "val")
    # a target outside the split's image index (and so outside the members): named as such
    write_json(cap, [dict(record, target_hard="dev-9-9-img0")])
    with pytest.raises(ValueError, match=r"record 0 \(pairid 12060\): target_hard 'dev-9-9-img0' is not in the "
                                         r"val gallery \(.*split.rc2.val.json\)"):
        ds.load_cirr(root, "val")
    write_json(cap, [record, record])
    with pytest.raises(mp.FormatError, match=r"record 1 \(pairid 12060\): pairid 12060 appears twice"):
        ds.load_cirr(root, "val")
    write_json(cap, [dict(record, target_hard="dev-4-0-img0")])
    with pytest.raises(ValueError, match=r"target_hard 'dev-4-0-img0' is not in img_set.members"):
        ds.load_cirr(root, "val")
    with pytest.raises(FileNotFoundError, match=r"split.rc2.test1.json"):
        ds.load_cirr(root, "test1")


# --------------------------------------------------------------------------- FashionIQ


def test_load_fashioniq(tmp_path):
    records = [{"target": "B0084Y8XIU", "candidate": "B005X4PL1G",
                "captions": ["is shiny and silver with shorter sleeves", "fit and flare"]}]
    root = make_fashioniq(tmp_path / "fiq", {"dress": (["B005X4PL1G", "B0084Y8XIU", "B00000AAAA"], records)})
    write_image(root / "images" / "B00000AAAA.jpg")  # a second file with the same stem: the first found is used
    data = ds.load_fashioniq(root, categories=["dress"])
    c = data.categories["dress"]
    assert c.gallery_names == ["B005X4PL1G", "B0084Y8XIU", "B00000AAAA"]
    assert c.gallery_paths[0] == str(root / "images" / "B005X4PL1G.png")
    q = c.queries[0]
    assert (q.candidate, q.target) == ("B005X4PL1G", "B0084Y8XIU")
    assert q.text == "is shiny and silver with shorter sleeves, and fit and flare"
    mbeir = ds.load_fashioniq(root, categories=["dress"], caption_style="mbeir")
    assert mbeir.categories["dress"].queries[0].text == "Is shiny and silver with shorter sleeves and fit and flare."


def test_fashioniq_errors_name_file_and_record(tmp_path):
    good = {"target": "B2", "candidate": "B1", "captions": ["a", "b"]}
    root = make_fashioniq(tmp_path / "fiq", {"shirt": (["B1", "B2"], [good, dict(good, target="B9")])})
    with pytest.raises(ValueError, match=r"cap.shirt.val.json: record 1: target 'B9' is not in the shirt gallery"):
        ds.load_fashioniq(root, categories=["shirt"])
    with pytest.raises(FileNotFoundError, match=r"split.dress.val.json"):
        ds.load_fashioniq(root, categories=["dress"])
    write_json(root / "captions" / "cap.shirt.val.json", [good])
    (root / "images" / "B2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"split.shirt.val.json: image 'B2'"):
        ds.load_fashioniq(root, categories=["shirt"])
    with pytest.raises(ValueError, match="categories must be"):
        ds.load_fashioniq(root, categories=["shoes"])
    # one name is that category, not its letters (as --option categories=shirt passes it)
    assert list(ds.load_fashioniq(root, categories="shirt", check_images=False).categories) == ["shirt"]


# --------------------------------------------------------------------------- GeneCIS


def test_crop_dilates_and_pads_as_the_official_loader(tmp_path):
    # pixel (x, y) holds R = x, G = y, so the crop's pixels say where they came from
    w, h = 100, 80
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[..., 0] = np.arange(w)[None, :]
    pixels[..., 1] = np.arange(h)[:, None]
    path = tmp_path / "1.png"
    Image.fromarray(pixels).save(path)
    out = ds.Crop(str(path), (10.0, 20.0, 30.0, 10.0)).load()
    # left = max(0, 10 - 0.7*30) = 0, top = max(0, 20 - 0.7*10) = 13,
    # right = min(100, 0 + 1.7*30) = 51, bottom = min(80, 13 + 1.7*10) = 30 -> 51 x 17,
    # centred on a 51 x 51 black square at row (51 - 17) // 2 = 17
    assert out.shape == (51, 51, 3)
    np.testing.assert_array_equal(out[17:34, :, 0], np.tile(np.arange(51), (17, 1)))
    np.testing.assert_array_equal(out[17:34, :, 1], np.tile(np.arange(13, 30)[:, None], (1, 51)))
    assert not out[:17].any() and not out[34:].any()


def test_load_genecis(tmp_path):
    obj = [{"condition": "cardboard", "reference": {"val_image_id": 1}, "target": {"val_image_id": 2},
            "gallery": [{"val_image_id": 3}, {"val_image_id": 4}]}]
    attr = [{"condition": "red", "reference": {"image_id": 11, "instance_bbox": [1, 2, 10, 8]},
             "target": {"image_id": 12, "instance_bbox": [0, 0, 5, 5]},
             "gallery": [{"image_id": 13, "instance_bbox": [3, 3, 4, 4]}]}]
    root = make_genecis(tmp_path / "g", {"focus_object": obj, "change_attribute": attr},
                        coco_ids=[1, 2, 3, 4], vg_ids=[11, 12, 13])
    data = ds.load_genecis(root, tasks=["focus_object", "change_attribute"], template="{condition} (sub-task)")
    q = data.tasks["focus_object"][0]
    assert q.reference == str(root / "val2017" / "000000000001.jpg")
    assert q.candidates == [str(root / "val2017" / f"{i:012d}.jpg") for i in (2, 3, 4)]  # target first
    assert q.text == "cardboard (sub-task)"
    a = data.tasks["change_attribute"][0]
    assert a.reference == ds.Crop(str(root / "VG_100K_all" / "11.jpg"), (1.0, 2.0, 10.0, 8.0))
    assert a.candidates[0].path.endswith("12.jpg")
    write_json(root / "genecis" / "focus_object.json", [dict(obj[0], gallery=[{"image_id": 3}])])
    with pytest.raises(mp.FormatError, match=r"focus_object.json: record 0, gallery\[0\]: missing key 'val_image_id'"):
        ds.load_genecis(root, tasks=["focus_object"])
    write_json(root / "genecis" / "focus_object.json", [dict(obj[0], target={"val_image_id": 7})])
    with pytest.raises(FileNotFoundError, match=r"focus_object.json: record 0: image file .*000000000007.jpg"):
        ds.load_genecis(root, tasks=["focus_object"])
    with pytest.raises(FileNotFoundError, match=r"focus_attribute.json"):
        ds.load_genecis(root, tasks=["focus_attribute"])


# --------------------------------------------------------------------------- MMEB


def test_load_mmeb(tmp_path):
    rows = [("<|image_1|>\nFind a day-to-day image: Show three bottles.", "CIRR/q0.png",
             ["<|image_1|>\nRepresent the given image.", "<|image_1|>\nRepresent the given image."],
             ["CIRR/c0.png", "CIRR/c1.png"]),
            ("Find me an everyday image that matches the given caption: a dog.", "",
             ["<|image_1|>\nRepresent the given image."], ["CIRR/c0.png"])]
    root = make_mmeb(tmp_path / "mmeb", {"CIRR": rows})
    data = ds.load_mmeb(root, datasets=["CIRR"])
    r0, r1 = data.datasets["CIRR"]
    assert r0.query_image == str(root / "eval_images" / "CIRR" / "q0.png")
    assert r0.candidate_images[1] == str(root / "eval_images" / "CIRR" / "c1.png")
    assert r0.query_text == rows[0][0] and r1.query_image is None
    swapped = ds.load_mmeb(root, datasets=["CIRR"], image_token="<image>")
    assert swapped.datasets["CIRR"][0].query_text == "<image>\nFind a day-to-day image: Show three bottles."
    with pytest.raises(FileNotFoundError, match=r"MMEB NIGHTS: no parquet file"):
        ds.load_mmeb(root, datasets=["NIGHTS"])
    with pytest.raises(ValueError, match="datasets must be"):
        ds.load_mmeb(root, datasets=["CIRCO"])


def test_mmeb_errors_name_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "mmeb"
    (root / "CIRR").mkdir(parents=True)
    path = root / "CIRR" / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"qry_text": ["a", "b"], "qry_img_path": ["", ""], "tgt_text": [["x"], ["y", "z"]],
                             "tgt_img_path": [[""], [""]]}), path)
    with pytest.raises(mp.FormatError, match=r"test-00000-of-00001.parquet: row 1: tgt_text has 2 entries but "
                                             r"tgt_img_path has 1"):
        ds.load_mmeb(root, datasets=["CIRR"])
    pq.write_table(pa.table({"qry_text": ["a"], "tgt_text": [["x"]], "tgt_img_path": [[""]]}), path)
    with pytest.raises(mp.FormatError, match=r"missing column 'qry_img_path'"):
        ds.load_mmeb(root, datasets=["CIRR"])


# --------------------------------------------------------------------------- M-BEIR


def mbeir_tree(tmp_path):
    queries = [{"qid": "8:1", "query_txt": "show three bottles of soft drink",
                "query_img_path": "mbeir_images/cirr_images/dev/q1.jpg", "query_modality": "image,text",
                "query_src_content": "{}", "pos_cand_list": ["8:2"], "neg_cand_list": []}]
    pool = [{"txt": None, "img_path": f"mbeir_images/cirr_images/dev/c{i}.jpg", "modality": "image",
             "did": f"8:{i}", "src_content": "{}"} for i in range(1, 4)]
    pool.append({"txt": "a caption", "img_path": None, "modality": "text", "did": "8:9"})
    qrels = ["8:1 0 8:2 1 7", "8:1 0 8:3 0 7"]
    return make_mbeir(tmp_path / "M-BEIR", "cirr_task7", queries, pool, qrels), queries


def test_load_mbeir(tmp_path):
    root, _ = mbeir_tree(tmp_path)
    data = ds.load_mbeir(root, "cirr_task7")
    q = data.queries[0]
    assert (q.qid, q.text, q.modality) == ("8:1", "Show three bottles of soft drink.", "image,text")
    assert q.image == str(root / "mbeir_images/cirr_images/dev/q1.jpg")
    assert data.relevant == {"8:1": ["8:2"]}          # the relevance-0 line is not relevant
    assert [c.did for c in data.pool] == ["8:1", "8:2", "8:3", "8:9"]
    assert data.pool[3].text == "A caption." and data.pool[3].image is None
    fixed = ds.load_mbeir(root, "cirr_task7", instruction="Retrieve a day-to-day image that aligns with the "
                                                          "modification instructions of the provided image.")
    assert fixed.queries[0].text == ("Retrieve a day-to-day image that aligns with the modification instructions "
                                     "of the provided image. show three bottles of soft drink.")
    assert ds.mbeir_pool_path(root, "mscoco_task0").name == "mbeir_mscoco_task0_test_cand_pool.jsonl"
    assert ds.mbeir_pool_path(root, "cirr_task7", pool="global").name == "mbeir_union_test_cand_pool.jsonl"


def test_mbeir_random_instruction_is_keyed_by_the_positive_modality(tmp_path):
    # UniIR's key is "dataset_id, query_modality, modality of the positive in the pool"; the
    # query record has no candidate modality. Rows for other modalities must not be used.
    root, _ = mbeir_tree(tmp_path)
    tsv = root / "instructions" / "query_instructions.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("query_modality\tcand_modality\ttask\tdataset_id\tprompt_1\tprompt_2\n"
                   "image,text\timage\ttask7\t8\tRetrieve the changed image\tFind the edited image.\n"
                   "image,text\ttext\ttask6\t8\tWrong row\t\n")
    data = ds.load_mbeir(root, "cirr_task7", instruction="random", seed=3)
    assert data.queries[0].text in ("Retrieve the changed image. show three bottles of soft drink.",
                                    "Find the edited image. show three bottles of soft drink.")
    tsv.write_text("query_modality\tcand_modality\ttask\tdataset_id\tprompt_1\n"
                   "image,text\ttext\ttask6\t8\tWrong row\n")
    with pytest.raises(ValueError, match=r"query 1: no instruction for '8, image,text, image'"):
        ds.load_mbeir(root, "cirr_task7", instruction="random")


def test_mbeir_errors(tmp_path):
    root, queries = mbeir_tree(tmp_path)
    qrels = root / "qrels" / "test" / "mbeir_cirr_task7_test_qrels.txt"
    qrels.write_text("8:1 0 8:2 0 7\n")
    with pytest.raises(ValueError, match=r"mbeir_cirr_task7_test.jsonl: query 1: qid '8:1' has no line with "
                                         r"relevance > 0"):
        ds.load_mbeir(root, "cirr_task7")
    qrels.write_text("8:1 0 8:2 1 7\n")
    q = root / "query" / "test" / "mbeir_cirr_task7_test.jsonl"
    q.write_text(json.dumps(queries[0]) + "\n{not json\n")
    with pytest.raises(mp.FormatError, match=r"mbeir_cirr_task7_test.jsonl: line 2: invalid JSON"):
        ds.load_mbeir(root, "cirr_task7")
    with pytest.raises(ValueError, match="unknown M-BEIR task"):
        ds.load_mbeir(root, "cirr_task9")
    with pytest.raises(FileNotFoundError, match=r"no file .*mbeir_nights_task4_test_qrels.txt"):
        ds.load_mbeir(root, "nights_task4")


# --------------------------------------------------------------------------- submissions


def schema_ok_circo(obj, n, k=50):
    """The CIRCO server's documented schema, checked independently of megapairs."""
    return (isinstance(obj, dict) and sorted(obj, key=int) == [str(i) for i in range(n)]
            and all(isinstance(v, list) and len(v) == k and len(set(v)) == k
                    and all(type(x) is int for x in v) for v in obj.values()))


def test_circo_submission_schema(tmp_path):
    preds = [list(range(100, 150)), list(range(200, 251))]  # the second is longer: cut to 50
    path = sub.write_circo_submission(tmp_path / "circo.json", preds)
    obj = json.loads(path.read_text())
    assert schema_ok_circo(obj, 2)
    assert obj["0"][:3] == [100, 101, 102] and obj["1"][-1] == 249
    sub.check_circo_submission(obj, num_queries=2)
    with pytest.raises(ValueError, match=r"query 0: duplicate image ids"):
        sub.write_circo_submission(tmp_path / "x.json", [[1] * 50])
    with pytest.raises(ValueError, match=r"query 0: 49 predictions, the server expects 50"):
        sub.write_circo_submission(tmp_path / "x.json", [list(range(49))])
    with pytest.raises(ValueError, match=r"cover query ids 0..1 exactly: missing \['1'\]"):
        sub.write_circo_submission(tmp_path / "x.json", {0: list(range(50)), 2: list(range(50))})
    with pytest.raises(ValueError, match=r"missing \['2'\]"):
        sub.check_circo_submission(obj, num_queries=3)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_circo_submission_rejects_a_k_below_one(tmp_path, k):
    # k=0 used to write {"0": []}, a file the server rejects
    with pytest.raises(ValueError, match=rf"k must be a positive int \(predictions per query; the server expects "
                                         rf"50\), got {k!r}"):
        sub.write_circo_submission(tmp_path / "x.json", [list(range(50))], k=k)
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ValueError, match=r"k must be a positive int"):
        sub.check_circo_submission({"0": []}, k=k)
    with pytest.raises(ValueError, match="CIRCO submission has no queries"):
        sub.write_circo_submission(tmp_path / "x.json", [])


def test_cirr_submission_schema(tmp_path):
    names = [f"test1-{i}-0-img0" for i in range(60)]
    recall = {12063: names[:51], 7: names[5:56]}
    members = {12063: [names[0], names[3], names[1], names[9], names[2], names[8]],
               7: [names[9], names[5], names[10], names[11], names[12], names[13]]}
    refs = {12063: names[0], 7: names[5]}
    main, subset = sub.write_cirr_submission(tmp_path / "cirr_test1.json", recall, members, references=refs)
    assert subset == tmp_path / "cirr_test1_subset.json"
    a, b = json.loads(main.read_text()), json.loads(subset.read_text())
    assert (a["version"], a["metric"], b["version"], b["metric"]) == ("rc2", "recall", "rc2", "recall_subset")
    assert sorted(k for k in a if k not in ("version", "metric")) == ["12063", "7"]
    assert a["12063"] == names[1:51] and len(a["7"]) == 50 and names[5] not in a["7"]  # reference removed
    assert b["12063"] == [names[3], names[1], names[9]] and b["7"] == [names[9], names[10], names[11]]
    sub.check_cirr_submission(a, "recall", pair_ids=[12063, 7])
    sub.check_cirr_submission(b, "recall_subset", pair_ids=[7, 12063])
    with pytest.raises(ValueError, match=r"pairid 12063: 49 names, expected 50"):
        sub.write_cirr_submission(tmp_path / "x.json", {12063: names[:49]}, {12063: names[:3]})
    with pytest.raises(ValueError, match="'metric' must be 'recall_subset'"):
        sub.check_cirr_submission(a, "recall_subset")
    with pytest.raises(ValueError, match=r"missing \['8'\]"):
        sub.check_cirr_submission(a, "recall", pair_ids=[12063, 7, 8])


def test_cirr_submission_rejects_counts_below_one(tmp_path):
    names = [f"test1-{i}-0-img0" for i in range(60)]
    recall, subset = {7: names[:51]}, {7: names[:6]}
    with pytest.raises(ValueError, match=r"^k must be a positive int .*server expects 50\), got 0$"):
        sub.write_cirr_submission(tmp_path / "x.json", recall, subset, k=0)
    with pytest.raises(ValueError, match=r"^subset_k must be a positive int .*server expects 3\), got 0$"):
        sub.write_cirr_submission(tmp_path / "x.json", recall, subset, subset_k=0)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x_subset.json").exists()
    with pytest.raises(ValueError, match=r"k must be a positive int .*server expects 3\), got 0"):
        sub.check_cirr_submission({"version": "rc2", "metric": "recall_subset", "7": []}, "recall_subset", k=0)
    with pytest.raises(ValueError, match=r"CIRR submission \(recall\) has no pairids"):
        sub.write_cirr_submission(tmp_path / "x.json", {}, {})
