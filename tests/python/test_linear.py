"""gptcore.ops.linear against float64 PyTorch (F.linear, F.gelu(approximate="tanh"))."""

import pytest
import torch
import torch.nn.functional as F

import gptcore
from gptcore import _C
from gptcore.ops import linear, reference
from gptcore.ops._views import stream, view

ROWS = [1, 7, 1025]
SIZES = [(1, 1), (40, 1), (63, 17), (768, 3072)]  # (K, N); M or N of 1: the matrix-vector path
EPILOGUES = ["none", "bias", "bias_gelu", "bias_residual"]


def _inputs(M, K, N, dtype=torch.float32, device="cpu", seed=0, lead=None):
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, K) if lead else (M, K)
    x = torch.randn(shape, generator=g).to(device, dtype)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(device, dtype)
    b = (torch.randn(N, generator=g) * 0.5).to(device, dtype)
    r = torch.randn((*shape[:-1], N), generator=g).to(device, dtype)
    return x, w, b, r


def _kwargs(epilogue, b, r):
    return {
        "none": {},
        "bias": {"bias": b},
        "bias_gelu": {"bias": b, "activation": "gelu"},
        "bias_residual": {"bias": b, "residual": r},
    }[epilogue]


def _run(fn, x, w, epilogue, b, r, dy):
    kw = _kwargs(epilogue, b, r)
    y = fn(x, w, **kw)
    ins = [x, w, *(kw[k] for k in ("bias", "residual") if k in kw)]
    return y, torch.autograd.grad(y, ins, dy)


def _check(M, K, N, epilogue, lead=None):
    x, w, b, r = (t.requires_grad_() for t in _inputs(M, K, N, lead=lead))
    dy = torch.randn(r.shape, generator=torch.Generator().manual_seed(1))
    y, grads = _run(linear, x, w, epilogue, b, r, dy)
    ref = [t.detach().double().requires_grad_() for t in (x, w, b, r)]
    y_ref, ref_grads = _run(reference.linear, ref[0], ref[1], epilogue, ref[2], ref[3], dy.double())
    tol = 1e-5 * (1 + K**0.5 / 8)
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads):
        scale = 1 + want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("K,N", SIZES)
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_matches_float64(M, K, N, epilogue):
    _check(M, K, N, epilogue)


@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_leading_dimensions(epilogue):
    _check(None, 63, 17, epilogue, lead=(2, 5))


def test_gelu_without_bias_and_residual_without_bias():
    x, w, _, r = _inputs(7, 63, 17)
    want = F.gelu(F.linear(x.double(), w.double()), approximate="tanh")
    torch.testing.assert_close(linear(x, w, activation="gelu").double(), want, rtol=1e-5, atol=1e-5)
    want = F.linear(x.double(), w.double()) + r.double()
    torch.testing.assert_close(linear(x, w, residual=r).double(), want, rtol=1e-5, atol=1e-5)


def test_only_the_asked_gradients():
    x, w, b, _ = _inputs(7, 63, 17)
    w.requires_grad_()
    (dw,) = torch.autograd.grad(linear(x, w, b, "gelu").sum(), (w,))
    w_ref = w.detach().double().requires_grad_()
    y_ref = F.gelu(F.linear(x.double(), w_ref, b.double()), approximate="tanh")
    torch.testing.assert_close(dw.double(), torch.autograd.grad(y_ref.sum(), w_ref)[0], rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic():
    x, w, b, _ = _inputs(1025, 63, 17)
    dy = torch.randn(1025, 17)
    runs = []
    for _ in range(2):
        ins = [t.clone().requires_grad_() for t in (x, w, b)]
        runs.append(torch.autograd.grad(linear(*ins, activation="gelu"), ins, dy))
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)


def test_opcheck():
    x, w, b, r = _inputs(7, 63, 17)
    gelu = gptcore._C.ACTIVATION_GELU_TANH
    for args in [(x, w, None, None, 0, False), (x, w, b, None, gelu, True), (x, w, b, r, 0, False)]:
        torch.library.opcheck(torch.ops.gptcore.linear_fwd.default, args)
    _, pre = torch.ops.gptcore.linear_fwd(x, w, b, None, gelu, True)
    dy = torch.randn_like(r)
    for args in [(dy, x, w, pre, gelu, True, True, True), (dy, x, w, None, 0, False, True, False)]:
        torch.library.opcheck(torch.ops.gptcore.linear_bwd.default, args)


def test_torch_compile_forward_and_backward():
    x, w, b, r = _inputs(7, 64, 32)
    w2 = torch.randn(64, 32) / 8

    def mlp(x, w, b, w2, r):
        h = linear(x, w, b, activation="gelu")
        return linear(h, w2, residual=r).square().sum()

    compiled = torch.compile(mlp, backend="aot_eager", fullgraph=True)
    resid = torch.randn(7, 64)
    ins = [t.clone().requires_grad_() for t in (x, w, b, w2, resid)]
    ref = [t.clone().requires_grad_() for t in (x, w, b, w2, resid)]
    got, want = compiled(*ins), mlp(*ref)
    torch.testing.assert_close(got, want)
    for g, ww in zip(torch.autograd.grad(got, ins), torch.autograd.grad(want, ref)):
        torch.testing.assert_close(g, ww)


