"""megapairs.loss against PyTorch autograd in float64 (cross_entropy on masked logits / tau)
and against central finite differences, for both candidate layouts, masking, the symmetric
term, a learnable temperature and extreme logits."""

import numpy as np
import pytest
import torch

import megapairs as mp

# fp32 GEMMs and fp32 outputs against a float64 reference: 1e-5 relative (the bound).
REL = 1e-5


def reference(q, c, tau, pos, ids=None, symmetric=False):
    """loss and gradients by torch autograd in float64."""
    tq = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    tc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(float(tau), dtype=torch.float64, requires_grad=True)
    pos_t = torch.as_tensor(pos)
    logits = tq @ tc.T / tt
    if ids is not None:
        ids_t = torch.as_tensor(ids)
        dup = (ids_t[None, :] == ids_t[pos_t][:, None]) & (torch.arange(len(c))[None, :] != pos_t[:, None])
        logits = logits.masked_fill(dup, -torch.inf)
    loss = torch.nn.functional.cross_entropy(logits, pos_t)
    if symmetric:
        back = tc[pos_t] @ tq.T / tt
        if ids is not None:
            same = (ids_t[pos_t][None, :] == ids_t[pos_t][:, None]) & ~torch.eye(len(q), dtype=torch.bool)
            back = back.masked_fill(same, -torch.inf)
        loss = (loss + torch.nn.functional.cross_entropy(back, torch.arange(len(q)))) / 2
    loss.backward()
    return loss.item(), tq.grad.numpy(), tc.grad.numpy(), tt.grad.item()


def rel(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30)


def batch(B, N, E, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, E)).astype(np.float32)
    c = rng.standard_normal((N, E)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True) / scale
    c /= np.linalg.norm(c, axis=1, keepdims=True) / scale
    return q, c


@pytest.mark.parametrize("B, G, E, tau", [(1, 5, 8, 0.02), (7, 5, 16, 0.02), (300, 5, 64, 0.05),
                                          (257, 3, 32, 0.02), (600, 1, 24, 0.1)])
def test_group_layout_matches_autograd(B, G, E, tau):
    """B = 1, B not a multiple of the 256-row block (257, 300, 600), G = 1 (in-batch only)."""
    q, c = batch(B, B * G, E, seed=B)
    out = mp.loss.infonce(q, c, tau, group_size=G, return_grad=True)
    loss, dq, dc, dtau = reference(q, c, tau, np.arange(B) * G)
    assert abs(out.loss - loss) <= REL * abs(loss)
    assert rel(out.dq, dq) <= REL and rel(out.dc, dc) <= REL
    assert abs(out.dtau - dtau) <= REL * abs(dtau)
    assert out.dq.shape == q.shape and out.dc.shape == c.shape and out.row_loss.shape == (B,)


def test_explicit_positives_and_ids_masking():
    rng = np.random.default_rng(1)
    B, N, E = 40, 90, 16
    q, c = batch(B, N, E, seed=1)
    pos = rng.integers(0, N, B)
    ids = rng.integers(0, 25, N)  # many duplicates of positives elsewhere in the batch
    out = mp.loss.infonce(q, c, 0.05, positives=pos, ids=ids, return_grad=True)
    loss, dq, dc, dtau = reference(q, c, 0.05, pos, ids)
    assert abs(out.loss - loss) <= REL * abs(loss)
    assert rel(out.dq, dq) <= REL and rel(out.dc, dc) <= REL and abs(out.dtau - dtau) <= REL * abs(dtau)
    plain = mp.loss.infonce(q, c, 0.05, positives=pos)
    assert plain.loss > out.loss  # masking removes terms from the denominators


@pytest.mark.parametrize("with_ids", [False, True])
def test_symmetric(with_ids):
    B, G, E = 30, 4, 16
    q, c = batch(B, B * G, E, seed=2)
    ids = np.random.default_rng(2).integers(0, 20, B * G) if with_ids else None
    out = mp.loss.infonce(q, c, 0.05, group_size=G, ids=ids, symmetric=True, return_grad=True)
    loss, dq, dc, dtau = reference(q, c, 0.05, np.arange(B) * G, ids, symmetric=True)
    assert abs(out.loss - loss) <= REL * abs(loss)
    assert rel(out.dq, dq) <= REL and rel(out.dc, dc) <= REL and abs(out.dtau - dtau) <= REL * abs(dtau)


def test_finite_differences():
    """Central differences of the loss in float64 arithmetic around float32 inputs, tiny shapes."""
    q, c = batch(3, 6, 4, seed=3)
    pos = np.array([0, 2, 4])
    out = mp.loss.infonce(q, c, 0.5, positives=pos, return_grad=True)
    h = 1e-2
    for arr, grad in ((q, out.dq), (c, out.dc)):
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += h
            minus[idx] -= h
            args = (plus, c) if arr is q else (q, plus)
            args_m = (minus, c) if arr is q else (q, minus)
            fd = (reference(*args, 0.5, pos)[0] - reference(*args_m, 0.5, pos)[0]) / (2 * h)
            assert abs(grad[idx] - fd) <= 1e-3 * max(1.0, abs(fd))
    fd_tau = (mp.loss.infonce(q, c, 0.5 + 1e-3, positives=pos).loss
              - mp.loss.infonce(q, c, 0.5 - 1e-3, positives=pos).loss) / 2e-3
    assert abs(out.dtau - fd_tau) <= 1e-2 * abs(fd_tau)


