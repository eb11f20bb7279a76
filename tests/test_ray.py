"""The Ray executor on a real local Ray cluster (2 CPUs on 127.0.0.1): sharded exact kNN is
identical to the single-machine search, a pipeline build on the cluster writes the same
files as a local build, and a worker killed mid-stage leaves no duplicate and no gap."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import megapairs as mp
from megapairs.pipeline.layout import Output

ray = pytest.importorskip("ray", reason="pip install 'megapairs[ray]'")

from test_pipeline import assert_same_outputs, outputs, run_cli, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    mp.cluster.init(num_cpus=2)
    yield ray
    ray.shutdown()


def planted_ties(n=20_000, d=256, seed=0):
    """Unit vectors where many scores tie exactly: 400 rows repeated (duplicates, so equal
    scores for every query) and a block of integer vectors (integer scores)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[10_000:10_400] = x[:400]  # exact duplicates, across shard boundaries
    x[15_000:15_400] = x[:400]
    x[18_000:19_000] = rng.integers(-1, 2, (1000, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[19_500:19_600] = x[18_000:18_100]  # ties among the integer block too
    return x


def test_sharded_knn_is_identical_to_one_machine(cluster, tmp_path):
    x = planted_ties()
    k = 20
    options = {"shard_rows": 6_000, "query_rows": 7_000}
    want = mp.knn.search(x, x, k, exclude_self=True)
    got = mp.cluster.search(x, x, k, exclude_self=True, **options)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    # the planted duplicates did tie: a query's twin appears with the same score as itself would
    assert (want[0][:400, 0] == want[0][:400, 1]).all()

    want = mp.knn.band(x, x, 0.05, 0.9, k, exclude_self=True)
    path = tmp_path / "x.npy"
    np.save(path, x)  # workers memory-map their shard of the file
    got = mp.cluster.band(str(path), path, 0.05, 0.9, k, exclude_self=True, **options)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])

    queries = x[::7] + 0.01  # not part of the corpus
    want = mp.knn.search(queries, x, k)
    got = mp.cluster.search(queries, x, k, **options)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_sharded_knn_refuses_bad_input(cluster):
    x = np.ones((10, 4), np.float32)
    with pytest.raises(ValueError, match="dimension 4 but the corpus has 3"):
        mp.cluster.search(x, x[:, :3], 2)
    with pytest.raises(ValueError, match="shard_rows must be a positive int"):
        mp.cluster.search(x, x, 2, shard_rows=0)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite value at row 3, column 2"):
        mp.cluster.search(bad, x, 2)
    with pytest.raises(ValueError, match="need lo < hi"):
        mp.cluster.band(x, x, 0.5, 0.5, 2)


def _config(tmp_path, corpus, tiny_models, **ray_options):
    # one encoder thread in both executors: oneDNN may split a reduction differently on
    # another thread count, and this test wants the same bytes (docs/scale.md)
    return write_config(tmp_path / "config.toml", corpus, tiny_models, encode={"num_threads": 1, "batch_size": 8},
                        ray={"batch_size": 16, "workers": 2, **ray_options})


def test_build_on_ray_equals_local_build(cluster, tmp_path, corpus, tiny_models):
    config = _config(tmp_path, corpus, tiny_models, shard_rows=20, query_rows=16)
    local = mp.pipeline.build(corpus, tmp_path / "local", config, progress=False)
    remote = mp.pipeline.build(corpus, tmp_path / "ray", config, progress=False, executor="ray")
    assert [r.stage for r in remote] == [r.stage for r in local]
    assert_same_outputs(outputs(tmp_path / "local"), outputs(tmp_path / "ray"))
    assert Output(tmp_path / "ray").pairs.read_bytes() == Output(tmp_path / "local").pairs.read_bytes()
    assert not list(Output(tmp_path / "ray").embeddings.glob(".*"))  # parts assembled and removed


def test_killed_worker_leaves_no_duplicate_and_no_gap(cluster, tmp_path, corpus, tiny_models):
    """An encoder actor is killed with ray.kill while the stage runs: Ray restarts it and
    retries its part; the assembled embeddings equal a local run's, row for row."""
    from ray._private import state  # the GCS's actor table: works without the dashboard

    config = _config(tmp_path, corpus, tiny_models, batch_size=8)
    mp.pipeline.build(corpus, tmp_path / "local", config, progress=False, until="encode")
    out = tmp_path / "ray"
    mp.pipeline.build(corpus, out, config, progress=False, until="caption")
    killed, stop = [], threading.Event()

    def killer():
        while not stop.is_set() and len(killed) < 2:  # one actor in each of the first two spaces
            for actor_id, actor in state.actors().items():
                if "_Encoder" in actor["ActorClassName"] and actor["State"] == "ALIVE" and \
                        actor_id not in killed and actor["NumRestarts"] == 0:
                    core = ray._private.worker.global_worker.core_worker
                    ray.kill(core.get_actor_handle(ray.ActorID(bytes.fromhex(actor_id))), no_restart=False)
                    killed.append(actor_id)
                    time.sleep(1.0)  # the next kill in another stage's actors
                    break
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        mp.pipeline.encode(out, config, progress=False, executor="ray")
    finally:
        stop.set()
        thread.join()
    assert killed, "no encoder actor was seen alive"
    restarted = [a for i, a in state.actors().items() if i in killed]
    assert all(a["NumRestarts"] >= 1 or a["State"] == "DEAD" for a in restarted)
    want, got = outputs_of_encode(tmp_path / "local"), outputs_of_encode(out)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for space in ("caption", "clip_image", "dino"):
        local = json.loads(Output(tmp_path / "local").embedding_info(space).read_text())
        assert json.loads(Output(out).embedding_info(space).read_text()) == local


def outputs_of_encode(out: Path) -> dict:
    o = Output(out)
    result = {p.name: np.load(p) for p in sorted(o.embeddings.glob("*.npy"))}
    result["manifest"] = np.array(pq.read_table(o.manifest)["status"].to_pylist())
    return result


def test_ray_option_without_ray_says_how_to_install(tmp_path, corpus):
    script = ("import sys; sys.modules['ray'] = None\n"
              "from megapairs.cli import main; main(sys.argv[1:], prog_name='megapairs')")
    proc = run_cli("build", corpus, tmp_path / "out", "--ray", "--no-progress", script=script, check=False)
    assert proc.returncode == 1
    assert "pip install 'megapairs[ray]'" in proc.stderr
    assert not (tmp_path / "out" / "manifest.parquet").exists()