# Bad input: a clear error naming the argument, never a crash.


def test_rejects_wrong_dtype():
    x, w, b, _ = _inputs(4, 8, 3)
    with pytest.raises(gptcore.Error, match="'x' has dtype float64; the CPU kernels take float32"):
        linear(x.double(), w.double())
    with pytest.raises(gptcore.Error, match="'weight' has dtype bfloat16 but 'x' has float32"):
        linear(x, w.bfloat16())
    with pytest.raises(gptcore.Error, match="'bias' has dtype float64 but 'x' has float32"):
        linear(x, w, b.double())


def test_rejects_mismatched_shapes():
    x, w, b, r = _inputs(4, 8, 3)
    with pytest.raises(gptcore.Error, match=r"'weight' has shape \[3, 7\]; expected \[N, 8\]"):
        linear(x, w[:, :7].contiguous())
    with pytest.raises(gptcore.Error, match=r"'bias' has shape \[2\]; expected \[3\]"):
        linear(x, w, b[:2])
    with pytest.raises(gptcore.Error, match=r"'residual' has shape \[3, 3\]; expected \[4, 3\]"):
        linear(x, w, b, residual=r[:3])


def test_rejects_non_contiguous():
    x, w, _, _ = _inputs(8, 8, 3)
    with pytest.raises(gptcore.Error, match=r"'x' \(shape \[8, 8\]\) is not contiguous"):
        linear(x.t(), w)
    with pytest.raises(gptcore.Error, match=r"'weight' \(shape \[3, 4\]\) is not contiguous"):
        linear(x[:, :4].contiguous(), w[:, ::2])


def test_rejects_bad_activation_and_gelu_with_residual():
    x, w, b, r = _inputs(4, 8, 3)
    with pytest.raises(ValueError, match="activation must be None or 'gelu'.*got 'relu'"):
        linear(x, w, b, activation="relu")
    with pytest.raises(gptcore.Error, match="'residual' cannot be combined with a GELU activation"):
        linear(x, w, b, activation="gelu", residual=r)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [7, 1025])
@pytest.mark.parametrize("K,N", [(63, 17), (768, 3072)])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_cuda_within_twice_torch_error(dtype, M, K, N, epilogue):
    x, w, b, r = (t.requires_grad_() for t in _inputs(M, K, N, dtype, "cuda"))
    dy = torch.randn(r.shape, device="cuda", dtype=dtype)
    y, grads = _run(linear, x, w, epilogue, b, r, dy)
    y_pt, grads_pt = _run(reference.linear, x, w, epilogue, b, r, dy)
    ref = [t.detach().double().requires_grad_() for t in (x, w, b, r)]
    y_ref, grads_ref = _run(reference.linear, ref[0], ref[1], epilogue, ref[2], ref[3], dy.double())
    for got, pt, want in zip([y, *grads], [y_pt, *grads_pt], [y_ref, *grads_ref]):
        err, err_pt = (got.double() - want).abs().max(), (pt.double() - want).abs().max()
        assert err <= 2 * err_pt + 1e-5, (err, err_pt)


# The C API on CUDA with NaN-poisoned outputs (an element left unwritten shows), against float64,
# at the LM-head width 50257 (odd: no fused aux epilogue, the unfused path writes its product
# into pre_act and reads it back) and on views one element off their allocation.

REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}


def _rel_err(got, want):
    """||got - want|| / ||want||, with every element written (NaN poison fails it)."""
    assert torch.isfinite(got).all(), "an output element was not written (NaN poison survived)"
    return ((got.double() - want).norm() / want.norm()).item()


def _cuda_tensor(shape, dtype, offset, fill=None, seed=0, std=1.0):
    """A CUDA tensor `offset` elements into its allocation: random (std `std`) or filled with `fill`."""
    numel = torch.Size(shape).numel()
    if fill is None:
        g = torch.Generator(device="cuda").manual_seed(seed)
        buf = (torch.randn(numel + offset, generator=g, device="cuda") * std).to(dtype)
    else:
        buf = torch.full((numel + offset,), fill, dtype=dtype, device="cuda")
    return buf[offset:].view(shape)