@pytest.mark.parametrize("case", ["tau=0.01", "identical vectors", "large norms"])
def test_extreme_logits(case):
    B, G, E = 64, 5, 32
    q, c = batch(B, B * G, E, seed=4, scale=30.0 if case == "large norms" else 1.0)
    if case == "identical vectors":
        c[:] = q[0]
        q[:] = q[0]
    tau = 0.01 if case != "large norms" else 0.02
    out = mp.loss.infonce(q, c, tau, group_size=G, return_grad=True)
    assert np.isfinite(out.loss) and np.isfinite(out.dq).all() and np.isfinite(out.dc).all()
    loss, dq, dc, _ = reference(q, c, tau, np.arange(B) * G)
    assert abs(out.loss - loss) <= 1e-4 * max(1.0, abs(loss))  # logits up to 9e4 / 1e2: fp32 scores
    if case == "identical vectors":  # the true dq is ~1e-17: a sum of terms of size 1/(tau B) that cancel
        assert np.abs(out.dq - dq).max() <= 1e-5 and np.abs(out.dc - dc).max() <= 1e-5
    else:
        assert rel(out.dq, dq) <= 1e-3 and rel(out.dc, dc) <= 1e-3


def test_torch_module_matches_autograd_and_learns_temperature():
    B, G, E = 50, 5, 32
    q, c = batch(B, B * G, E, seed=5)
    tq = torch.tensor(q, requires_grad=True)
    tc = torch.tensor(c, requires_grad=True)
    criterion = mp.loss.InfoNCELoss(0.05, learnable_temperature=True)
    loss = criterion(tq, tc, group_size=G)
    loss.backward()
    want, dq, dc, dtau = reference(q, c, 0.05, np.arange(B) * G)
    assert abs(loss.item() - want) <= REL * abs(want)
    assert rel(tq.grad.numpy(), dq) <= REL and rel(tc.grad.numpy(), dc) <= REL
    assert abs(criterion.temperature.grad.item() - dtau) <= REL * abs(dtau)
    fixed = mp.loss.InfoNCELoss(0.05)
    assert not any(p.requires_grad for p in fixed.parameters())
    with pytest.raises(ValueError, match="CPU float32"):
        fixed(tq.double(), tc.double(), group_size=G)


def test_bad_input():
    q, c = batch(4, 8, 3)
    with pytest.raises(ValueError, match="N = B \\* group_size"):
        mp.loss.infonce(q, c, group_size=3)
    with pytest.raises(ValueError, match="give group_size or positives"):
        mp.loss.infonce(q, c)
    with pytest.raises(ValueError, match=r"positives\[1\] = 8 is outside"):
        mp.loss.infonce(q, c, positives=[0, 8, 1, 2])
    with pytest.raises(ValueError, match="temperature must be a positive"):
        mp.loss.infonce(q, c, temperature=0.0, group_size=2)
    with pytest.raises(ValueError, match="dimension 3 but c has 2"):
        mp.loss.infonce(q, c[:, :2], group_size=2)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        mp.loss.infonce(bad, c, group_size=2)
    with pytest.raises(ValueError, match="ids must be 8 integers"):
        mp.loss.infonce(q, c, group_size=2, ids=np.zeros(7, np.int64))


def test_bf16_gemms():
    """precision='bf16': bf16 products, fp32 accumulation. The loss and dtau stay within 1e-3
    relative (measured 2e-5 - 6.4e-5); the gradients inherit the bf16 rounding (2^-9) of q and c
    through the scores / tau: measured 2.8e-3 - 3e-3 of the gradient's largest entry (9e-4 -
    1.2e-3 norm-wise), bounded here by 1e-2 — short of the 1e-3 the issue asks of bf16 tiles
    (see docs/numerics.md)."""
    for B, G, E, tau in ((256, 5, 512, 0.02), (300, 5, 64, 0.05)):
        q, c = batch(B, B * G, E, seed=6)
        out = mp.loss.infonce(q, c, tau, group_size=G, return_grad=True, precision="bf16")
        loss, dq, dc, dtau = reference(q, c, tau, np.arange(B) * G)
        assert abs(out.loss - loss) <= 1e-3 * abs(loss) and abs(out.dtau - dtau) <= 1e-3 * abs(dtau)
        assert rel(out.dq, dq) <= 1e-2 and rel(out.dc, dc) <= 1e-2
    with pytest.raises(ValueError, match="precision"):
        mp.loss.infonce(q, c, group_size=G, precision="fp16")
