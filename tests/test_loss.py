"""megapairs.loss against PyTorch autograd in float64 (cross_entropy on masked logits / tau)
and against central finite differences, for both candidate layouts, masking, the symmetric
term, a learnable temperature and extreme logits; InfoNCELoss's tiled PyTorch path (float64,
bfloat16, float16; CUDA when present) against the same reference."""

import numpy as np
import pytest
import torch

import megapairs as mp
from reference import infonce

# fp32 GEMMs and fp32 outputs against a float64 reference: 1e-5 relative (the bound).
REL = 1e-5


def reference(q, c, tau, pos, ids=None, symmetric=False):
    """loss and gradients by torch autograd in float64."""
    tq = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    tc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(float(tau), dtype=torch.float64, requires_grad=True)
    loss = infonce(tq, tc, tt, pos, ids, symmetric)
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
    relative (measured 2e-5 - 6.4e-5); the gradients inherit the bf16 rounding (up to 2^-8) of q and c
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


# ---- InfoNCELoss on the tiled PyTorch path (any device and dtype other than CPU float32) ----

# Unit roundoff u = 2^-p of each dtype (p significant bits): |fl(x) - x| <= u |x| (bf16 p = 8, fp16 p = 11).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def tolerances(dtype, symmetric, device):
    """(loss and dtau, gradients): max error over the reference's largest entry.

    float64: float64 arithmetic throughout, 1e-10. float32 (CUDA): fp32 GEMMs and softmax, the
    C kernel's 1e-5. bf16/fp16: the inputs are exact in fp32 and the reference is computed on
    those rounded inputs, so the loss and dtau (fp32 accumulation, returned in fp32) keep 1e-5;
    the gradients are returned in the input dtype, and each rounding to it costs at most u of
    the gradient's scale: 1 rounding of dq and dc; +2 with symmetric=True (each direction's
    gradient is rounded, then autograd adds the two in bf16); +2 where the device has
    mixed-precision GEMMs (CUDA), which round the softmax block p - onehot to bf16 before the
    dq/dc GEMMs: sum_j |p_ij - onehot_ij| <= 2, so that error is at most 2 u of the gradient's
    scale. Plus 1e-5 for the fp32 arithmetic."""
    if dtype == torch.float64:
        return 1e-10, 1e-10
    if dtype == torch.float32:
        return REL, REL
    from megapairs._loss_torch import _has_out_dtype_mm

    roundings = 1 + 2 * symmetric + 2 * _has_out_dtype_mm(torch.device(device), dtype)
    return REL, roundings * UNIT_ROUNDOFF[dtype] + REL


