"""megapairs.dataset: JSONL / Parquet round trips (including the released data's spellings),
interoperation with mining.to_records, WebDataset shards written with tarfile and read back
(with Pillow as the decoding reference, and hand-made hostile archives), and the training
sampler's invariants."""

import gzip
import io
import json
import signal
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import megapairs as mp
from megapairs import dataset as ds


def records(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = f"train-00100-to-00199/{i:05d}/{i:09d}.jpg"
        t = f"train-00100-to-00199/{i + 50:05d}/{i + 50:09d}.jpg"
        hns = [q] + [f"train-00200-to-00299/{j:05d}/{j:09d}.jpg" for j in rng.choice(1000, 5, replace=False)]
        texts = [f"Find a similar vehicle number {i}, indoors.", "Même chose, mais la nuit — «ünïcode»",
                 f"What if this {i} were red?", f"Show number {i} at dusk."][: 3 if i % 2 else 4]
        out.append({"q_img": q, "q_text": texts, "t_img": t, "hns": hns})
    return out


# --------------------------------------------------------------------------- JSONL / Parquet


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.parquet"])
def test_round_trip(tmp_path, name):
    recs = records(7)
    path = tmp_path / name
    assert ds.write_records(recs, path) == 7
    assert ds.read_records(path) == recs
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as f:
            assert f.readline().startswith('{"q_img": "train-00100')
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_parquet_schema_metadata_and_batches(tmp_path):
    recs = records(9)
    path = tmp_path / "a.parquet"
    ds.write_parquet(recs, path, metadata={"annotate": {"prompt_version": "v1"}}, row_group_size=4)
    schema = pq.read_schema(path)
    assert schema.field("q_text").type == pa.list_(pa.string()) and schema.field("hns").type == pa.list_(pa.string())
    assert ds.read_parquet_metadata(path) == {"annotate": {"prompt_version": "v1"}}
    assert list(ds.iter_parquet(path, batch_size=2)) == recs
    assert ds.read_parquet_metadata(_write_plain(tmp_path / "b.parquet", recs)) is None


def _write_plain(path, recs, text_name="q_text", extra=False):
    cols = {"q_img": [r["q_img"] for r in recs], text_name: [r["q_text"] for r in recs],
            "t_img": [r["t_img"] for r in recs], "hns": [r["hns"] for r in recs]}
    if extra:
        cols["score"] = [0.5] * len(recs)
    pq.write_table(pa.table(cols), path)
    return path


def test_released_spellings_are_accepted(tmp_path):
    """The released card says q_text; copies of the data spell it q_texts."""
    recs = records(4)
    path = _write_plain(tmp_path / "released.parquet", recs, text_name="q_texts", extra=True)
    assert ds.read_parquet(path) == recs and list(ds.iter_parquet(path)) == recs
    jl = tmp_path / "released.jsonl"
    jl.write_text("".join(json.dumps({"q_img": r["q_img"], "q_texts": r["q_text"], "t_img": r["t_img"],
                                      "hns": r["hns"], "extra": 1}) + "\n\n" for r in recs))
    assert ds.read_jsonl(jl) == recs
    with pytest.raises(ValueError, match="has both 'q_text' and 'q_texts'"):
        ds.normalize_record({**recs[0], "q_texts": ["x"]})


def test_mining_records_interoperate(tmp_path):
    table = pa.Table.from_pydict({
        "query": [0, 2], "target": [1, 0], "spaces": [["a"], ["b"]], "scores": [[0.9], [0.85]],
        "hard_negatives": [[0, 2, 3], [2, 3, 1]]}, schema=mp.mining.SCHEMA)
    keys = ["x/0.jpg", "x/1.jpg", "x/2.jpg", "x/3.jpg"]
    mined = mp.mining.to_records(table, keys)
    for name in ("m.jsonl", "m.parquet"):
        ds.write_records(mined, tmp_path / name)
        back = ds.read_records(tmp_path / name)
        assert back == [{**r, "q_text": []} for r in mined]
        assert all(r["hns"][0] == r["q_img"] for r in back)


def test_bad_files_name_the_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(records(1)[0])
    path.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        ds.read_jsonl(path)
    path.write_text(good + "\n" + json.dumps({"q_img": "a.jpg", "q_text": ["x"], "hns": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 't_img' must be a non-empty string"):
        ds.read_jsonl(path)
    path.write_text(json.dumps({"q_img": "a", "t_img": "b", "q_text": "one string", "hns": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'q_text' must be a list of strings"):
        ds.read_jsonl(path)
    path.write_text(json.dumps({"q_img": "a", "t_img": "b", "q_text": [], "hns": ["a", 3]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'hns' must hold only non-empty strings"):
        ds.read_jsonl(path)
    with pytest.raises(ValueError, match=r"records\[1\]: 'q_img'"):
        ds.write_jsonl([records(1)[0], {"t_img": "b"}], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists() and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ValueError, match="missing.parquet.*no column 'hns'"):
        ds.records_from_table(pa.table({"q_img": ["a"], "t_img": ["b"]}), "missing.parquet")
    with pytest.raises(ValueError, match="cannot tell the format"):
        ds.read_records(tmp_path / "a.csv")


def test_image_keys():
    recs = records(3)
    keys = ds.image_keys(recs)
    assert len(keys) == len(set(keys)) and keys[:2] == [recs[0]["q_img"], recs[0]["t_img"]]
    assert set(keys) == {k for r in recs for k in [r["q_img"], r["t_img"], *r["hns"]]}


# --------------------------------------------------------------------------- WebDataset shards


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "img"
    keys = []
    for i in range(7):
        ext = ("jpg", "png", "webp")[i % 3]
        key = f"train-000/{i:02d}/{i:06d}.{ext}"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (20 + 3 * i, 30 + i, 3), dtype=np.uint8)).save(root / key)
        keys.append(key)
    return root, keys


def test_shards_write_and_read(images, tmp_path):
    root, keys = images
    result = ds.write_shards(keys, root, tmp_path / "s", max_count=3)
    assert [p.name for p in result.paths] == ["images-000000.tar", "images-000001.tar", "images-000002.tar"]
    assert result.images == 7 and result.skipped == []
    with tarfile.open(result.paths[0]) as tar:
        names = tar.getnames()
        assert names == [f"{posix_stem(k)}.{ext}" for k in keys[:3] for ext in ("jpg", "json")]
        assert {m.mtime for m in tar.getmembers()} == {0}
    samples = [s for p in result.paths for s in ds.iter_shard(p)]
    assert [k for k, _ in samples] == [posix_stem(k) for k in keys]
    for key, (skey, sample) in zip(keys, samples):
        assert set(sample) == {"jpg", "json"}
        meta = json.loads(sample["json"])
        with Image.open(root / key) as ref:
            assert meta == {"image": key, "size": list(ref.size), "original_size": list(ref.size)}
            decoded = Image.open(io.BytesIO(sample["jpg"]))
            assert decoded.format == "JPEG" and decoded.size == ref.size
        if key.endswith(".jpg"):  # JPEG is copied byte for byte
            assert sample["jpg"] == (root / key).read_bytes()
    # reproducible bytes
    again = ds.write_shards(keys, root, tmp_path / "t", max_count=3)
    assert [p.read_bytes() for p in again.paths] == [p.read_bytes() for p in result.paths]
    # random access by the record's key (any extension, or none)
    store = ds.ShardReader(result.paths)
    assert len(store) == 7 and set(store) == {posix_stem(k) for k in keys}
    for key, (_, sample) in zip(keys, samples):
        assert store[key] == sample["jpg"] == store[posix_stem(key)] == store[posix_stem(key) + ".jpg"]
        assert key in store
    assert "nope.jpg" not in store
    with pytest.raises(KeyError):
        store["train-000/00/nope.jpg"]
    store.close()
    assert store[keys[0]] == samples[0][1]["jpg"]  # reopens


def posix_stem(key):
    return key.rsplit(".", 1)[0]


def test_shards_resize_to_512(images, tmp_path):
    root, keys = images
    result = ds.write_shards(keys, root, tmp_path / "s", resize=512, metadata=True, quality=95)
    assert len(result.paths) == 1
    for (_, sample), key in zip(ds.iter_shard(result.paths[0]), keys):
        with Image.open(root / key) as ref:
            expected = np.asarray(ref.convert("RGB").resize((512, 512), Image.Resampling.BICUBIC), np.float64)
        got = np.asarray(Image.open(io.BytesIO(sample["jpg"])), np.float64)
        assert got.shape == (512, 512, 3) and np.abs(got - expected).mean() < 4.0  # JPEG q95 loss only
        assert json.loads(sample["json"])["size"] == [512, 512]
    by_bytes = ds.write_shards(keys, root, tmp_path / "b", max_bytes=1, metadata=False)
    assert len(by_bytes.paths) == 7
    with tarfile.open(by_bytes.paths[0]) as tar:
        assert tar.getnames() == [posix_stem(keys[0]) + ".jpg"]


def test_shard_writing_checks(images, tmp_path):
    root, keys = images
    for bad, why in (("../escape.jpg", "unsafe"), ("/abs/x.jpg", "unsafe"), ("a/b.c.jpg", "dot in its file name")):
        with pytest.raises(ValueError, match=why):
            ds.write_shards([bad], root, tmp_path / "x")
    (root / "train-000/00/000000.png").write_bytes((root / keys[1]).read_bytes())
    with pytest.raises(ValueError, match="same shard key 'train-000/00/000000'"):
        ds.write_shards([keys[0], "train-000/00/000000.png"], root, tmp_path / "x")
    with pytest.raises(ValueError, match="image 'missing/1.jpg': cannot be read"):
        ds.write_shards([keys[0], "missing/1.jpg"], root, tmp_path / "y")
    assert list((tmp_path / "y").iterdir()) == []  # the unfinished shard is removed
    (root / "junk.jpg").write_bytes(b"not an image")
    skipped = ds.write_shards([keys[0], "junk.jpg", "missing/1.jpg"], root, tmp_path / "z", errors="skip")
    assert skipped.images == 1 and [k for k, _ in skipped.skipped] == ["junk.jpg", "missing/1.jpg"]
    # sources other than a folder
    data = {k: (root / k).read_bytes() for k in keys[:2]}
    from_map = ds.write_shards(keys[:2], data, tmp_path / "m")
    from_fn = ds.write_shards(keys[:2], data.__getitem__, tmp_path / "f")
    assert from_map.paths[0].read_bytes() == from_fn.paths[0].read_bytes()


def _hostile(path, name, kind="file"):
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("ok/0001.jpg")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"abc"))
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "ok/0001.jpg"
        else:
            info.size = 3
        tar.addfile(info, io.BytesIO(b"xyz") if kind == "file" else None)
    return path


@pytest.mark.parametrize("name,kind,why", [
    ("../evil.jpg", "file", "unsafe member path '../evil.jpg'"),
    ("ok/../../evil.jpg", "file", "unsafe member path"),
    ("/etc/evil.jpg", "file", "unsafe member path '/etc/evil.jpg'"),
    ("C:\\evil.jpg", "file", "unsafe member path"),
    ("ok/link.jpg", "symlink", "not a regular file"),
    ("ok/hard.jpg", "hardlink", "not a regular file"),
])
def test_unsafe_members_are_refused(tmp_path, name, kind, why):
    path = _hostile(tmp_path / "hostile.tar", name, kind)
    with pytest.raises(ValueError, match=f"hostile.tar: {why}" if "unsafe" in why else why):
        list(ds.iter_shard(path))
    with pytest.raises(ValueError, match="hostile.tar"):
        ds.ShardReader([path])


def test_sparse_and_oversized_members_are_refused(tmp_path):
    path = tmp_path / "sparse.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("ok/0001.jpg")
        info.type, info.size = tarfile.GNUTYPE_SPARSE, 0
        tar.addfile(info)
    with pytest.raises(ValueError, match="sparse.tar: member 'ok/0001.jpg' is a sparse file"):
        list(ds.iter_shard(path))
    with pytest.raises(ValueError, match="sparse file"):
        ds.ShardReader([path])
    big = _hostile(tmp_path / "big.tar", "ok/0002.jpg")
    assert len(ds.ShardReader([big])) == 2
    with pytest.raises(ValueError, match="big.tar: member 'ok/0001.jpg' has 3 bytes, more than 2"):
        list(ds.iter_shard(big, max_member_size=2))
    with pytest.raises(ValueError, match="more than 2"):
        ds.ShardReader([big], max_member_size=2)


def _tar(path, names):
    with tarfile.open(path, "w") as tar:
        for i, name in enumerate(names):
            data = bytes([i + 1]) * (100 + i)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_truncated_shards_are_refused(tmp_path):
    """Cut exactly at a member header (tarfile itself would just stop early) or inside the
    end-of-archive blocks: refused with the shard's name, by both readers."""
    whole = _tar(tmp_path / "whole.tar", ["k1.jpg", "k2.jpg", "k3.jpg"]).read_bytes()
    assert [k for k, _ in ds.iter_shard(tmp_path / "whole.tar")] == ["k1", "k2", "k3"]
    second_header = 512 + 512  # header + padded data of k1
    # at a header, inside the end-of-archive blocks (3 members of 1024 bytes), inside k2's data
    for cut in (second_header, 3 * 1024 + 100, second_header + 600):
        path = tmp_path / f"cut{cut}.tar"
        path.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.tar: (truncated|not a readable tar shard)"):
            list(ds.iter_shard(path))
        with pytest.raises(ValueError, match=f"cut{cut}.tar: (truncated|not a readable)"):
            ds.ShardReader([path])


def test_shard_reader_accepts_upper_case_extensions(tmp_path):
    path = _tar(tmp_path / "upper.tar", ["a/k1.JPG", "a/k2.jpg"])
    store = ds.ShardReader([path])
    assert sorted(store) == ["a/k1", "a/k2"] and store["a/k1.jpg"] == bytes([1]) * 100


def test_shard_reader_checks(tmp_path):
    a = _hostile(tmp_path / "a.tar", "ok/0002.jpg")
    b = _hostile(tmp_path / "b.tar", "ok/0003.jpg")
    with pytest.raises(ValueError, match=r"b.tar: image 'ok/0001' is also in .*a.tar"):
        ds.ShardReader([a, b])
    with tarfile.open(tmp_path / "c.tar", "w") as tar:
        for name in ("k1.jpg", "k2.jpg", "k1.json"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="sample 'k1' are not adjacent"):
        list(ds.iter_shard(tmp_path / "c.tar"))
    assert ds.check_member_name("./a/b.jpg") == "a/b.jpg"


# --------------------------------------------------------------------------- sampler


def test_sampler_invariants():
    recs = records(40)
    recs[3]["hns"] = recs[3]["hns"][:2]        # one other negative only
    recs[4]["hns"] = []                        # none: the query image stands in
    recs[5]["hns"] = recs[5]["hns"][:1]        # the query image alone
    for H in (1, 2, 4, 6):
        sampler = ds.InstructionSampler(recs, num_negatives=H, seed=3)
        assert len(sampler) == 40
        for epoch in range(3):
            sampler.set_epoch(epoch)
            order = sampler.order()
            assert sorted(order) == list(range(40))
            examples = list(sampler)
            assert [e["q_img"] for e in examples] == [recs[i]["q_img"] for i in order]
            for i, e in zip(order, examples):
                r = recs[i]
                assert e["q_img"] == r["q_img"] and e["t_img"] == r["t_img"] and e["q_text"] in r["q_text"]
                assert len(e["hns"]) == H and e["hns"][0] == r["q_img"]  # the query image, always first
                assert r["t_img"] not in e["hns"]
                pool = r["hns"][1:]
                assert all(h in (pool or [r["q_img"]]) for h in e["hns"][1:])
                if len(pool) >= H - 1:
                    assert len(set(e["hns"])) == H  # no repeats while the pool suffices
                elif pool:
                    assert set(e["hns"][1:1 + len(pool)]) == set(pool)  # all of them first, then repeats
                assert e == sampler[i]  # a pure function of (seed, epoch, index)
    # fresh draws per epoch and per seed; every instruction gets its turn
    s = ds.InstructionSampler(recs, num_negatives=4, seed=3)
    e0 = [s[i] for i in range(40)]
    s.set_epoch(1)
    assert [s[i] for i in range(40)] != e0 and s.order() != list(range(40))
    assert [ds.InstructionSampler(recs, 4, seed=4)[i] for i in range(40)] != e0
    picks = Counter()
    for epoch in range(60):
        s.set_epoch(epoch)
        picks[s[0]["q_text"]] += 1
    assert set(picks) == set(recs[0]["q_text"])
    assert ds.InstructionSampler(recs, 4, shuffle=False).order() == list(range(40))
    assert s[-1] == s[39] and s[0:2] == [s[0], s[1]]


def test_sampler_rejects_bad_records():
    recs = records(3)
    with pytest.raises(ValueError, match="num_negatives must be a positive int"):
        ds.InstructionSampler(recs, num_negatives=0)
    bad = [dict(recs[0]), {**recs[1], "q_text": []}, {**recs[2], "hns": ["other.jpg"]}]
    s = ds.InstructionSampler(bad + [{**recs[0], "hns": [recs[0]["q_img"], recs[0]["t_img"]]}])
    assert s[0]["q_img"] == recs[0]["q_img"]
    with pytest.raises(ValueError, match="record 1 has no instructions"):
        s[1]
    with pytest.raises(ValueError, match=r"record 2: hns\[0\] must be the query image"):
        s[2]
    with pytest.raises(ValueError, match="record 3: the target image .* is among its hard negatives"):
        s[3]
    with pytest.raises(IndexError):
        s[4]


def test_transparent_png_goes_into_shards_on_white(tmp_path):
    """A JPEG cannot hold alpha: transparent pixels become white (Pillow's own compositing),
    not the colour hidden under them."""
    from PIL import Image

    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200  # red hidden under full transparency on the left half
    rgba[:, 30:] = (10, 120, 30, 255)  # opaque green on the right
    rgba[:20, 30:, 3] = 128  # half transparent band
    (tmp_path / "img").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img" / "a.png")
    result = ds.write_shards(["a.png"], tmp_path / "img", tmp_path / "s", metadata=False, quality=100)
    got = np.asarray(Image.open(io.BytesIO(ds.ShardReader(result.paths)["a.png"])).convert("RGB"), np.float64)
    white = Image.new("RGBA", (60, 40), (255, 255, 255, 255))
    want = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"), np.float64)
    assert np.abs(got - want).mean() < 2 and got[:, :20].min() > 240  # JPEG at quality 100: within a few levels


def test_damaged_files_raise_errors_naming_the_file(tmp_path):
    """Truncated, overwritten and foreign bytes: every reader raises megapairs.FormatError
    (a ValueError) naming the file, and for a damaged row group the rows it held; never
    pyarrow's own ArrowInvalid or a bare OSError."""
    recs = records(40)
    good = tmp_path / "good.parquet"
    ds.write_parquet(recs, good, row_group_size=8)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.parquet"
    foreign.write_bytes(b"PAR1 this is not a parquet file at all")
    for path in (truncated, foreign):
        for read in (ds.read_parquet, ds.read_records, lambda p: list(ds.iter_parquet(p)), ds.read_parquet_metadata):
            with pytest.raises(mp.FormatError, match=str(path.name)):
                read(path)
    # a damaged data page inside: the footer reads, a row group does not
    meta = pq.ParquetFile(good).metadata
    start = meta.row_group(2).column(0).data_page_offset
    broken = bytearray(data)
    broken[start:start + 64] = b"\xff" * 64
    inside = tmp_path / "inside.parquet"
    inside.write_bytes(bytes(broken))
    got = []
    with pytest.raises(mp.FormatError, match=r"inside\.parquet \(rows from 16\)"):
        for record in ds.iter_parquet(inside, batch_size=8):
            got.append(record)
    assert got == recs[:16]  # the good row groups before it were delivered
    with pytest.raises(FileNotFoundError):
        ds.read_parquet(tmp_path / "missing.parquet")
    gz = tmp_path / "cut.jsonl.gz"
    ds.write_jsonl(recs, gz)
    gz.write_bytes(gz.read_bytes()[:-40])
    with pytest.raises(mp.FormatError, match=r"cut\.jsonl\.gz: unreadable after line \d+"):
        ds.read_records(gz)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(recs[0]).encode() + b"\n" + b'{"q_img": "caf\xe9"}\n')
    with pytest.raises(mp.FormatError, match=r"latin\.jsonl:2: not UTF-8"):
        ds.read_jsonl(latin)


def test_jsonl_line_limit_refuses_a_file_without_newlines(tmp_path):
    """A file with no newline is refused after reading max_line_bytes, not loaded whole."""
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:  # 80 MiB of one "line", sparse on disk
        f.write(b'{"q_img": "')
        f.seek(80 << 20)
        f.write(b'"}')
    with pytest.raises(mp.FormatError, match=r"huge\.jsonl:1: line longer than 67108864 bytes"):
        ds.read_jsonl(huge)
    small = tmp_path / "small.jsonl"
    rec = records(1)[0]
    small.write_text(json.dumps(rec) + "\n")
    with pytest.raises(mp.FormatError, match="line longer than 100 bytes"):
        ds.read_jsonl(small, max_line_bytes=100)
    assert ds.read_jsonl(small, max_line_bytes=10_000) == [rec]  # a raised limit accepts it


def test_parquet_footer_that_aborts_pyarrow_is_refused(tmp_path):
    """A footer declaring a row group of -63 rows (found by the records fuzz target): pyarrow
    reading it dies with an uncaught C++ length_error (SIGABRT); ours is a FormatError."""
    found = Path(__file__).parent / "fuzz" / "regressions" / "records" / "negative_row_group_rows.parquet"
    code = f"import pyarrow.parquet as pq; next(pq.ParquetFile({str(found)!r}).iter_batches(batch_size=3, columns=[]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr[-300:])
    for read in (ds.read_records, lambda p: list(ds.iter_parquet(p))):
        with pytest.raises(mp.FormatError, match=r"negative_row_group_rows\.parquet: damaged Parquet footer: "
                                                 r"row groups of \[-63\] rows for 2 in all"):
            read(found)


def test_parquet_column_metadata_pyarrow_aborts_on_is_never_touched():
    """Found by the records fuzz target: a footer whose column-chunk size statistics do not
    match the schema. pyarrow's RowGroupMetaData.column() on it aborts the process, while
    reading reports an OSError; our readers only read, so it is a FormatError."""
    found = Path(__file__).parent / "fuzz" / "regressions" / "records" / "histogram_size_mismatch.parquet"
    code = f"import pyarrow.parquet as pq; pq.ParquetFile({str(found)!r}).metadata.row_group(0).column(3)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr[-300:])
    for read in (ds.read_records, lambda p: list(ds.iter_parquet(p))):
        with pytest.raises(mp.FormatError, match=r"histogram_size_mismatch\.parquet.*not a readable Parquet file"):
            read(found)