def _c_linear(x, w, b, r, gelu, dy, offset):
    """gc_linear_fwd then gc_linear_bwd into NaN-poisoned outputs: y, pre_act, dx, dweight, dbias."""
    act = _C.ACTIVATION_GELU_TANH if gelu else _C.ACTIVATION_NONE
    M, N = x.shape[0], w.shape[0]
    y = _cuda_tensor((M, N), x.dtype, offset, float("nan"))
    pre = _cuda_tensor((M, N), x.dtype, offset, float("nan")) if gelu else None
    args = (view(x, "x"), view(w, "w"), view(b, "b"), view(r, "r"), view(y, "y"), view(pre, "pre"), act)
    ws = torch.empty(_C.linear_fwd_workspace_size(*args), dtype=torch.uint8, device="cuda")
    _C.linear_fwd(*args, ws.data_ptr(), ws.numel(), stream(x))
    dx, dw = (_cuda_tensor(t.shape, x.dtype, offset, float("nan")) for t in (x, w))
    db = _cuda_tensor((N,), x.dtype, offset, float("nan")) if b is not None else None
    args = (view(dy, "dy"), view(x, "x"), view(w, "w"), view(pre, "pre"), view(dx, "dx"), view(dw, "dw"),
            view(db, "db"), act)  # fmt: skip
    ws = torch.empty(_C.linear_bwd_workspace_size(*args), dtype=torch.uint8, device="cuda")
    _C.linear_bwd(*args, ws.data_ptr(), ws.numel(), stream(x))
    return y, pre, dx, dw, db


def _reference(x, w, b, r, gelu, dy):
    """float64 y, pre_act, dx, dweight, dbias from the same (rounded) inputs."""
    ins = [t.detach().double().requires_grad_() for t in (x, w)]
    bias = b.detach().double().requires_grad_() if b is not None else None
    pre = F.linear(ins[0], ins[1], bias)
    y = F.gelu(pre, approximate="tanh") if gelu else pre
    if r is not None:
        y = y + r.double()
    grads = torch.autograd.grad(y, [*ins, *([bias] if b is not None else [])], dy.double())
    return y.detach(), pre.detach(), *grads


def _check_c_linear(dtype, M, K, N, bias, residual, gelu, offset):
    x = _cuda_tensor((M, K), dtype, offset, seed=1)
    w = _cuda_tensor((N, K), dtype, offset, seed=2, std=K**-0.5)
    b = _cuda_tensor((N,), dtype, offset, seed=3) if bias else None
    r = _cuda_tensor((M, N), dtype, offset, seed=4) if residual else None
    dy = _cuda_tensor((M, N), dtype, offset, seed=5)
    got = _c_linear(x, w, b, r, gelu, dy, offset)
    want = _reference(x, w, b, r, gelu, dy)
    names = ["y", "pre_act", "dx", "dweight", "dbias"]
    want = [want[0], want[1] if gelu else None, *want[2:], *([] if bias else [None])]
    for name, g, ww in zip(names, got, want, strict=True):
        if ww is None:
            continue
        err = _rel_err(g, ww)
        assert err <= REL_TOL[dtype], (name, err)
    return got


CUDA_CASES = {  # (M, K, N, bias, residual, gelu)
    "lm_head_gelu_pre_act": (300, 768, 50257, True, False, True),
    "gelu_pre_act_fused_width": (300, 768, 3072, True, False, True),
    "gelu_without_bias": (300, 771, 1000, False, False, True),
    "bias_residual_odd_K": (300, 771, 50257, True, True, False),
    "bias_only": (257, 768, 50257, True, False, False),
    "residual_only": (257, 63, 17, False, True, False),
    "plain": (257, 771, 50257, False, False, False),
}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "one_element_off"])
@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_c_api_matches_float64_on_poisoned_outputs(case, offset, dtype):
    _check_c_linear(dtype, *CUDA_CASES[case], offset)


@pytest.mark.cuda
def test_cuda_lm_head_size_with_gelu_is_deterministic():
    """8192 x 50257 (the GPT-2 head over a 8-sequence batch), run twice: the second call reuses the
    cached plan and gives bitwise the same outputs."""
    first = _check_c_linear(torch.bfloat16, 8192, 768, 50257, True, False, True, 0)
    second = _check_c_linear(torch.bfloat16, 8192, 768, 50257, True, False, True, 0)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_one_shape_at_changing_alignments(dtype):
    """The plan cache keys on alignment: an offset view after an aligned one of the same shape
    (and back) must not reuse a plan that assumes more alignment than it has."""
    for offset in (0, 1, 2, 3, 4, 8, 0):
        _check_c_linear(dtype, 64, 768, 3072, True, False, True, offset)
        _check_c_linear(dtype, 64, 768, 3072, True, True, False, offset)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_module_path_on_an_offset_view(dtype):
    """gptcore.ops.linear (the custom op and its autograd) on x = buf[1:] with an odd K."""
    M, K, N = 33, 771, 50257
    x = _cuda_tensor((M, K), dtype, 1, seed=1).requires_grad_()
    w = _cuda_tensor((N, K), dtype, 0, seed=2, std=K**-0.5).requires_grad_()
    b = _cuda_tensor((N,), dtype, 0, seed=3).requires_grad_()
    dy = _cuda_tensor((M, N), dtype, 0, seed=5)
    y = linear(x, w, b, activation="gelu")
    grads = torch.autograd.grad(y, (x, w, b), dy)
    want = _reference(x, w, b, None, True, dy)
    for got, ref in zip([y, *grads], [want[0], *want[2:]], strict=True):
        assert _rel_err(got, ref) <= REL_TOL[dtype]
