"""The pipeline and the `megapairs` command, end to end on real pictures.

Corpus: Debian's tuxpaint-stamps-default (photos and drawings, captions in the .txt beside
each), plus damaged files made here. Models: the real all-MiniLM-L6-v2 (caption space) and
seeded, randomly initialised tiny CLIP and DINOv2 checkpoints saved in Hugging Face layout
(their pairs mean nothing; they exercise the image stages). References: sentence-transformers
and transformers for the embeddings, a float64 NumPy computation of the documented mining
rule for the pairs, `datasets.load_dataset` for the exported Parquet, and an uninterrupted run
for every run killed with SIGKILL.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import minilm_dir

import megapairs as mp
from megapairs.pipeline import Output


def write_config(path: Path, corpus: Path, models: dict[str, Path] | None = None, **sections) -> Path:
    """A config with the caption space (real MiniLM) and, given models, the two tiny image
    spaces with wide bands (random weights); ``sections`` update its tables."""
    import tomli_w

    spaces = [{"name": "caption", "kind": "caption", "model": str(minilm_dir()), "band": [0.3, 0.95]}]
    if models:
        spaces += [{"name": "clip_image", "kind": "clip_image", "model": str(models["clip"]), "band": [-1.0, 0.9999]},
                   {"name": "dino", "kind": "dinov2", "model": str(models["dino"]), "band": [-1.0, 0.9999]}]
    config = {"corpus": {"path": str(corpus)}, "spaces": spaces, "encode": {"batch_size": 8},
              "mining": {"k": 10, "targets_per_query": 3, "hard_negatives": 4}, "export": {"shard_max_count": 16}}
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def run_cli(*args, check=True, env=None, script=None) -> subprocess.CompletedProcess:
    """`python -m megapairs ARGS` in a subprocess (or `script` with ARGS as argv)."""
    cmd = [sys.executable, "-c", script, *map(str, args)] if script else [sys.executable, "-m", "megapairs",
                                                                          *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def outputs(out: Path) -> dict:
    """Everything a run leaves that a user reads, in comparable form."""
    o = Output(out)
    result = {"manifest": pq.read_table(o.manifest).to_pydict()}
    for npy in sorted(o.embeddings.glob("*.npy")):
        result[npy.name] = np.load(npy)
        result[npy.with_suffix(".json").name] = json.loads(npy.with_suffix(".json").read_text())
    result["pairs"] = pq.read_table(o.pairs).to_pydict()
    result["stats"] = json.loads(o.pairs_stats.read_text())
    result["annotations"] = sorted((e["q_img"], e["t_img"], tuple(e["q_text"]))
                                   for e in mp.annotate.read_journal(o.annotations).done.values())
    result["records.jsonl"] = o.records_jsonl.read_bytes()
    result["records.parquet"] = pq.read_table(o.records_parquet).to_pydict()
    result["shards"] = {p.name: p.read_bytes() for p in sorted(o.shards.glob("*"))}
    return result


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, corpus, tiny_models) -> Path:
    """One uninterrupted `megapairs build` with all three spaces: the reference for resumes."""
    out = tmp_path_factory.mktemp("clean") / "out"
    config = write_config(out.parent / "config.toml", corpus, tiny_models)
    proc = run_cli("build", corpus, out, "-c", config, "--no-progress")
    assert "dataset:" in proc.stdout
    return out


# --------------------------------------------------------------------------- end to end


def test_build_layout_and_manifest(clean_run, corpus):
    o = Output(clean_run)
    for path in (o.config, o.manifest, o.embedding("caption"), o.embedding_info("caption"), o.embedding("clip_image"),
                 o.embedding("dino"), o.pairs, o.pairs_stats, o.annotations, o.records_jsonl, o.records_parquet):
        assert path.is_file(), path
    assert sorted(o.shards.glob("*.tar"))
    m = pq.read_table(o.manifest).to_pydict()
    expected = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.png"))
    assert m["key"] == expected  # relative keys, sorted, none dropped
    rows = dict(zip(m["key"], zip(m["status"], m["error"], m["caption"])))
    assert rows["damaged/notes.png"][0] == "error" and "not an image" in rows["damaged/notes.png"][1]
    assert rows["damaged/truncated.png"][0] == "error" and rows["damaged/truncated.png"][1]
    assert sum(s == "ok" for s in m["status"]) == len(expected) - 2
    # captions: the first line of each sidecar .txt
    for key, (status, _, cap) in rows.items():
        txt = (corpus / key).with_suffix(".txt")
        assert cap == txt.read_text().splitlines()[0].strip()
    saved = mp.pipeline.load_config(o.config)
    assert [s.name for s in saved.spaces] == ["caption", "clip_image", "dino"]


def test_caption_embeddings_equal_sentence_transformers(clean_run):
    from sentence_transformers import SentenceTransformer

    o = Output(clean_run)
    m = pq.read_table(o.manifest).to_pydict()
    emb = np.load(o.embedding("caption"))
    info = json.loads(o.embedding_info("caption").read_text())
    assert emb.dtype == np.float32 and emb.shape == (len(m["key"]), 384) and info["dims"] == 384
    rows = [i for i, c in enumerate(m["caption"]) if c and m["status"][i] == "ok"]
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        [m["caption"][i] for i in rows], normalize_embeddings=True)
    np.testing.assert_allclose(emb[rows], ref, atol=2e-5)


def test_image_embeddings_equal_transformers(clean_run, tiny_models):
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    o = Output(clean_run)
    m = pq.read_table(o.manifest).to_pydict()
    corpus = Path(json.loads(pq.read_schema(o.manifest).metadata[b"megapairs.manifest"])["root"])
    emb = np.load(o.embedding("clip_image"), mmap_mode="r")
    ok = [i for i, s in enumerate(m["status"]) if s == "ok"][::7]
    processor = CLIPImageProcessor.from_pretrained(tiny_models["clip"])
    model = CLIPVisionModelWithProjection.from_pretrained(tiny_models["clip"]).eval()
    images = [Image.open(corpus / m["key"][i]) for i in ok]
    with torch.inference_mode():
        ref = model(**processor(images=images, return_tensors="pt")).image_embeds.numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(emb[ok], ref, atol=1e-4)
    bad = [i for i, s in enumerate(m["status"]) if s != "ok"]
    assert not np.asarray(emb[bad]).any()  # rows with nothing embedded are zeros


def test_pairs_follow_the_band_rule_in_float64(tmp_path, corpus):
    """Caption space alone: each query's targets are its best-scoring images strictly inside
    the band, as a float64 brute force over the stored embeddings says."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", corpus)
    run_cli("build", out, "-c", config, "--no-progress", "--until", "mine")
    o = Output(out)
    m = pq.read_table(o.manifest).to_pydict()
    valid = [i for i, (s, c) in enumerate(zip(m["status"], m["caption"])) if s == "ok" and c]
    # the stored embeddings (equal to sentence-transformers, test above), scored in float64
    e = np.load(o.embedding("caption"))[valid].astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    scores = e @ e.T
    lo, hi, k, tpq = 0.3, 0.95, 10, 3
    expected = []
    for a in range(len(valid)):
        # knn.band: the k best-scoring other images strictly inside the band (ties: lower index)
        inband = sorted((b for b in range(len(valid)) if b != a and lo < scores[a, b] < hi),
                        key=lambda b: (-scores[a, b], b))[:k]
        expected += [(valid[a], valid[b]) for b in inband[:tpq]]
    pairs = pq.read_table(o.pairs).to_pydict()
    assert list(zip(pairs["query"], pairs["target"])) == expected
    for q, t, sc, hn in zip(pairs["query"], pairs["target"], pairs["scores"], pairs["hard_negatives"]):
        assert abs(sc[0] - scores[valid.index(q), valid.index(t)]) < 1e-5
        assert hn[0] == q and t not in hn and len(hn) == 4
        assert all(m["status"][h] == "ok" for h in hn)


