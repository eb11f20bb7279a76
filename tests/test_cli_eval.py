"""`megapairs eval BENCHMARK ROOT --model PATH`: the command over megapairs.evaluation.evaluate.

The references are the library functions, themselves tested against the official metric
definitions (test_evaluate.py, test_evaluation_metrics.py) and the servers' schemas
(test_evaluation_loaders.py): the command must print and write exactly the metrics that
`evaluate` returns for the same tiny seeded CLIP, and the server files that `evaluate`
writes through `write_circo_submission` / `write_cirr_submission`. Bad inputs must give one
line on stderr and exit 1."""

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from evaluation_fixtures import cirr_record, make_circo, make_cirr, make_fashioniq, save_tiny_clip
from PIL import Image

import megapairs as mp
from megapairs.cli import main
from megapairs.evaluation import check_circo_submission, check_cirr_submission, evaluate
from megapairs.evaluation.models import load_model

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random-initialised CLIPModel in the Hugging Face layout (seeded)."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def clip(clip_dir):
    return mp.CLIP.from_pretrained(clip_dir)


def texture(paths, seed: int) -> None:
    """Random textures in place of the fixtures' solid colours, so that embeddings differ."""
    rng = np.random.default_rng(seed)
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(path, format="PNG")


CIRCO_IDS = list(range(1000, 1060))


@pytest.fixture(scope="module")
def circo_root(tmp_path_factory) -> Path:
    val = [{"reference_img_id": 1000 + 7 * i, "target_img_id": 1003 + 5 * i, "id": i,
            "relative_caption": f"has {i + 2} dogs", "shared_concept": "a park",
            "gt_img_ids": [1003 + 5 * i, 1040 + i], "semantic_aspects": ["cardinality"] if i % 2 else ["addition"]}
           for i in range(6)]
    test = [{"reference_img_id": 1000 + 3 * i, "relative_caption": f"is {c}", "shared_concept": "a car", "id": i}
            for i, c in enumerate(["red", "parked", "smaller"])]
    root = make_circo(tmp_path_factory.mktemp("circo") / "CIRCO", CIRCO_IDS, {"val": val, "test": test})
    texture(sorted((root / "COCO2017_unlabeled" / "unlabeled2017").iterdir()), 0)
    return root


def cirr_root(base: Path, split: str, prefix: str, seed: int) -> Path:
    names = [f"{prefix}-{i}-0-img0" for i in range(56)]
    records = [cirr_record(100 + i, names[6 * i], f"caption {i}", names[6 * i:6 * i + 6],
                           None if split == "test1" else names[6 * i + 1 + i % 5]) for i in range(4)]
    root = make_cirr(base / f"CIRR-{split}", split, names, records)
    texture(sorted((root / ("dev" if split == "val" else split)).iterdir()), seed)
    return root


@pytest.fixture(scope="module")
def cirr_val(tmp_path_factory) -> Path:
    return cirr_root(tmp_path_factory.mktemp("cirr"), "val", "dev", 1)


@pytest.fixture(scope="module")
def cirr_test1(tmp_path_factory) -> Path:
    return cirr_root(tmp_path_factory.mktemp("cirr"), "test1", "test1", 2)


@pytest.fixture(scope="module")
def fiq_root(tmp_path_factory) -> Path:
    names = [f"B{i:03d}" for i in range(14)]
    records = [{"candidate": names[i], "target": names[(3 * i + 5) % 14], "captions": [f"Is colour {i}.", "is long"]}
               for i in range(6)]
    root = make_fashioniq(tmp_path_factory.mktemp("fiq") / "fiq", {"dress": (names, records)})
    texture([root / "images" / f"{n}.png" for n in names], 3)
    return root


def run(*args: str):
    """The command in-process; stdout and stderr apart."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def table(stdout: str) -> dict[str, str]:
    """The metric table: header `metric value`, then one aligned `name value` row per metric."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    header = lines[0].split()
    assert header == ["metric", "value"], stdout
    rows = []
    for line in lines[1:]:
        if line.startswith(("submission: ", "results: ")):
            break
        rows.append(line)
    assert len({len(line) for line in [lines[0], *rows]}) == 1, f"columns not aligned:\n{stdout}"
    return dict(line.split() for line in rows)


def rounded(metrics: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.2f}" for k, v in metrics.items()}


# --------------------------------------------------------------------------- results equal evaluate's


