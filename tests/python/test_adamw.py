"""gptcore.optim.AdamW against torch.optim.AdamW (fp32 reference), loss scaling, checkpoints."""

import copy
import io

import pytest
import torch

import gptcore
from gptcore.optim import AdamW

SHAPES = [(1,), (7,), (1025,), (33, 17)]


def make_params(dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype).requires_grad_() for s in SHAPES]


def make_grads(step, device="cpu", dtype=torch.float32):
    gen = torch.Generator().manual_seed(1000 + step)
    return [(torch.randn(s, generator=gen) * (1 + i)).to(device=device, dtype=dtype) for i, s in enumerate(SHAPES)]


def float32_copies(params):
    """Separate float32 leaves (p.float() alone would alias a float32 param)."""
    return [p.detach().to(torch.float32, copy=True).requires_grad_() for p in params]


def set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.clone()


def groups(params, split):
    """One group with the constructor's defaults, or two groups with their own lr / weight_decay."""
    if not split:
        return params
    return [{"params": params[:2], "lr": 1e-2, "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]


def cuda_available():
    return torch.cuda.is_available() and gptcore._C.build_info()["cuda"]


@pytest.mark.parametrize("split", [False, True], ids=["one_group", "two_groups"])
@pytest.mark.parametrize("kwargs", [{}, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0}])
def test_matches_torch_fp32(split, kwargs):
    ours, ref = make_params(), make_params()
    opt = AdamW(groups(ours, split), **kwargs)
    ref_opt = torch.optim.AdamW(groups(ref, split), foreach=False, **kwargs)
    for step in range(20):
        grads = make_grads(step)
        set_grads(ours, grads)
        set_grads(ref, grads)
        opt.step()
        ref_opt.step()
    for p, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref_opt.state[r]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
        assert opt.state[p]["step"].item() == ref_opt.state[r]["step"].item() == 20


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_params_keep_float32_masters(dtype):
    ours = make_params(dtype)
    ref = float32_copies(ours)  # torch runs on float32 copies
    opt = AdamW(groups(ours, True))
    ref_opt = torch.optim.AdamW(groups(ref, True), foreach=False)
    for step in range(20):
        grads = make_grads(step, dtype=dtype)
        set_grads(ours, grads)
        set_grads(ref, [g.float() for g in grads])
        opt.step()
        ref_opt.step()
    for p, r in zip(ours, ref, strict=True):
        master = opt.state[p]["master"]
        assert master.dtype == opt.state[p]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(master, r, rtol=1e-5, atol=1e-6)
        assert torch.equal(p, master.to(dtype))  # the param is the master rounded


@pytest.mark.parametrize("scale", [1024.0, torch.tensor(65536.0)], ids=["float", "tensor"])
def test_grad_scale_unscales(scale):
    plain, scaled = make_params(), make_params()
    opt_plain, opt_scaled = AdamW(plain, lr=1e-2), AdamW(scaled, lr=1e-2)
    for step in range(5):
        grads = make_grads(step)
        set_grads(plain, grads)
        set_grads(scaled, [g * float(scale) for g in grads])
        opt_plain.step()
        opt_scaled.step(grad_scale=scale)
        assert opt_scaled.found_inf is False
    for p, s in zip(plain, scaled, strict=True):  # scaling by a power of two is exact
        assert torch.equal(p, s)
        assert torch.equal(opt_plain.state[p]["exp_avg"], opt_scaled.state[s]["exp_avg"])  # params alone: scale-free


def snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy([dict(opt.state[p]) for p in params])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", [0, 2, 3])
def test_nonfinite_grad_skips_the_whole_step(bad, where, dtype):
    ours = make_params(dtype)
    ref = float32_copies(ours)
    opt = AdamW(groups(ours, True))
    ref_opt = torch.optim.AdamW(groups(ref, True), foreach=False)
    for step in range(3):
        grads = make_grads(step, dtype=dtype)
        set_grads(ours, [g * 2 for g in grads])  # scaled by 2 (exact), unscaled by the step
        set_grads(ref, [g.float() for g in grads])
        opt.step(grad_scale=2.0)
        ref_opt.step()
        assert opt.found_inf is False

    before_params, before_state = snapshot(ours, opt)
    grads = make_grads(99, dtype=dtype)
    grads[where].view(-1)[-1] = bad
    set_grads(ours, grads)
    opt.step(grad_scale=2.0)
    assert opt.found_inf is True
    for p, b, state, b_state in zip(ours, before_params, [opt.state[p] for p in ours], before_state, strict=True):
        assert torch.equal(p, b)
        for key, value in b_state.items():
            assert torch.equal(state[key], value), key  # moments, masters and step counts unchanged

    grads = make_grads(3, dtype=dtype)  # the next finite step proceeds as step 4
    set_grads(ours, grads)
    set_grads(ref, [g.float() for g in grads])
    opt.step()
    ref_opt.step()
    assert opt.found_inf is False
    for p, r in zip(ours, ref, strict=True):
        assert opt.state[p]["step"].item() == 4
        torch.testing.assert_close(opt.state[p].get("master", p), r, rtol=1e-5, atol=1e-6)


def test_params_without_grad_are_skipped():
    ours, ref = make_params(), make_params()
    opt, ref_opt = AdamW(groups(ours, True)), torch.optim.AdamW(groups(ref, True), foreach=False)
    untouched = ours[1].detach().clone()
    for step in range(6):
        grads = make_grads(step)
        if step < 3:
            grads[1] = None  # param 1 has no grad for three steps, then joins with its own step count
        set_grads(ours, grads)
        set_grads(ref, grads)
        opt.step()
        ref_opt.step()
        if step < 3:
            assert torch.equal(ours[1], untouched) and len(opt.state[ours[1]]) == 0
    assert opt.state[ours[1]]["step"].item() == 3 and opt.state[ours[0]]["step"].item() == 6
    for p, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip(dtype):
    straight = make_params(dtype)
    opt = AdamW(groups(straight, True))
    for step in range(5):
        set_grads(straight, make_grads(step, dtype=dtype))
        opt.step()

    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed = [p.detach().clone().requires_grad_() for p in straight]
    opt_resumed = AdamW(groups(resumed, True))
    opt_resumed.load_state_dict(torch.load(buffer))
    for p in resumed:
        state = opt_resumed.state[p]
        assert state["exp_avg"].dtype == torch.float32
        assert dtype == torch.float32 or state["master"].dtype == torch.float32

    for step in range(5, 10):
        grads = make_grads(step, dtype=dtype)
        set_grads(straight, grads)
        set_grads(resumed, grads)
        opt.step()
        opt_resumed.step()
    for p, r in zip(straight, resumed, strict=True):
        assert torch.equal(p, r)
        assert opt_resumed.state[r]["step"].item() == 10
        if dtype != torch.float32:
            assert torch.equal(opt.state[p]["master"], opt_resumed.state[r]["master"])
    assert opt_resumed.param_groups[0]["lr"] == 1e-2 and opt_resumed.param_groups[1]["weight_decay"] == 0.0


def test_bad_input_is_reported_clearly():
    with pytest.raises(TypeError, match="float64"):
        AdamW([torch.zeros(3, dtype=torch.float64, requires_grad=True)])
    with pytest.raises(ValueError, match="amsgrad"):
        AdamW(make_params(), amsgrad=True)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        AdamW(make_params(), lr=-1.0)
    with pytest.raises(ValueError, match="Invalid betas"):
        AdamW(make_params(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="share 'betas'"):
        AdamW([{"params": make_params()[:2]}, {"params": make_params()[2:], "betas": (0.8, 0.9)}])
    opt = AdamW(make_params())
    with pytest.raises(TypeError, match="float64"):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.float64)]})
    assert len(opt.param_groups) == 1  # the rejected group was not kept
    params = make_params()
    opt = AdamW(params)
    set_grads(params, make_grads(0))
    with pytest.raises(gptcore.Error, match="inv_grad_scale must be finite and > 0"):
        opt.step(grad_scale=float("inf"))  # the C API's own check, surfaced as gptcore.Error


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device and a CUDA build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_torch(dtype):
    ours = make_params(dtype, "cuda")
    ref = float32_copies(ours)
    opt = AdamW(groups(ours, True))
    ref_opt = torch.optim.AdamW(groups(ref, True), foreach=False)
    for step in range(20):
        grads = make_grads(step, "cuda", dtype)
        set_grads(ours, [g * 8 for g in grads])
        set_grads(ref, [g.float() for g in grads])
        opt.step(grad_scale=8.0)
        ref_opt.step()
        assert opt.found_inf is False
    for p, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(opt.state[p].get("master", p), r, rtol=1e-5, atol=1e-6)
        if dtype != torch.float32:
            assert torch.equal(p, opt.state[p]["master"].to(dtype))
    before = [p.detach().clone() for p in ours]
    grads = make_grads(20, "cuda", dtype)
    grads[2][7] = float("nan")
    set_grads(ours, grads)
    opt.step(grad_scale=8.0)
    assert opt.found_inf is True
    assert all(torch.equal(p, b) for p, b in zip(ours, before, strict=True))


