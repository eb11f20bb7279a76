"""megapairs.training: the GradCache step against one plain full-batch backward through torch
autograd (cross-entropy on logits / tau, written here), with dropout and a learnable
temperature; the NumPy linear head's hand backward against torch autograd in float64, its
AdamW and schedule against torch.optim.AdamW + LambdaLR, training on a synthetic task,
determinism; the tiny MMRet example; argument errors."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import megapairs as mp
from megapairs.training import AdamW, LinearHead, lr_factor
from megapairs.training.linear_head import _head_backward, _head_forward

import torch  # noqa: E402  (a test extra: missing is a failure, not a skip)
from reference import infonce
F = torch.nn.functional

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_mmret_tiny.py"

# Parameter gradients of the GradCache step and of the reference are both float32 and differ
# by (a) the fused kernel's fp32 scores and double log-sum-exp against torch's fp32 softmax,
# amplified by 1/tau = 20 on the logits, so ~1e-6 relative on d loss / d embedding, and
# (b) the order in which the sub-batches' contributions are summed into .grad (a few ulps).
# Observed: at most ~1e-6 of the gradient's scale, so 1e-4 leaves a 100x margin, while any real
# mismatch (a wrong slice, a dropout mask not replayed, a missing term) is O(1): without the RNG
# replay the dropout case is off by ~1.7 (test_grad_cache_without_rng_replay_differs).
RTOL = 1e-4


# --------------------------------------------------------------------------- GradCache


class Tower(torch.nn.Module):
    def __init__(self, d_in, dropout):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, 24), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(24, 8))

    def forward(self, x):
        return self.net(x)


class TwoTower(torch.nn.Module):
    """A tiny MMRet-like model: a composed query is normalise(image tower + text tower); a
    candidate is normalise(image tower), so the image tower gets gradients from both sides."""

    def __init__(self, dropout=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.image = Tower(12, dropout)
        self.text = Tower(6, dropout)

    def query(self, image, text):
        return F.normalize(self.image(image) + self.text(text), dim=-1)

    def candidate(self, image):
        return F.normalize(self.image(image), dim=-1)


def make_batch(B=10, G=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randn(B, 12, generator=g)
    queries = {"image": targets + 0.5 * torch.randn(B, 12, generator=g),
               "text": torch.randn(B, 6, generator=g)}
    negatives = targets[:, None] + 0.3 * torch.randn(B, G - 1, 12, generator=g)
    candidates = torch.cat([targets[:, None], negatives], dim=1).reshape(B * G, 12)
    return queries, candidates


def chunks(t, size):
    return [t[i:i + size] for i in range(0, len(t), size)]

def reference_grads(model, queries, candidates, tau, positives, *, seed, sub_batch=None, c_sub_batch=None,
                    ids=None, symmetric=False, learnable=False):
    """Parameter gradients of one ordinary backward through the whole batch. With dropout the
    embeddings are computed in the same pieces, in the same order, from the same seed as the
    GradCache step's first pass (so every dropout mask is the same), but all with a graph."""
    model.zero_grad()
    torch.manual_seed(seed)
    if sub_batch is None:
        q = model.query(**queries)
        c = model.candidate(candidates)
    else:
        q = torch.cat([model.query(i, t) for i, t in zip(chunks(queries["image"], sub_batch),
                                                          chunks(queries["text"], sub_batch))])
        c = torch.cat([model.candidate(x) for x in chunks(candidates, c_sub_batch or sub_batch)])
    tau = torch.nn.Parameter(torch.tensor(tau)) if learnable else torch.tensor(tau)
    loss = infonce(q, c, tau, positives, ids, symmetric)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if learnable:
        grads["temperature"] = tau.grad.clone()
    return float(loss.detach()), grads


def cached_grads(model, queries, candidates, loss_fn, *, seed, **kwargs):
    model.zero_grad()
    loss_fn.zero_grad()
    torch.manual_seed(seed)
    loss = mp.training.grad_cache_step(model.query, model.candidate, queries, candidates, loss_fn, **kwargs)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if isinstance(loss_fn.temperature, torch.nn.Parameter):
        grads["temperature"] = loss_fn.temperature.grad.clone()
    return loss, grads


