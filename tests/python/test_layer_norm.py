"""gptcore.ops.layer_norm / fused_add_layer_norm against float64 PyTorch references."""

import pytest
import torch
import torch.nn.functional as F

import gptcore
from gptcore import _C
from gptcore.ops import fused_add_layer_norm, layer_norm
from gptcore.ops._views import view

ROWS = [1, 7, 1025]
CHANNELS = [1, 63, 768, 1600]


def _inputs(rows, C, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, C, generator=g) * 2 + 0.5).to(device, dtype)
    w = (torch.randn(C, generator=g) * 0.2 + 1).to(device, dtype)
    b = (torch.randn(C, generator=g) * 0.1).to(device, dtype)
    return x, w, b


def _grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    return torch.autograd.grad(out, inputs, dy), dy


def _close(got, want, tol):
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("C", CHANNELS)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_float64(rows, C, bias):
    x, w, b = _inputs(rows, C)
    b = b if bias else None
    ins = [t.requires_grad_() for t in (x, w, b) if t is not None]
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    y = layer_norm(x, w, b)
    y_ref = F.layer_norm(ref_ins[0], (C,), ref_ins[1], ref_ins[2] if bias else None, 1e-5)
    _close(y, y_ref, 1e-5)
    grads, dy = _grads(y, ins)
    ref_grads = torch.autograd.grad(y_ref, ref_ins, dy.double())
    for got, want in zip(grads, ref_grads):
        _close(got, want, 2e-4 if rows == 1025 else 2e-5)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("C", [1, 63, 1600])
def test_fused_add_layer_norm_matches_float64(rows, C):
    x, w, b = _inputs(rows, C)
    r = _inputs(rows, C, seed=5)[0]
    ins = [t.requires_grad_() for t in (x, r, w, b)]
    ref = [t.detach().double().requires_grad_() for t in ins]
    total, y = fused_add_layer_norm(*ins)
    total_ref = ref[0] + ref[1]
    y_ref = F.layer_norm(total_ref, (C,), ref[2], ref[3], 1e-5)
    _close(total, total_ref, 1e-6)
    _close(y, y_ref, 1e-5)
    # Both outputs feed the loss, as in a pre-LN block (the sum continues the residual stream).
    g = torch.Generator().manual_seed(3)
    dy, dsum = (torch.randn(rows, C, generator=g) for _ in range(2))
    grads = torch.autograd.grad((y * dy).sum() + (total * dsum).sum(), ins)
    ref_grads = torch.autograd.grad((y_ref * dy.double()).sum() + (total_ref * dsum.double()).sum(), ref)
    for got, want in zip(grads, ref_grads):
        _close(got, want, 2e-4 if rows == 1025 else 2e-5)


def test_leading_dimensions_and_eps():
    x = torch.randn(2, 3, 5, 48)
    w, b = torch.randn(48), torch.randn(48)
    want = F.layer_norm(x.double(), (48,), w.double(), b.double(), 1e-2)
    _close(layer_norm(x, w, b, eps=1e-2), want, 1e-5)


def test_backward_is_deterministic():
    x, w, b = _inputs(1025, 768)
    dy = torch.randn_like(x)
    runs = []
    for _ in range(2):
        ins = [t.clone().requires_grad_() for t in (x, w, b)]
        runs.append(torch.autograd.grad(layer_norm(*ins), ins, dy))
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)


def test_opcheck():
    x, w, b = _inputs(7, 63)
    r = torch.randn_like(x)
    for args in [(x, None, w, b, 1e-5), (x, r, w, b, 1e-5), (x, None, w, None, 1e-5)]:
        torch.library.opcheck(torch.ops.gptcore.layer_norm_fwd.default, args)
    y, _, mean, rstd = torch.ops.gptcore.layer_norm_fwd(x, None, w, b, 1e-5)
    torch.library.opcheck(torch.ops.gptcore.layer_norm_bwd.default, (torch.randn_like(y), x, w, mean, rstd, None))
    torch.library.opcheck(torch.ops.gptcore.layer_norm_bwd.default, (torch.randn_like(y), x, w, mean, rstd, r))