def test_export_readable_by_datasets_and_shards_hold_the_images(clean_run, corpus):
    import datasets

    o = Output(clean_run)
    records = mp.dataset.read_jsonl(o.records_jsonl)
    assert records and records == mp.dataset.read_parquet(o.records_parquet)
    ds = datasets.load_dataset("parquet", data_files=str(o.records_parquet), split="train")
    assert ds.num_rows == len(records)
    assert ds[0]["q_img"] == records[0]["q_img"] and ds[0]["q_text"] == records[0]["q_text"]
    for r in records:
        assert len(r["q_text"]) >= 3 and r["hns"][0] == r["q_img"]
        assert not r["q_img"].startswith("damaged/") and not r["t_img"].startswith("damaged/")
    meta = mp.dataset.read_parquet_metadata(o.records_parquet)
    assert meta["annotator"] == "template"  # the baseline is labelled
    store = mp.dataset.ShardReader(sorted(o.shards.glob("*.tar")))
    keys = mp.dataset.image_keys(records)
    assert len(store) == len(keys)
    import io

    from PIL import Image

    for key in keys[:5]:
        with Image.open(io.BytesIO(store[key])) as a, Image.open(corpus / key) as b:
            assert a.size == b.size


# --------------------------------------------------------------------------- each stage alone