def assert_grads_close(got, expected, label):
    assert got.keys() == expected.keys()
    for name in expected:
        scale = float(expected[name].abs().max())
        err = float((got[name] - expected[name]).abs().max())
        assert err <= RTOL * scale, f"{label}: {name}: max |diff| {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("sub_batch, c_sub_batch", [(1, None), (3, None), (4, 7), (10, 30), (16, 64)])
def test_grad_cache_matches_full_batch(sub_batch, c_sub_batch):
    B, G, tau = 10, 3, 0.05
    model = TwoTower()
    queries, candidates = make_batch(B, G)
    ref_loss, ref = reference_grads(model, queries, candidates, tau, np.arange(B) * G, seed=0)
    loss, got = cached_grads(model, queries, candidates, mp.loss.InfoNCELoss(tau), seed=0,
                             sub_batch=sub_batch, candidate_sub_batch=c_sub_batch, group_size=G)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_grads_close(got, ref, f"sub_batch={sub_batch} candidate_sub_batch={c_sub_batch}")


@pytest.mark.parametrize("sub_batch, c_sub_batch", [(3, None), (4, 7)])
def test_grad_cache_with_dropout_and_learnable_temperature(sub_batch, c_sub_batch):
    B, G, tau = 10, 3, 0.05
    model = TwoTower(dropout=0.3)
    queries, candidates = make_batch(B, G)
    with torch.no_grad():  # dropout is really on: two forwards differ
        assert not torch.equal(model.candidate(candidates), model.candidate(candidates))
    ref_loss, ref = reference_grads(model, queries, candidates, tau, np.arange(B) * G, seed=5,
                                    sub_batch=sub_batch, c_sub_batch=c_sub_batch, learnable=True)
    loss_fn = mp.loss.InfoNCELoss(tau, learnable_temperature=True)
    loss, got = cached_grads(model, queries, candidates, loss_fn, seed=5, sub_batch=sub_batch,
                             candidate_sub_batch=c_sub_batch, group_size=G)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_grads_close(got, ref, f"dropout sub_batch={sub_batch}")


def test_grad_cache_without_rng_replay_differs(monkeypatch):
    """The negative control of the dropout test: with the RNG replay switched off, the re-forward
    draws new masks and the gradients are wrong, so the comparison above is sensitive to it."""
    import contextlib

    model = TwoTower(dropout=0.3)
    queries, candidates = make_batch(10, 3)
    _, ref = reference_grads(model, queries, candidates, 0.05, np.arange(10) * 3, seed=5, sub_batch=3)
    monkeypatch.setattr(mp.training.gradcache._RngState, "restored", lambda self: contextlib.nullcontext())
    _, got = cached_grads(model, queries, candidates, mp.loss.InfoNCELoss(0.05), seed=5, sub_batch=3,
                          group_size=3)
    with pytest.raises(AssertionError):
        assert_grads_close(got, ref, "no replay")


def test_grad_cache_positives_ids_symmetric_and_list_inputs():
    B, tau = 12, 0.05
    model = TwoTower()
    queries, candidates = make_batch(B, 1)
    positives = np.random.default_rng(0).permutation(B)
    candidates = candidates[torch.as_tensor(np.argsort(positives))]  # query i's positive at positives[i]
    ids = np.arange(B)
    ids[positives[3]] = ids[positives[7]]  # two candidates of the same image: each masked in the other's row
    for symmetric, kw in ((False, {"ids": ids}), (True, {})):
        _, ref = reference_grads(model, queries, candidates, tau, positives, seed=0, symmetric=symmetric,
                                 **kw)
        _, got = cached_grads(model, [queries["image"], queries["text"]], candidates,
                              mp.loss.InfoNCELoss(tau), seed=0, sub_batch=5, positives=positives,
                              symmetric=symmetric, **kw)
        assert_grads_close(got, ref, f"symmetric={symmetric}")