# The C API directly: many tensors (more than one launch's batch holds), one spanning several
# batches, bfloat16 params with float32 masters beside float32 params, mixed grad dtypes, and
# tensors one element off their allocation (the kernels' scalar path), against float64.

BETAS, EPS = (0.9, 0.95), 1e-8


def _offset(t, offset):
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    return buf[offset:].view(t.shape).copy_(t)


def _c_tensors(device, big):
    """(param, grad, master, exp_avg, exp_avg_sq, lr, weight_decay) per tensor, as the C API takes them."""
    g = torch.Generator(device=device).manual_seed(0)
    sizes = [1, 3, 4, 7, 8, 33, 1025, 65535, 65536, 65537, 100_003] * 3 + ([21_000_001] if big else [])
    tensors = []
    for i, n in enumerate(sizes):
        half = i % 2 == 0
        offset = i % 3  # 0, 1, 2 elements off: aligned and unaligned tensors side by side
        master = torch.randn(n, generator=g, device=device)
        param = _offset(master.to(torch.bfloat16) if half else master, offset)
        master = _offset(param.float(), offset) if half else None  # the master starts as the param's value
        grad_dtype = [torch.float32, torch.bfloat16, torch.float16][i % 3]
        grad = _offset((torch.randn(n, generator=g, device=device) * (1 + i % 4)).to(grad_dtype), offset)
        exp_avg = _offset(torch.randn(n, generator=g, device=device) * 0.1, offset)
        exp_avg_sq = _offset(torch.rand(n, generator=g, device=device) * 0.01, offset)
        tensors.append((param, grad, master, exp_avg, exp_avg_sq, 1e-2 * (1 + i % 2), 0.1 * (i % 2)))
    return tensors