def test_each_stage_alone_and_status(tmp_path, corpus):
    out = tmp_path / "out"
    run_cli("init", out, "--images", corpus)
    text = (out / "megapairs.toml").read_text()
    assert "# " in text and str(corpus) in text  # commented default with the corpus
    cfg = ["--set", f"spaces.caption.model={json.dumps(str(minilm_dir()))}", "--set", "mining.k=10",
           "--set", "spaces.caption.band=[0.3,0.95]", "--no-progress"]
    assert "ingest: done" in run_cli("ingest", out, *cfg).stdout
    assert "ingest: up to date" in run_cli("ingest", out, *cfg).stdout
    status = run_cli("status", out, "--json").stdout
    rows = {r["stage"]: r for r in json.loads(status)}
    assert rows["ingest"]["state"] == "done" and rows["encode:caption"]["state"] == "not run"
    for stage in ("caption", "encode", "mine", "annotate", "export"):
        run_cli(stage, out, *cfg)
    rows = {r["stage"]: r for r in json.loads(run_cli("status", out, "--json").stdout)}
    assert all(r["state"] == "done" for r in rows.values()), rows
    assert rows["mine"]["stats"]["pairs"] > 0
    assert Output(out).records_parquet.is_file()
    text = run_cli("status", out).stdout
    assert "encode:caption" in text and "done" in text
    # the resolved config was saved: a later run needs no flags
    saved = mp.pipeline.load_config(out / "megapairs.toml")
    assert saved.spaces[0].band == [0.3, 0.95] and saved.mining.k == 10
    assert "up to date" in run_cli("build", out, "--no-progress").stdout


def test_stage_before_its_input_says_what_to_run(tmp_path, corpus):
    out = tmp_path / "out"
    write_config(out / "megapairs.toml", corpus)
    proc = run_cli("mine", out, check=False)
    assert proc.returncode != 0
    assert "megapairs ingest" in proc.stderr and "Traceback" not in proc.stderr