def test_grad_cache_frozen_candidate_tower_and_rng_left_as_after_first_pass():
    B, G, tau = 6, 2, 0.05
    model = TwoTower()
    frozen = torch.nn.Linear(12, 8).requires_grad_(False)
    queries, candidates = make_batch(B, G)

    def candidate(x):
        return F.normalize(frozen(x), dim=-1)

    model.zero_grad()
    q = model.query(**queries)
    infonce(q, candidate(candidates), tau, np.arange(B) * G).backward()
    ref = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(3)
    mp.training.grad_cache_step(model.query, candidate, queries, candidates, mp.loss.InfoNCELoss(tau),
                                sub_batch=4, group_size=G)
    after = torch.rand(3)
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert_grads_close(got, ref, "frozen candidates")
    assert frozen.weight.grad is None
    torch.manual_seed(3)  # no dropout here, so the first pass draws nothing: the generator is untouched
    assert torch.equal(after, torch.rand(3))


def test_grad_cache_accumulates_into_grad():
    model = TwoTower()
    queries, candidates = make_batch(8, 2)
    model.zero_grad()
    step = {"sub_batch": 3, "group_size": 2}
    mp.training.grad_cache_step(model.query, model.candidate, queries, candidates, **step)
    once = {name: p.grad.clone() for name, p in model.named_parameters()}
    mp.training.grad_cache_step(model.query, model.candidate, queries, candidates, **step)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[name])


# --------------------------------------------------------------------------- NumPy linear head


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_head_backward_matches_autograd_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5))
    w = rng.standard_normal((5, 4))
    dy = rng.standard_normal((7, 4))
    y, norm = _head_forward(x, w)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.normalize(torch.tensor(x) @ wt, dim=1)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(_head_backward(dy, x, y, norm), wt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_head_loss_and_grad_matches_autograd(shared):
    rng = np.random.default_rng(1)
    B, G, d_in, d_out, tau = 6, 3, 10, 7, 0.05
    q = rng.standard_normal((B, d_in))
    c = rng.standard_normal((B * G, d_in))
    head = LinearHead(rng.standard_normal((d_in, d_out)),
                      None if shared else rng.standard_normal((d_in, d_out)))
    loss, grads = head.loss_and_grad(q, c, tau, group_size=G)

    wq = torch.tensor(head.weight, requires_grad=True)
    wc = wq if shared else torch.tensor(head.candidate_weight, requires_grad=True)
    yq = F.normalize(torch.tensor(q) @ wq, dim=1)
    yc = F.normalize(torch.tensor(c) @ wc, dim=1)
    ref = infonce(yq, yc, tau, np.arange(B) * G)
    ref.backward()
    expected = [wq.grad] if shared else [wq.grad, wc.grad]
    # the loss kernel works in float32: its scores / tau carry ~1e-6 relative error
    assert loss == pytest.approx(float(ref.detach()), rel=1e-5)
    assert len(grads) == len(expected)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e.numpy(), rtol=0, atol=1e-4 * float(e.abs().max()))


def test_lr_factor_values():
    assert [lr_factor(s, 10, 2, "linear") for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert [lr_factor(s, 10, 2, "cosine") for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(4, 10, 2, "cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(9, 10, 0, "linear") == pytest.approx(0.1)  # the last step is not spent at 0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_adamw_and_schedule_match_torch(schedule):
    rng = np.random.default_rng(2)
    total, warmup, lr, wd = 7, 2, 0.05, 0.1
    params = [rng.standard_normal((4, 3)), rng.standard_normal(5)]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = AdamW(params, lr=lr, weight_decay=wd)
    opt = torch.optim.AdamW(tparams, lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))
    for step in range(total):
        grads = [rng.standard_normal(p.shape) for p in params]
        ours.step(grads, lr=lr * lr_factor(step, total, warmup, schedule))
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g)
        opt.step()
        sched.step()
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=0, atol=1e-6, err_msg=f"step {step}")