LAYOUTS = {  # name: B, N, E, tau, layout kwargs maker, symmetric, block (never a divisor of B)
    "group": (300, 1500, 32, 0.05, lambda rng, B, N: {"group_size": N // B}, False, 128),
    "positives+ids": (40, 90, 16, 0.05, lambda rng, B, N: {"positives": rng.integers(0, N, B),
                                                            "ids": rng.integers(0, 25, N)}, False, 16),
    "diagonal": (70, 70, 24, 0.1, lambda rng, B, N: {}, False, 32),
    "symmetric+ids": (30, 120, 16, 0.05, lambda rng, B, N: {"group_size": 4, "ids": rng.integers(0, 20, N)},
                      True, 7),
    "symmetric+repeated positives": (33, 50, 16, 0.05, lambda rng, B, N: {"positives": rng.integers(0, N, B)},
                                     True, 10),
}


def torch_path_case(layout, dtype, device, learnable=True, precision="fp32"):
    """The loss and gradients of InfoNCELoss on ``dtype`` tensors on ``device``, and the float64
    autograd reference on the same (rounded) values and the criterion's own temperature."""
    B, N, E, tau, make, symmetric, block = LAYOUTS[layout]
    rng = np.random.default_rng(B)
    q, c = batch(B, N, E, seed=B)
    kw = make(rng, B, N)
    criterion = mp.loss.InfoNCELoss(tau, learnable_temperature=learnable, block_size=block, precision=precision)
    if dtype == torch.float64:
        criterion = criterion.double()  # a float64 temperature: its gradient is not rounded to float32
    tq = torch.tensor(q).to(device, dtype).requires_grad_()
    tc = torch.tensor(c).to(device, dtype).requires_grad_()
    loss = criterion(tq, tc, symmetric=symmetric, **kw)
    loss.backward()
    pos = mp.loss._positives(B, N, kw.get("positives"), kw.get("group_size"))
    exact_q, exact_c = (t.detach().cpu().double().numpy() for t in (tq, tc))
    want = reference(exact_q, exact_c, criterion.temperature.item(), pos, kw.get("ids"), symmetric)
    return criterion, loss, tq, tc, want, symmetric


def on_devices(*dtypes, cuda_only=()):
    """(dtype, device) parameters: ``dtypes`` on the CPU and on CUDA, ``cuda_only`` on CUDA."""
    names = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16",
             torch.float16: "float16"}
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    return ([pytest.param(d, "cpu", id=f"cpu-{names[d]}") for d in dtypes]
            + [pytest.param(d, "cuda", id=f"cuda-{names[d]}", marks=cuda) for d in (*dtypes, *cuda_only)])


@pytest.mark.parametrize("dtype, device", on_devices(torch.float64, torch.bfloat16, torch.float16,
                                                     cuda_only=[torch.float32]))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_torch_path_matches_autograd(layout, dtype, device):
    """Every layout, ids masking, the symmetric term and a learnable temperature, with row
    blocks that do not divide B. (CPU float32 goes to the C kernel: tested above, and
    against this path below.)"""
    criterion, loss, tq, tc, (want, dq, dc, dtau), symmetric = torch_path_case(layout, dtype, device)
    tol_loss, tol_grad = tolerances(dtype, symmetric, device)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.device.type == device and tq.grad.dtype == dtype and tc.grad.dtype == dtype
    assert tq.grad.device.type == device and tc.grad.device.type == device
    assert abs(loss.item() - want) <= tol_loss * abs(want)
    assert rel(tq.grad.double().cpu().numpy(), dq) <= tol_grad
    assert rel(tc.grad.double().cpu().numpy(), dc) <= tol_grad
    assert abs(criterion.temperature.grad.item() - dtau) <= tol_loss * abs(dtau)


def test_c_kernel_and_torch_path_agree_on_cpu_float32():
    """The same float32 values through the C kernel (float32 tensors) and through the PyTorch
    path (cast to float64): within the C kernel's 1e-5, with every option on."""
    B, G, E = 90, 5, 32
    q, c = batch(B, B * G, E, seed=7)
    ids = np.random.default_rng(7).integers(0, 60, B * G)
    got = {}
    for dtype in (torch.float32, torch.float64):
        criterion = mp.loss.InfoNCELoss(0.05, learnable_temperature=True, block_size=40)
        tq = torch.tensor(q, dtype=dtype, requires_grad=True)
        tc = torch.tensor(c, dtype=dtype, requires_grad=True)
        loss = criterion(tq, tc, group_size=G, ids=torch.as_tensor(ids), symmetric=True)
        loss.backward()
        got[dtype] = (loss.item(), tq.grad.double().numpy(), tc.grad.double().numpy(),
                      criterion.temperature.grad.item())
    fused, tiled = got[torch.float32], got[torch.float64]
    assert abs(fused[0] - tiled[0]) <= REL * abs(tiled[0]) and abs(fused[3] - tiled[3]) <= REL * abs(tiled[3])
    assert rel(fused[1], tiled[1]) <= REL and rel(fused[2], tiled[2]) <= REL


def test_tiled_path_on_cpu_float32_matches_autograd():
    """tiled_infonce itself on CPU float32 (what bench_loss.py times): fp32 GEMMs and softmax."""
    from megapairs._loss_torch import tiled_infonce

    B, G, E, tau = 130, 5, 32, 0.05
    q, c = batch(B, B * G, E, seed=8)
    tq, tc = torch.tensor(q, requires_grad=True), torch.tensor(c, requires_grad=True)
    t = torch.tensor(tau, requires_grad=True)
    loss = tiled_infonce(tq, tc, t, np.arange(B) * G, block_size=64)
    loss.backward()
    want, dq, dc, dtau = reference(q, c, t.item(), np.arange(B) * G)
    assert loss.dtype == torch.float32 and abs(loss.item() - want) <= REL * abs(want)
    assert rel(tq.grad.numpy(), dq) <= REL and rel(tc.grad.numpy(), dc) <= REL
    assert abs(t.grad.item() - dtau) <= REL * abs(dtau)


def test_torch_path_bf16_precision_rounds_gemm_operands():
    """precision='bf16' on float64 tensors: the GEMM operands are q and c rounded to bf16, the
    rest stays float64, so the result is the float64 reference on the rounded values."""
    B, G, E = 50, 3, 16
    q, c = batch(B, B * G, E, seed=9)
    criterion = mp.loss.InfoNCELoss(0.05, learnable_temperature=True, block_size=16, precision="bf16").double()
    tq = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    tc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    loss = criterion(tq, tc, group_size=G)
    loss.backward()
    rq, rc = (torch.tensor(a).bfloat16().double().numpy() for a in (q, c))
    want, dq, dc, dtau = reference(rq, rc, criterion.temperature.item(), np.arange(B) * G)
    assert abs(loss.item() - want) <= 1e-10 * abs(want) and abs(criterion.temperature.grad.item() - dtau) <= 1e-10 * abs(dtau)
    assert rel(tq.grad.numpy(), dq) <= 1e-10 and rel(tc.grad.numpy(), dc) <= 1e-10
    full = reference(q.astype(np.float64), c.astype(np.float64), criterion.temperature.item(), np.arange(B) * G)
    assert abs(loss.item() - full[0]) > 1e-6 * abs(full[0])  # the rounding did happen


def test_tiled_path_saves_no_score_matrix():
    """Everything autograd keeps for the backward (the loss's own saves and those of the index
    op of the symmetric term) is O((B + N) E): never the B x N scores, which a plain
    cross_entropy on the full matrix does keep (checked too, so the hook is seen to work)."""
    B, G, E = 64, 5, 8
    N = B * G
    q, c = batch(B, N, E, seed=10)
    ids = np.random.default_rng(10).integers(0, 100, N)
    tq = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    tc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    criterion = mp.loss.InfoNCELoss(0.05, learnable_temperature=True, block_size=16).double()

    def saved_shapes(fn):
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = fn()
        loss.backward()
        return shapes

    shapes = saved_shapes(lambda: criterion(tq, tc, group_size=G, ids=ids, symmetric=True))
    assert (B,) in shapes and (N, E) in shapes  # the row log-sum-exp and c
    assert max(int(np.prod(s)) for s in shapes) <= N * E < B * N
    plain = saved_shapes(lambda: torch.nn.functional.cross_entropy(tq @ tc.T / 0.05, torch.arange(B) * G))
    assert (B, N) in plain


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tiled_path_memory_on_cuda():
    """Peak CUDA memory of forward + backward beyond the inputs and their gradients: a few
    block x N fp32 buffers, far below the B x N score matrix (1.3 GB here)."""
    B, G, E, block = 8192, 5, 64, 256
    N = B * G
    tq = torch.nn.functional.normalize(torch.randn(B, E, device="cuda"), dim=1).requires_grad_()
    tc = torch.nn.functional.normalize(torch.randn(N, E, device="cuda"), dim=1).requires_grad_()
    criterion = mp.loss.InfoNCELoss(0.02, learnable_temperature=True, block_size=block)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    criterion(tq, tc, group_size=G).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    grads = (B + N) * E * 4
    assert extra <= grads + 6 * block * N * 4, extra  # O(block x N): here 6 blocks = 252 MB
    assert extra < B * N * 4 / 4


def test_torch_path_under_autocast():
    """bf16 autocast: a linear layer hands bf16 embeddings to the loss, which runs the PyTorch
    path in fp32 accumulation; the gradients reach the layer's fp32 weights. A frozen
    candidate side (no grad for c) and a fixed temperature skip their GEMMs."""
    B, G, E = 24, 3, 16
    q, c = batch(B, B * G, E, seed=11)
    layer = torch.nn.Linear(E, E)
    criterion = mp.loss.InfoNCELoss(0.05, block_size=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = layer(torch.tensor(q))
        emb.retain_grad()
        cand = torch.tensor(c).bfloat16()
        loss = criterion(emb, cand, group_size=G)
    assert emb.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    want, dq, _, _ = reference(emb.detach().double().numpy(), cand.double().numpy(), 0.05, np.arange(B) * G)
    assert abs(loss.item() - want) <= REL * abs(want)
    assert rel(emb.grad.double().numpy(), dq) <= UNIT_ROUNDOFF[torch.bfloat16] + REL  # one rounding to bf16
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    assert torch.isfinite(layer.weight.grad).all() and cand.grad is None


def test_torch_path_bad_input():
    criterion = mp.loss.InfoNCELoss(0.05)
    q = torch.zeros(4, 3, dtype=torch.float64)
    c = torch.zeros(8, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got ndarray"):
        criterion(q.numpy(), c, group_size=2)
    with pytest.raises(ValueError, match=r"c must be 2-D \(N, E\), got shape \(8,\)"):
        criterion(q, c[:, 0], group_size=2)
    with pytest.raises(TypeError, match="q must be a floating-point tensor, got torch.int64"):
        criterion(q.long(), c, group_size=2)
    with pytest.raises(ValueError, match="one device: q is on cpu, c on meta"):
        criterion(q, c.to("meta"), group_size=2)
    with pytest.raises(TypeError, match="q is torch.float64, c is torch.bfloat16"):
        criterion(q, c.bfloat16(), group_size=2)
    with pytest.raises(ValueError, match="dimension 3 but c has 2"):
        criterion(q, c[:, :2], group_size=2)
    with pytest.raises(ValueError, match="must not be empty"):
        criterion(q[:0], c, group_size=2)
    with pytest.raises(ValueError, match="N = B \\* group_size"):
        criterion(q, c, group_size=3)
    with pytest.raises(ValueError, match=r"positives\[1\] = 8 is outside"):
        criterion(q, c, positives=torch.tensor([0, 8, 1, 2]))
    with pytest.raises(ValueError, match="ids must be 8 integers"):
        criterion(q, c, group_size=2, ids=torch.zeros(7, dtype=torch.int64))
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        mp.loss.InfoNCELoss(0.05, block_size=0)
    learnable = mp.loss.InfoNCELoss(0.05, learnable_temperature=True)
    with torch.no_grad():
        learnable.temperature.fill_(-1.0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        learnable(q, c, group_size=2)