def test_changed_band_re_mines_without_re_encoding(tmp_path, corpus):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", corpus)
    run_cli("build", out, "-c", config, "--no-progress")
    o = Output(out)
    before = o.embedding("caption").stat().st_mtime_ns
    pairs_before = pq.read_table(o.pairs).to_pydict()
    proc = run_cli("build", out, "-c", config, "--no-progress", "--set", "spaces.caption.band=[0.5,0.9]")
    assert "   encode: up to date" in proc.stdout and "     mine: done" in proc.stdout
    assert "   export: done" in proc.stdout
    assert o.embedding("caption").stat().st_mtime_ns == before
    pairs = pq.read_table(o.pairs).to_pydict()
    assert pairs != pairs_before
    assert all(0.5 < s[0] < 0.9 for s in pairs["scores"])
    # the journal kept the answers of pairs mined both times
    assert "     mine: up to date" in run_cli("build", out, "-c", config, "--no-progress", "--set",
                                              "spaces.caption.band=[0.5,0.9]").stdout


# --------------------------------------------------------------------------- killed runs

KILL = textwrap.dedent("""
    import os, signal, sys
    import megapairs.pipeline.stages as st
    from megapairs import dataset, mining

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    where = os.environ["KILL_AT"]
    if where == "encode":  # after two batches of the clip_image space
        load = st._load_model
        def patched(space):
            width, run = load(space)
            calls = [0]
            def counted(*args):
                if space.name == "clip_image":
                    calls[0] += 1
                    if calls[0] == 3:
                        die()
                return run(*args)
            return width, counted
        st._load_model = patched
    elif where == "mine":  # mined, the pairs file half written
        write = st._write_parquet
        def patched(table, path):
            if path.name == "pairs.parquet":
                path.with_name(".pairs.parquet.tmp").write_bytes(b"PAR1 cut")
                die()
            write(table, path)
        st._write_parquet = patched
    elif where == "export":  # in the middle of the shards
        add = dataset._add_member
        calls = [0]
        def patched(tar, name, payload):
            calls[0] += 1
            if calls[0] == 40:
                die()
            add(tar, name, payload)
        dataset._add_member = patched
    elif where == "caption":  # the 8th caption request never returns
        from megapairs.annotate import backends
        chat = backends.OpenAIBackend.chat
        calls = [0]
        def patched(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 8:
                die()
            return chat(self, *args, **kwargs)
        backends.OpenAIBackend.chat = patched
    from megapairs.cli import main
    main(sys.argv[1:], prog_name="megapairs")
""")


@pytest.mark.parametrize("stage", ["encode", "mine", "export"])
def test_sigkill_then_rerun_equals_a_clean_run(tmp_path, corpus, tiny_models, clean_run, stage):
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.toml", corpus, tiny_models)
    args = ("build", corpus, out, "-c", config, "--no-progress")
    proc = run_cli(*args, script=KILL, env={"KILL_AT": stage}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    o = Output(out)
    if stage == "encode":  # it resumes: the finished batches are on disk
        progress = json.loads(o.embedding_progress("clip_image").read_text())
        assert 0 < progress["rows_done"] < len(pq.read_table(o.manifest))
        assert {r["stage"]: r["state"] for r in mp.pipeline.status(out)}["encode:clip_image"] == "partial"
    proc = run_cli(*args)
    if stage != "encode":
        assert "   encode: up to date" in proc.stdout
    assert_same_outputs(outputs(out), outputs(clean_run))
    assert not list(out.rglob(".*.tmp")) and not (out / ".dataset.tmp").exists()


def test_full_disk_is_a_clear_error_and_the_run_resumes(tmp_path, corpus, monkeypatch, capsys):
    from megapairs.cli import main

    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", corpus)
    import pyarrow.parquet as real_pq

    write_table = real_pq.write_table

    def full(table, where, *a, **k):
        if "pairs" in str(where):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_table(table, where, *a, **k)

    monkeypatch.setattr(real_pq, "write_table", full)
    with pytest.raises(SystemExit) as exit_:
        main(["build", str(out), "-c", str(config), "--no-progress"], prog_name="megapairs")
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and "pairs.parquet" in err[0] and "again" in err[0]
    monkeypatch.setattr(real_pq, "write_table", write_table)
    with pytest.raises(SystemExit) as exit_:
        main(["build", str(out), "-c", str(config), "--no-progress"], prog_name="megapairs")
    assert exit_.value.code in (0, None)
    assert "encode: up to date" in capsys.readouterr().out
    assert Output(out).records_parquet.is_file()


# --------------------------------------------------------------------------- other corpora


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_listing_with_caption_column(tmp_path, corpus, fmt):
    import csv

    import pyarrow as pa

    keys = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.png") if "damaged" not in p.parts)
    texts = [(corpus / k).with_suffix(".txt").read_text().splitlines()[0] for k in keys]
    listing = corpus / f"listing.{fmt}"
    if fmt == "csv":
        with open(listing, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "text"])
            w.writerows(zip(keys, texts))
    else:
        pq.write_table(pa.table({"path": keys, "text": texts}), listing)
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", listing)
    run_cli("build", out, "-c", config, "--no-progress", "--set", "corpus.captions=column", "--set",
            "corpus.caption_column=text")
    m = pq.read_table(Output(out).manifest).to_pydict()
    assert m["key"] == keys and all(m["caption"])
    assert Output(out).records_parquet.is_file()
    listing.unlink()