def test_train_linear_head_is_adamw_on_loss_and_grad():
    """One full batch per epoch: the trainer equals a hand loop of loss_and_grad + AdamW + lr_factor."""
    rng = np.random.default_rng(3)
    q, c = rng.standard_normal((16, 6)), rng.standard_normal((32, 6))
    epochs, lr, warmup = 4, 0.02, 1
    head, losses = mp.training.train_linear_head(q, c, group_size=2, epochs=epochs, batch_size=16, lr=lr,
                                                 weight_decay=0.05, warmup=warmup, schedule="linear",
                                                 temperature=0.1)
    ref = LinearHead.init(6)
    opt = AdamW(ref.parameters, lr=lr, weight_decay=0.05)
    expected = []
    for step in range(epochs):
        loss, grads = ref.loss_and_grad(q, c, 0.1, group_size=2)
        expected.append(loss)
        opt.step(grads, lr=lr * lr_factor(step, epochs, warmup, "linear"))
    # the trainer shuffles rows within the batch: the same loss up to float32 summation order
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    np.testing.assert_allclose(head.weight, ref.weight, rtol=0, atol=1e-6)


def linear_task(n=768, d=24, G=2, seed=0):
    """Positives on the unit sphere; queries a fixed random linear map of them plus noise
    (so the raw query is far from its positive); one hard negative per query near its positive."""
    rng = np.random.default_rng(seed)
    p = unit(rng.standard_normal((n, d)))
    q = unit(p @ (rng.standard_normal((d, d)) / np.sqrt(d)) + 0.05 * rng.standard_normal((n, d)))
    hard = unit(p + 0.5 * rng.standard_normal((n, d)))
    c = np.stack([p, hard], 1).reshape(-1, d)
    return q.astype(np.float32), p.astype(np.float32), c.astype(np.float32)


def accuracy(head, q, p):
    scores = head.transform(q) @ head.transform(p, candidates=True).T
    return float(np.mean(scores.argmax(1) == np.arange(len(q))))


@pytest.mark.parametrize("shared, gain", [(False, 0.8), (True, 0.2)])
def test_train_linear_head_learns_linear_task(shared, gain):
    q, p, c = linear_task()
    train, test = slice(0, 512), slice(512, None)
    start = accuracy(LinearHead.init(q.shape[1], shared=shared), q[test], p[test])
    head, losses = mp.training.train_linear_head(q[train], c[:1024], group_size=2, shared=shared, epochs=12,
                                                 batch_size=64, lr=1e-2, warmup=10, temperature=0.05)
    end = accuracy(head, q[test], p[test])
    assert start < 0.05
    assert end > start + gain, (start, end)  # held-out queries; a shared head cannot undo the map fully
    assert losses[-8:].mean() < 0.5 * losses[:8].mean()
    assert head.shared == shared and head.transform(q[:3]).shape == (3, 24)


def test_train_linear_head_deterministic_and_reduces_dim():
    q, _, c = linear_task(n=200, d=16)
    kw = {"group_size": 2, "dim": 8, "epochs": 3, "batch_size": 32, "lr": 5e-3, "warmup": 2, "seed": 7}
    h1, l1 = mp.training.train_linear_head(q, c, **kw)
    h2, l2 = mp.training.train_linear_head(q, c, progress=True, **kw)
    assert np.array_equal(h1.weight, h2.weight) and np.array_equal(l1, l2)
    assert h1.weight.shape == (16, 8) and len(l1) == 3 * math.ceil(200 / 32)
    out = h1.transform(q)
    assert out.dtype == np.float32 and out.shape == (200, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-6)
    _, l3 = mp.training.train_linear_head(q, c, **{**kw, "seed": 8})
    assert not np.array_equal(l1, l3)
    start = LinearHead.init(16, 8, seed=1)  # training from a given head copies it
    h4, _ = mp.training.train_linear_head(q, c, head=start, **kw)
    assert np.array_equal(start.weight, LinearHead.init(16, 8, seed=1).weight)
    assert not np.array_equal(h4.weight, start.weight)