def test_circo_val_prints_and_writes_what_evaluate_returns(circo_root, clip_dir, clip, tmp_path):
    out_json = tmp_path / "results" / "circo.json"   # the folder is created
    result = run("eval", "circo", circo_root, "--model", clip_dir, "--split", "val", "--json", out_json,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    expected = evaluate(clip, "circo", circo_root, split="val")
    assert "mAP@10[cardinality]" in expected and "R@50" in expected
    assert table(result.stdout) == rounded(expected)
    assert result.stdout.splitlines()[-1] == f"results: {out_json.resolve()}"
    record = json.loads(out_json.read_text())
    assert record["metrics"] == expected                      # full precision, same keys in the same order
    assert list(record["metrics"]) == list(expected)
    assert (record["benchmark"], record["split"], record["model"], record["precision"]) == \
        ("circo", "val", str(clip_dir), "fp32")
    assert record["megapairs_version"] == mp.__version__ and record["submission"] == [] and record["options"] == {}
    assert datetime.fromisoformat(record["date"]).tzinfo is not None


def test_fashioniq_default_split_and_options_are_passed_to_the_loader(fiq_root, clip_dir, clip, tmp_path):
    out_json = tmp_path / "fiq.json"
    result = run("eval", "fashioniq", fiq_root, "--model", clip_dir, "--option", 'categories=["dress"]',
                 "--option", "caption_style=mbeir", "--option", "check_images=false", "--batch-size", "4",
                 "--json", out_json)
    assert result.exit_code == 0, result.output
    expected = evaluate(clip, "fashioniq", fiq_root, categories=["dress"], caption_style="mbeir",
                        check_images=False, batch_size=4)
    assert table(result.stdout) == rounded(expected)
    record = json.loads(out_json.read_text())
    assert record["metrics"] == expected and record["split"] == "val"   # FashionIQ's reported split
    # values parse as JSON where they can (a list, a bool), else stay text
    assert record["options"] == {"categories": ["dress"], "caption_style": "mbeir", "check_images": False}
    # one bare name is that category (not its letters)
    single = run("eval", "fashioniq", fiq_root, "--model", clip_dir, "--option", "categories=dress")
    assert single.exit_code == 0, single.output
    assert table(single.stdout) == rounded(evaluate(clip, "fashioniq", fiq_root, categories=["dress"]))


def test_bf16_precision_reaches_the_model(fiq_root, clip_dir, tmp_path):
    result = run("eval", "fashioniq", fiq_root, "--model", clip_dir, "--precision", "bf16",
                 "--option", 'categories=["dress"]', "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    expected = evaluate(load_model(clip_dir, "bf16"), "fashioniq", fiq_root, categories=["dress"])
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == expected


def test_cirr_val_as_a_real_subprocess(cirr_val, clip_dir, clip, tmp_path):
    exe = Path(sys.executable).with_name("megapairs")
    assert exe.is_file(), f"{exe}: the console script is missing (pip install -e . installs it)"
    out_json = tmp_path / "cirr.json"
    proc = subprocess.run([str(exe), "eval", "cirr", str(cirr_val), "--model", str(clip_dir), "--split", "val",
                           "--threads", str(mp.get_num_threads()), "--json", str(out_json), "--no-progress"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected = evaluate(clip, "cirr", cirr_val, split="val")
    assert set(expected) == {"R@1", "R@5", "R@10", "R@50", "R_subset@1", "R_subset@2", "R_subset@3"}
    assert table(proc.stdout) == rounded(expected)
    assert json.loads(out_json.read_text())["metrics"] == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------- hidden labels: the server files


def test_circo_test_writes_the_server_file_of_evaluate(circo_root, clip_dir, clip, tmp_path):
    path = tmp_path / "out" / "circo_test.json"
    result = run("eval", "circo", circo_root, "--model", clip_dir, "--submission", path, "--json",
                 tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == [
        "circo test: no scores here (the labels are hidden)",
        f"submission: {path.resolve()} (upload to https://circo.micc.unifi.it/)"]
    reference = tmp_path / "reference.json"
    assert evaluate(clip, "circo", circo_root, submission_path=reference) == {}
    written = json.loads(path.read_text())
    assert written == json.loads(reference.read_text())
    check_circo_submission(written, num_queries=3)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["metrics"] == {} and record["split"] == "test" and record["submission"] == [str(path)]


def test_cirr_test1_writes_both_server_files_of_evaluate(cirr_test1, clip_dir, clip, tmp_path):
    path = tmp_path / "cirr_test1.json"
    result = run("eval", "cirr", cirr_test1, "--model", clip_dir, "--submission", path)
    assert result.exit_code == 0, result.output
    subset = tmp_path / "cirr_test1_subset.json"
    assert result.stdout.splitlines() == [
        "cirr test1: no scores here (the labels are hidden)",
        f"submission: {path.resolve()}, {subset.resolve()} (upload to https://cirr.cecs.anu.edu.au/)"]
    reference = tmp_path / "ref" / "cirr.json"
    reference.parent.mkdir()
    evaluate(clip, "cirr", cirr_test1, submission_path=reference)
    assert json.loads(path.read_text()) == json.loads(reference.read_text())
    assert json.loads(subset.read_text()) == json.loads((tmp_path / "ref" / "cirr_subset.json").read_text())
    check_cirr_submission(json.loads(path.read_text()), "recall", pair_ids=[100, 101, 102, 103])
    check_cirr_submission(json.loads(subset.read_text()), "recall_subset", pair_ids=[100, 101, 102, 103])


# --------------------------------------------------------------------------- errors: one line, exit 1


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("megapairs: error: "), result.stderr
    assert result.stdout == ""
    return lines[0].removeprefix("megapairs: error: ")


def test_bad_inputs_give_one_line_and_exit_1(fiq_root, circo_root, clip_dir, tmp_path):
    model = ["--model", str(clip_dir)]
    assert one_line_error(run("eval", "coco", fiq_root, *model)) == \
        "unknown benchmark 'coco'; the benchmarks are circo, cirr, fashioniq, genecis, mmeb, mbeir, heldout, tuxpaint"
    # --model may be left out only for the held-out task (its untrained baseline)
    assert one_line_error(run("eval", "fashioniq", fiq_root)) == \
        "fashioniq needs --model PATH (a CLIP checkpoint folder or hub id)"
    assert one_line_error(run("eval", "fashioniq", tmp_path / "missing", *model)) == \
        f"benchmark root '{tmp_path / 'missing'}' is not a directory"
    # options: the form, the key (named with the benchmark's keys), Python spellings, twice
    assert one_line_error(run("eval", "fashioniq", fiq_root, *model, "--option", "categories")) == \
        "--option 'categories': expected KEY=VALUE, e.g. check_images=false"
    assert one_line_error(run("eval", "fashioniq", fiq_root, *model, "--option", 'tasks=["x"]')) == \
        "--option tasks: fashioniq takes no such option; its options are categories, caption_style, check_images"
    assert one_line_error(run("eval", "fashioniq", fiq_root, *model, "--option", "check_images=False")) == \
        "--option check_images=False: write it as JSON, check_images=false"
    assert one_line_error(run("eval", "fashioniq", fiq_root, *model, "--option", "categories=dress",
                              "--option", "categories=shirt")) == "--option categories is given twice"
    assert "categories must be a non-empty subset" in one_line_error(
        run("eval", "fashioniq", fiq_root, *model, "--option", 'categories=["shoes"]'))
    # hidden labels without --submission; --submission where there is no server
    assert "ground truths are hidden" in one_line_error(run("eval", "circo", circo_root, *model))
    assert "only CIRCO and CIRR have test servers" in one_line_error(
        run("eval", "fashioniq", fiq_root, *model, "--submission", tmp_path / "x.json"))


def test_model_paths_without_a_model(fiq_root, clip_dir, tmp_path):
    def error(path) -> str:
        return one_line_error(run("eval", "fashioniq", fiq_root, "--model", path))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert error(empty) == f"no config.json or open_clip_config.json in '{empty}'"
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((clip_dir / "config.json").read_bytes())
    assert error(no_weights) == f"no .safetensors file or .safetensors.index.json index in '{no_weights}'"
    assert error(tmp_path / "nowhere") == f"no such directory: '{tmp_path / 'nowhere'}'"
    assert error(clip_dir / "config.json") == \
        f"expected a model directory or a hub id, got the file '{clip_dir / 'config.json'}'"


def test_verbose_raises_the_error(fiq_root, clip_dir):
    result = run("--verbose", "eval", "coco", fiq_root, "--model", clip_dir)
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "unknown benchmark 'coco'" in str(result.exception)


def test_help_lists_the_benchmarks_and_examples():
    result = run("eval", "--help")
    assert result.exit_code == 0
    for name, options in mp.evaluation.BENCHMARKS.items():
        line = next(line for line in result.stdout.splitlines() if line.split()[:1] == [name])
        assert line.split(None, 2)[1] == mp.evaluation.REPORTED_SPLITS[name]
        assert line.split(None, 2)[2] == ", ".join(options)
    assert "Examples:" in result.stdout and "megapairs eval cirr /data/CIRR --model" in result.stdout
    assert "eval" in run("--help").stdout.split("Commands:")[1]


# --------------------------------------------------------------------------- load_model


def test_load_model_is_the_clip_of_from_pretrained(clip_dir, clip, tmp_path):
    model = load_model(str(clip_dir))
    assert isinstance(model, mp.CLIP) and model.precision == "fp32"
    texts = ["a red dress", "a dog"]
    np.testing.assert_array_equal(model.encode_text(texts), clip.encode_text(texts))
    assert load_model(clip_dir, precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        load_model(clip_dir, precision="fp16")
    with pytest.raises(FileNotFoundError, match="no config.json or open_clip_config.json in"):
        load_model(tmp_path)