def test_webdataset_shards_as_corpus(tmp_path, corpus):
    shards = tmp_path / "shards"
    shards.mkdir()
    pngs = sorted(p for p in corpus.rglob("*.png") if "damaged" not in p.parts)
    for s in range(2):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for i, p in enumerate(pngs[s::2]):
                tar.add(p, f"{s:05d}{i:04d}.png")
                tar.add(p.with_suffix(".txt"), f"{s:05d}{i:04d}.txt")
    out = tmp_path / "out"
    run_cli("build", out, "-c", write_config(tmp_path / "c.toml", shards), "--no-progress")
    m = pq.read_table(Output(out).manifest).to_pydict()
    assert len(m["key"]) == len(pngs) and all(k.endswith(".png") for k in m["key"])
    records = mp.dataset.read_jsonl(Output(out).records_jsonl)
    assert records
    # the image bytes reach the shards written by export
    store = mp.dataset.ShardReader(sorted(Output(out).shards.glob("*.tar")))
    assert len(store) == len(mp.dataset.image_keys(records))


# --------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("case", ["missing-folder", "bad-band", "unknown-key", "absolute-key", "dotdot-key",
                                  "duplicate-key", "bad-toml", "missing-model", "all-failed"])
def test_user_errors_are_one_line(tmp_path, corpus, case):
    out = tmp_path / "out"
    args = ["build"]
    config = write_config(tmp_path / "c.toml", corpus)
    expect = ""
    if case == "missing-folder":
        args += [tmp_path / "nope", out, "-c", config]
        expect = "no such file or directory"
    elif case == "bad-band":
        args += [out, "-c", config, "--set", "spaces.caption.band=[0.9,0.1]"]
        expect = "band"
    elif case == "unknown-key":
        config.write_text(config.read_text() + "\n[annotate]\nannotatr = \"openai\"\n")
        args += [out, "-c", config]
        expect = "unknown setting annotate.annotatr"
    elif case in ("absolute-key", "dotdot-key", "duplicate-key"):
        listing = tmp_path / "list.csv"
        first = next(corpus.rglob("*.png")).relative_to(corpus).as_posix()
        bad = {"absolute-key": str(corpus / first), "dotdot-key": "../x.png", "duplicate-key": first}[case]
        listing.write_text(f"path\n{first}\n{bad}\n")
        args += [out, "-c", config, "--set", f"corpus.path={json.dumps(str(listing))}",
                 "--set", f"corpus.root={json.dumps(str(corpus))}"]
        expect = {"absolute-key": "absolute", "dotdot-key": "..", "duplicate-key": "listed again"}[case]
    elif case == "bad-toml":
        config.write_text("[corpus\npath = 1")
        args += [out, "-c", config]
        expect = "TOML"
    elif case == "missing-model":
        args += [out, "-c", config, "--set", "spaces.caption.model=./no/such/model"]
        expect = "no such directory"
    elif case == "all-failed":
        broken = tmp_path / "broken"
        broken.mkdir()
        for i in range(3):
            (broken / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 20)
        args += [broken, out, "-c", config]
        expect = "none of the 3 images"
    proc = run_cli(*args, "--no-progress", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megapairs: error:"), proc.stderr
    assert expect in lines[0], lines[0]
    verbose = run_cli("--verbose", *args, "--no-progress", check=False)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_config_precedence_flags_over_file_over_defaults(tmp_path, corpus):
    config = write_config(tmp_path / "c.toml", corpus, mining={"seed": 7, "hard_negatives": 6})
    cfg = mp.pipeline.resolve_config(tmp_path / "out", config, overrides=["mining.seed=9"])
    assert cfg.mining.seed == 9  # flag
    assert cfg.mining.hard_negatives == 6  # file
    assert cfg.annotate.annotator == "template"  # default
    saved = mp.pipeline.load_config(tmp_path / "out" / "megapairs.toml")
    assert saved == cfg
    with pytest.raises(mp.pipeline.ConfigError, match="spaces.nope"):
        mp.pipeline.resolve_config(tmp_path / "out", config, overrides=["spaces.nope.band=[0,1]"])


def test_python_build_equals_the_command(tmp_path, corpus):
    config = write_config(tmp_path / "c.toml", corpus)
    results = mp.pipeline.build(None, tmp_path / "a", config, progress=False)
    assert [r.stage for r in results] == list(mp.pipeline.STAGES) and all(r.ran for r in results
                                                                          if r.stage != "caption")
    run_cli("build", tmp_path / "b", "-c", config, "--no-progress")
    a, b = Output(tmp_path / "a"), Output(tmp_path / "b")
    assert a.records_jsonl.read_bytes() == b.records_jsonl.read_bytes()
    assert [r.ran for r in mp.pipeline.build(None, tmp_path / "a", config, progress=False)] == [False] * 6


# --------------------------------------------------------------------------- template annotator


def test_template_instructions_are_valid_and_deterministic():
    from megapairs.annotate import template, validate_instructions

    items = template.instructions("A red apple on a table.", "A green apple in a bowl.", seed=0, key="k")
    assert len(items) >= 3 and items[0] == "Find a green apple in a bowl."
    assert any("apple" in s and "green" in s for s in items[1:])
    assert validate_instructions(items)[0] == items
    assert items == template.instructions("A red apple on a table.", "A green apple in a bowl.", seed=0, key="k")
    journal_pairs = [{"q_img": "a.png", "t_img": "b.png", "hns": ["a.png"]},
                     {"q_img": "a.png", "t_img": "c.png", "hns": ["a.png"]}]
    result = template.annotate_template(journal_pairs, {"a.png": "A cat.", "b.png": "A black cat asleep."})
    assert len(result.records) == 1 and result.failures[0]["stage"] == "caption"
    assert "c.png" in result.failures[0]["reason"]


# --------------------------------------------------------------------------- against a server


@pytest.fixture
def chat_server():
    """A chat-completions server on 127.0.0.1: one image -> a caption chosen by the image's
    bytes; two images -> a description of the pair; text alone -> a JSON list of instructions.
    Records what it was asked."""
    import base64
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked = {"caption": [], "mllm": 0, "llm": 0}
    colours, things = ("red", "blue", "green", "yellow"), ("bird", "flower", "fruit", "animal")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][0]["content"]
            if isinstance(content, list):
                images = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in content
                          if p["type"] == "image_url"]
                if len(images) == 1:
                    h = hashlib.sha256(images[0]).digest()
                    asked["caption"].append(body["model"])
                    text = f"A photo of a {colours[h[0] % 4]} {things[h[1] % 4]} seen from the side."
                else:
                    asked["mllm"] += 1
                    text = ("Both images show a small object on a plain background. However, the Source Image "
                            "shows it from the left, whereas the Target Image shows it from the right.")
            else:
                asked["llm"] += 1
                text = json.dumps(["Show the same object from the other side.", "Turn it around to face right.",
                                   "The same object, seen from its right."])
            payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", asked
    finally:
        httpd.shutdown()
        httpd.server_close()