def _c_step(tensors, device, step, found_inf=None, inv_grad_scale=1.0):
    codes = {torch.float32: gptcore._C.dtype.float32, torch.float16: gptcore._C.dtype.float16,
             torch.bfloat16: gptcore._C.dtype.bfloat16}  # fmt: skip
    entries = [
        (
            p.data_ptr(),
            g.data_ptr(),
            0 if m is None else m.data_ptr(),
            ea.data_ptr(),
            eas.data_ptr(),
            p.numel(),
            codes[p.dtype],
            codes[g.dtype],
            lr,
            wd,
            step,
        )
        for p, g, m, ea, eas, lr, wd in tensors
    ]
    stream = torch.cuda.current_stream().cuda_stream if device == "cuda" else 0
    device_type = gptcore._C.CUDA if device == "cuda" else gptcore._C.CPU
    gptcore._C.adamw_step(entries, device_type, 0, *BETAS, EPS, inv_grad_scale,
                          0 if found_inf is None else found_inf.data_ptr(), stream)  # fmt: skip


def _float64_step(tensors, step):
    """The expected (master or param, exp_avg, exp_avg_sq) after one step, in float64."""
    b1, b2 = BETAS
    out = []
    for p, g, m, ea, eas, lr, wd in tensors:
        w, g = (m if m is not None else p).double(), g.double()
        ea, eas = b1 * ea.double() + (1 - b1) * g, b2 * eas.double() + (1 - b2) * g * g
        w = w * (1 - lr * wd) - lr / (1 - b1**step) * ea / (eas.sqrt() / (1 - b2**step) ** 0.5 + EPS)
        out.append((w, ea, eas))
    return out


def _snapshot(tensors):
    return [[t.clone() for t in entry[:5] if t is not None] for entry in tensors]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_c_api_many_tensors_mixed_dtypes_and_alignments(device):
    if device == "cuda" and not cuda_available():
        pytest.skip("needs a CUDA device and a CUDA build")
    tensors = _c_tensors(device, big=device == "cuda")
    for step in (1, 2):
        want = _float64_step(tensors, step)
        _c_step(tensors, device, step)
        for (p, _, m, ea, eas, _, _), (w, ea_want, eas_want) in zip(tensors, want, strict=True):
            torch.testing.assert_close(ea.double(), ea_want, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(eas.double(), eas_want, rtol=1e-5, atol=1e-9)
            torch.testing.assert_close((m if m is not None else p).double(), w, rtol=1e-5, atol=1e-6)
            if m is not None:
                assert torch.equal(p, m.to(p.dtype))  # the param is its master rounded


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("bad", ["inf_in_the_last_tensor", "nan_in_a_bf16_grad", "flag_already_set"])
def test_c_api_found_inf_leaves_every_tensor_untouched(device, bad):
    if device == "cuda" and not cuda_available():
        pytest.skip("needs a CUDA device and a CUDA build")
    tensors = _c_tensors(device, big=device == "cuda")
    found_inf = torch.zeros(1, dtype=torch.int32, device=device)
    if bad == "inf_in_the_last_tensor":
        tensors[-1][1].view(-1)[-1] = float("inf")
    elif bad == "nan_in_a_bf16_grad":
        tensors[4][1].view(-1)[3] = float("nan")
        assert tensors[4][1].dtype == torch.bfloat16
    else:  # an earlier check (another call's, or the caller's) set the flag: the step is skipped
        found_inf.fill_(1)
    before = _snapshot(tensors)
    _c_step(tensors, device, 1, found_inf, inv_grad_scale=0.5)
    assert found_inf.item() == 1
    for got, want in zip(_snapshot(tensors), before, strict=True):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
    if bad != "flag_already_set":
        return
    found_inf.zero_()  # the same finite grads with the flag clear: the step runs
    _c_step(tensors, device, 1, found_inf, inv_grad_scale=0.5)
    assert found_inf.item() == 0
    assert not torch.equal(tensors[0][0], before[0][0])