# --------------------------------------------------------------------------- example


def test_example_runs():
    spec = importlib.util.spec_from_file_location("train_mmret_tiny", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # smaller than the example's default 64 x 5 (0.3-1.5 s a step; far more on a loaded machine, see
    # docs/training.md "Threads") to keep the suite quick; a sub-batch that does not divide the batch
    losses = example.main(["--steps", "2", "--batch", "24", "--group", "3", "--sub-batch", "10"])
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert losses[1] < losses[0]  # one fixed batch: a step must fit it better


# --------------------------------------------------------------------------- errors


def test_grad_cache_errors():
    model = TwoTower()
    queries, candidates = make_batch(4, 2)
    step = mp.training.grad_cache_step
    with pytest.raises(ValueError, match="same length along dim 0"):
        step(model.query, model.candidate, {"image": queries["image"], "text": queries["text"][:3]},
             candidates, group_size=2)
    with pytest.raises(ValueError, match="same length along dim 0"):
        step(model.query, model.candidate, [queries["image"][:2], queries["text"]], candidates, group_size=2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="sub_batch"):
            step(model.query, model.candidate, queries, candidates, sub_batch=bad, group_size=2)
    with pytest.raises(ValueError, match="candidate_sub_batch"):
        step(model.query, model.candidate, queries, candidates, candidate_sub_batch=0, group_size=2)
    with pytest.raises(TypeError, match="query_inputs must be a tensor"):
        step(model.query, model.candidate, queries["image"].numpy(), candidates, group_size=2)
    with pytest.raises(TypeError, match="text must be a tensor"):
        step(model.query, model.candidate, {"image": queries["image"], "text": [1, 2, 3, 4]}, candidates)
    with pytest.raises(ValueError, match="is empty"):
        step(model.query, model.candidate, {}, candidates)
    with pytest.raises(TypeError, match="query_fn must return a tensor"):
        step(lambda image, text: (model.query(image, text),), model.candidate, queries, candidates,
             group_size=2)
    with pytest.raises(ValueError, match=r"candidate_fn must return a \(3, E\) tensor"):
        step(model.query, lambda x: model.candidate(x)[:-1], queries, candidates, sub_batch=3, group_size=2)
    with pytest.raises(TypeError, match="callable"):
        step(model.query, None, queries, candidates, group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        step(model.query, model.candidate, queries, candidates, group_size=3)


def test_linear_head_errors():
    rng = np.random.default_rng(0)
    q, c = rng.standard_normal((8, 4)), rng.standard_normal((16, 4))
    train = mp.training.train_linear_head
    with pytest.raises(ValueError, match="schedule"):
        train(q, c, schedule="step")
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, 0, "exponential")
    with pytest.raises(ValueError, match="whole number of groups"):
        train(q, c[:15])
    with pytest.raises(ValueError, match="group_size=3 needs 24"):
        train(q, c, group_size=3)
    with pytest.raises(ValueError, match="dimension"):
        train(q, c[:, :3])
    with pytest.raises(ValueError, match="2-D float"):
        train(q.astype(np.int64), c)
    with pytest.raises(ValueError, match="warmup"):
        train(q, c, warmup=-1)
    with pytest.raises(ValueError, match="epochs"):
        train(q, c, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        train(q, c, batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        train(q, c, temperature=0.0)
    with pytest.raises(ValueError, match="head takes dimension 5"):
        train(q, c, head=LinearHead.init(5))
    with pytest.raises(ValueError, match="head takes 4"):
        LinearHead.init(4).transform(rng.standard_normal((2, 3)))
    opt = AdamW([np.zeros(3)])
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.zeros(4)])
    with pytest.raises(ValueError, match="expected 1 gradients"):
        opt.step([])
    with pytest.raises(ValueError, match="lr"):
        AdamW([np.zeros(3)], lr=0)