def images_alone(corpus: Path, to: Path, n: int = 30) -> Path:
    """The first ``n`` images of the corpus without their caption files."""
    for p in sorted(corpus.rglob("*.png"))[:n]:
        dest = to / p.relative_to(corpus)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)  # the images alone: captions come from the server
    return to


def test_mllm_captions_and_server_annotation(tmp_path, corpus, chat_server):
    url, asked = chat_server
    images = images_alone(corpus, tmp_path / "nocaptions")
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", images,
                          caption={"api_base": url, "model": "fake-vlm", "concurrency": 2},
                          annotate={"annotator": "openai", "api_base": url, "mllm_model": "fake-vlm",
                                    "llm_model": "fake-llm", "concurrency": 2})
    mp.pipeline.build(None, out, config, overrides=["corpus.captions=mllm"], progress=False)
    m = pq.read_table(Output(out).manifest).to_pydict()
    readable = [i for i, s in enumerate(m["status"]) if s == "ok"]
    assert all(m["caption"][i].startswith("A photo of a ") for i in readable)
    assert len(asked["caption"]) == len(readable) and set(asked["caption"]) == {"fake-vlm"}
    records = mp.dataset.read_jsonl(Output(out).records_jsonl)
    pairs = pq.read_table(Output(out).pairs).num_rows
    assert len(records) == pairs == asked["mllm"] == asked["llm"]
    assert records[0]["q_text"][0] == "Show the same object from the other side."
    assert mp.dataset.read_parquet_metadata(Output(out).records_parquet)["annotator"] == "openai"
    # nothing is asked again on a rerun, not even after the outputs are removed
    shutil.rmtree(Output(out).dataset)
    before = (len(asked["caption"]), asked["mllm"])
    mp.pipeline.build(None, out, config, overrides=["corpus.captions=mllm"], progress=False)
    assert (len(asked["caption"]), asked["mllm"]) == before
    assert mp.dataset.read_jsonl(Output(out).records_jsonl) == records