def test_torch_compile_forward_and_backward():
    x, w, b = _inputs(7, 64)

    def block(x, residual, w):
        total, h = fused_add_layer_norm(x, residual, w, b)
        return (layer_norm(h * 2, w, b) + total).square().sum()

    r = torch.randn_like(x)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    ins = [t.clone().requires_grad_() for t in (x, r, w)]
    ref = [t.clone().requires_grad_() for t in (x, r, w)]
    got, want = compiled(*ins), block(*ref)
    torch.testing.assert_close(got, want)
    for g, ww in zip(torch.autograd.grad(got, ins), torch.autograd.grad(want, ref)):
        torch.testing.assert_close(g, ww)


# Bad input: a clear error naming the argument, never a crash.


def test_rejects_wrong_dtype():
    x, w, b = _inputs(4, 8)
    with pytest.raises(gptcore.Error, match="'x' has dtype float64; the CPU kernels take float32"):
        layer_norm(x.double(), w.double(), b.double())
    with pytest.raises(gptcore.Error, match="'weight' has dtype bfloat16 but 'x' has float32"):
        layer_norm(x, w.bfloat16(), b)
    with pytest.raises(TypeError, match="'x' has dtype torch.complex64"):
        layer_norm(x.to(torch.complex64), w, b)


def test_rejects_mismatched_shapes():
    x, w, b = _inputs(4, 8)
    with pytest.raises(gptcore.Error, match=r"'weight' has shape \[7\]; expected \[8\]"):
        layer_norm(x, w[:7], b)
    with pytest.raises(gptcore.Error, match=r"'bias' has shape \[7\] but 'weight' has shape \[8\]"):
        layer_norm(x, w, b[:7])
    with pytest.raises(gptcore.Error, match=r"'residual' has shape \[3, 8\] but 'x' has shape \[4, 8\]"):
        fused_add_layer_norm(x, x[:3].clone(), w, b)


def test_rejects_non_contiguous():
    x, w, b = _inputs(8, 16)
    with pytest.raises(gptcore.Error, match=r"'x' \(shape \[16, 8\]\) is not contiguous"):
        layer_norm(x.t(), w[:8], b[:8])


def test_cuda_view_without_a_usable_device_is_a_clear_error():
    x, w, b = (t.contiguous() for t in _inputs(2, 4))
    views = {
        name: _C.Tensor(t.data_ptr(), _C.dtype.float32, _C.CUDA, 0, list(t.shape), list(t.stride()))
        for name, t in [("x", x), ("w", w), ("b", b)]
    }
    mean = _C.Tensor(0, _C.dtype.float32, _C.CPU, 0, [2], [1])
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    message = "built without CUDA" if not _C.build_info()["cuda"] else "0 CUDA device"
    with pytest.raises(gptcore.Error, match=f"'x' is .*{message}"):
        _C.layer_norm_fwd(views["x"], None, views["w"], views["b"], views["x"], None, mean, mean, 1e-5, 0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,C", [(1, 1), (7, 63), (1025, 768), (33, 1600)])
def test_cuda_matches_float64_within_torch_error(dtype, rows, C):
    x, w, b = _inputs(rows, C, dtype, "cuda")
    r = _inputs(rows, C, dtype, "cuda", seed=9)[0]
    ins = [t.requires_grad_() for t in (x, r, w, b)]
    total, y = fused_add_layer_norm(*ins)
    ref = [t.detach().double().requires_grad_() for t in ins]
    total_ref = ref[0] + ref[1]
    # The rounded sum's value with an unrounded gradient: a cast in the graph would round the
    # reference dx to `dtype` too, which PyTorch's dx then matches to the bit and ours by an ulp.
    rounded = total_ref + (total_ref.to(dtype).double() - total_ref).detach()
    y_ref = F.layer_norm(rounded, (C,), ref[2], ref[3], 1e-5)
    # PyTorch's own error at this dtype, from the same rounded sum.
    lo = [t.detach().clone().requires_grad_() for t in ins]
    total_pt = lo[0] + lo[1]
    y_pt = F.layer_norm(total_pt, (C,), lo[2], lo[3], 1e-5)
    dy = torch.randn_like(y)
    err = (y.double() - y_ref).abs().max()
    err_pt = (y_pt.double() - y_ref).abs().max()
    assert err <= 2 * err_pt + 1e-6
    got = torch.autograd.grad(y, ins, dy)
    pt = torch.autograd.grad(y_pt, lo, dy)
    want = torch.autograd.grad(y_ref, ref, dy.double())
    for g, p, ww in zip(got, pt, want):
        assert (g.double() - ww).abs().max() <= 2 * (p.double() - ww).abs().max() + 1e-5


@pytest.mark.cuda
def test_cuda_graph_capture_replays_forward_and_backward():
    x, w, b = (t.requires_grad_() for t in _inputs(64, 768, torch.bfloat16, "cuda"))
    dy = torch.randn_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph, as capture requires
        torch.autograd.grad(layer_norm(x, w, b), (x, w, b), dy)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer_norm(x, w, b)
        dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    graph.replay()
    want = F.layer_norm(x.detach().float(), (768,), w.detach().float(), b.detach().float())
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)