def test_sigkill_during_captioning_resumes_asking_only_the_rest(tmp_path, corpus, chat_server):
    url, asked = chat_server
    images = images_alone(corpus, tmp_path / "nocaptions")
    config = write_config(tmp_path / "c.toml", images, caption={"api_base": url, "model": "fake-vlm", "concurrency": 1})
    args = ["-c", config, "--set", "corpus.captions=mllm", "--no-progress"]
    clean, out = tmp_path / "clean", tmp_path / "out"
    for folder in (clean, out):
        run_cli("ingest", folder, *args)
    run_cli("caption", clean, *args)
    readable = len(asked["caption"])
    proc = run_cli("caption", out, *args, script=KILL, env={"KILL_AT": "caption"}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the header, then the answers written before the kill: 7 were given, the last of them
    # may not have reached the journal (the kill comes from the worker thread)
    answers = len(Output(out).captions_journal.read_text().splitlines()) - 1
    assert 6 <= answers <= 7
    assert {r["stage"]: r["state"] for r in mp.pipeline.status(out)}["caption"] != "done"
    before = len(asked["caption"])
    run_cli("caption", out, *args)
    assert len(asked["caption"]) - before == readable - answers  # only the images without an answer
    assert pq.read_table(Output(out).manifest).to_pydict() == pq.read_table(Output(clean).manifest).to_pydict()