# The C API on CUDA with NaN-poisoned outputs: C = 771 (no 16-byte packs: the scalar path), and
# C = 768 both aligned (packs) and one element off its allocation (scalars again).

REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _nan_like(t, offset=0):
    buf = torch.full((t.numel() + offset,), float("nan"), dtype=t.dtype, device=t.device)
    return buf[offset:].view(t.shape)


def _c_layer_norm(x, r, w, b, dy, dsum, offset):
    """gc_layer_norm_fwd then _bwd into NaN-poisoned outputs: y, sum, mean, rstd, dx, dweight, dbias."""
    rows = x.shape[0]
    y, total = _nan_like(x, offset), _nan_like(x, offset) if r is not None else None
    mean, rstd = (torch.full((rows,), float("nan"), device="cuda") for _ in range(2))
    s = torch.cuda.current_stream().cuda_stream
    _C.layer_norm_fwd(view(x, "x"), view(r, "r"), view(w, "w"), view(b, "b"), view(y, "y"), view(total, "sum"),
                      view(mean, "mean"), view(rstd, "rstd"), 1e-5, s)  # fmt: skip
    normalized = total if r is not None else x
    dx, dw, db = _nan_like(x, offset), _nan_like(w, offset), _nan_like(w, offset)
    args = (view(dy, "dy"), view(normalized, "x"), view(w, "w"), view(mean, "mean"), view(rstd, "rstd"),
            view(dsum, "dsum"), view(dx, "dx"), view(dw, "dw"), view(db, "db"))  # fmt: skip
    ws = torch.empty(_C.layer_norm_bwd_workspace_size(*args), dtype=torch.uint8, device="cuda")
    _C.layer_norm_bwd(*args, ws.data_ptr(), ws.numel(), s)
    return y, total, mean, rstd, dx, dw, db


def _offset_copy(t, offset):
    return _nan_like(t, offset).copy_(t)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("C,offset", [(771, 0), (771, 1), (768, 0), (768, 1)])
@pytest.mark.parametrize("fused_add", [False, True])
def test_cuda_c_api_matches_float64_on_poisoned_outputs(fused_add, C, offset, dtype):
    rows = 517
    x, w, b = (_offset_copy(t, offset) for t in _inputs(rows, C, dtype, "cuda"))
    r = _offset_copy(_inputs(rows, C, dtype, "cuda", seed=9)[0], offset) if fused_add else None
    dy = _offset_copy(_inputs(rows, C, dtype, "cuda", seed=3)[0], offset)
    dsum = _offset_copy(_inputs(rows, C, dtype, "cuda", seed=4)[0], offset) if fused_add else None
    y, total, mean, rstd, dx, dw, db = _c_layer_norm(x, r, w, b, dy, dsum, offset)

    # float64 from the same rounded inputs; the fused add normalizes the rounded sum, as documented.
    src = (x.double() + r.double()).to(dtype) if fused_add else x
    ref = [t.detach().double().requires_grad_() for t in (src, w, b)]
    y_ref = F.layer_norm(ref[0], (C,), ref[1], ref[2], 1e-5)
    dx_ref, dw_ref, db_ref = torch.autograd.grad(y_ref, ref, dy.double())
    if fused_add:
        dx_ref = dx_ref + dsum.double()
        assert torch.equal(total, src)
    var, mu = torch.var_mean(src.double(), dim=1, unbiased=False)
    torch.testing.assert_close(mean.double(), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd.double(), (var + 1e-5).rsqrt(), rtol=1e-4, atol=0)
    for name, got, want in [("y", y, y_ref), ("dx", dx, dx_ref), ("dweight", dw, dw_ref), ("dbias", db, db_ref)]:
        assert torch.isfinite(got).all(), f"{name}: an element was not written (NaN poison survived)"
        err = ((got.double() - want).norm() / want.norm()).item()
        assert err <= REL_TOL[dtype], (name, err)
