"""gptcore.ops.attention / attention_decode against float64 references: forward, backward,
dropout masks rebuilt from the same Philox (seed, offset), the KV-cache path, the custom ops
under opcheck and torch.compile, and the errors bad input raises."""

from __future__ import annotations

import pytest
import torch

import gptcore
from gptcore import _C
from gptcore.ops import attention, attention_decode, reference
from gptcore.ops.attention import attention_bwd, attention_decode_op, attention_fwd, draw_dropout_rng, dropout_uniforms

has_cuda = torch.cuda.is_available() and _C.build_info()["cuda"]
cuda = pytest.mark.skipif(not has_cuda, reason="needs a CUDA device and a CUDA build")


def make_qkv(B, H, T_q, T_k, D, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for T in (T_q, T_k, T_k))
    return [t.to(device, dtype).requires_grad_() for t in (q, k, v)]


def float64_grads(fn, ins, dout):
    ref = [t.detach().double().requires_grad_() for t in ins]
    out = fn(*ref)
    return out.detach(), torch.autograd.grad(out, ref, dout.double())


def close(got, want, tol):
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("T", [1, 17, 97, 1025])
@pytest.mark.parametrize("D", [32, 64, 80, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_float64(T, D, causal):
    B, H = (1, 1) if T == 1025 else (2, 3)
    ins = make_qkv(B, H, T, T, D)
    out = attention(*ins, causal=causal)
    dout = torch.randn_like(out)
    want, want_grads = float64_grads(lambda q, k, v: reference.attention(q, k, v, causal), ins, dout)
    close(out, want, 2e-5)
    for got, ref in zip(torch.autograd.grad(out, ins, dout), want_grads):
        close(got, ref, 1e-4)


@pytest.mark.parametrize("T_q,T_k,causal", [(17, 97, False), (97, 17, False), (17, 97, True), (64, 65, True)])
def test_different_query_and_key_lengths(T_q, T_k, causal):
    ins = make_qkv(2, 2, T_q, T_k, 64)
    out = attention(*ins, causal=causal, scale=0.3)
    dout = torch.randn_like(out)
    want, want_grads = float64_grads(lambda q, k, v: reference.attention(q, k, v, causal, scale=0.3), ins, dout)
    close(out, want, 2e-5)
    for got, ref in zip(torch.autograd.grad(out, ins, dout), want_grads):
        close(got, ref, 1e-4)


def test_causal_with_equal_lengths_is_sdpa_is_causal():
    q, k, v = make_qkv(1, 2, 33, 33, 32)
    want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    close(attention(q, k, v), want.detach(), 2e-5)


@pytest.mark.parametrize("T_q,T_k", [(17, 17), (97, 97), (40, 130)])
@pytest.mark.parametrize("causal", [True, False])
def test_dropout_matches_reference_with_the_same_mask(T_q, T_k, causal):
    p = 0.3
    ins = make_qkv(2, 2, T_q, T_k, 64)
    rng = torch.tensor([1234567, 89], dtype=torch.int64)
    out, _ = attention_fwd(*ins, causal, p, 0.125, rng)
    keep = dropout_uniforms(rng, (2, 2, T_q, T_k)) >= p
    assert 0.6 < keep.float().mean() < 0.8
    dout = torch.randn_like(out)

    def ref(q, k, v):
        return reference.attention_with_dropout(q, k, v, keep, p, causal, scale=0.125)

    want, want_grads = float64_grads(ref, ins, dout)
    close(out, want, 2e-5)
    for got, want_grad in zip(torch.autograd.grad(out, ins, dout), want_grads):
        close(got, want_grad, 1e-4)


def test_dropout_mask_is_visible_in_the_output():
    # q = 0 makes every probability 1 / T_k and v = identity picks out one key per column, so
    # out[i, j] = keep[i, j] / (T_k (1 - p)): the mask itself.
    T, p = 64, 0.25
    q = torch.zeros(1, 2, T, T)
    v = torch.eye(T).expand(1, 2, T, T).contiguous()
    rng = torch.tensor([7, 2**40 + 3], dtype=torch.int64)
    out, _ = attention_fwd(q, torch.randn(1, 2, T, T), v, False, p, 1.0, rng)
    keep = dropout_uniforms(rng, (1, 2, T, T)) >= p
    torch.testing.assert_close(out, keep.float() / (T * (1 - p)))


def test_dropout_follows_torch_manual_seed():
    ins = make_qkv(1, 2, 33, 33, 32)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(attention(*ins, dropout_p=0.5))
    assert torch.equal(*runs)
    torch.manual_seed(5)
    rng = draw_dropout_rng()
    keep = dropout_uniforms(rng, (1, 2, 33, 33)) >= 0.5
    want = reference.attention_with_dropout(*(t.detach().double() for t in ins), keep, 0.5)
    close(runs[0], want, 2e-5)
    assert not torch.equal(runs[0], attention(*ins, dropout_p=0.5))  # a fresh draw: another mask


def test_dropout_uniform_scalar_and_fill_agree():
    rng = torch.tensor([3, 11], dtype=torch.int64)
    u = dropout_uniforms(rng, (3, 7))
    assert all(u.view(-1)[n].item() == _C.dropout_uniform(3, 11, n) for n in range(21))
    assert u.min() >= 0 and u.max() < 1


@pytest.mark.parametrize("T_new", [1, 3])
@pytest.mark.parametrize("causal", [True, False])
def test_decode_equals_full_attention_on_the_cache_prefix(T_new, causal):
    B, H, T_max, D = 3, 2, 50, 64
    q, k_cache, v_cache = (t.detach() for t in make_qkv(B, H, T_new, T_max, D))
    lens = torch.tensor([5, 50, 23], dtype=torch.int32)
    out = attention_decode(q, k_cache, v_cache, lens, causal)
    for b, n in enumerate(lens.tolist()):
        args = (q[b : b + 1], k_cache[b : b + 1, :, :n].contiguous(), v_cache[b : b + 1, :, :n].contiguous())
        want = reference.attention(*(t.double() for t in args), causal)
        close(out[b : b + 1], want, 2e-5)
        torch.testing.assert_close(out[b : b + 1], attention(*args, causal=causal), rtol=1e-6, atol=1e-6)


def test_backward_is_deterministic():
    q, k, v = make_qkv(2, 2, 300, 300, 64)
    dout = torch.randn_like(q)
    runs = [torch.autograd.grad(attention(q, k, v), (q, k, v), dout) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_opcheck():
    q, k, v = (t.detach() for t in make_qkv(1, 2, 17, 23, 32))
    rng = torch.tensor([1, 2], dtype=torch.int64)
    for causal, p in [(True, 0.0), (False, 0.2)]:
        torch.library.opcheck(attention_fwd, (q.requires_grad_(), k, v, causal, p, 0.2, rng))
        out, lse = attention_fwd(q, k, v, causal, p, 0.2, rng)
        bwd_args = (torch.randn_like(out), q.detach(), k, v, out.detach(), lse, causal, p, 0.2, rng)
        torch.library.opcheck(attention_bwd, bwd_args)
    lens = torch.tensor([23], dtype=torch.int32)
    torch.library.opcheck(attention_decode_op, (q.detach()[:, :, :3].contiguous(), k, v, lens, True, 0.2))


def test_torch_compile_forward_and_backward():
    ins = make_qkv(1, 2, 40, 40, 64)

    def block(q, k, v):
        h = attention(q * 2, k, v)
        return attention(h, k, v, causal=False).square().sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    got = compiled(*ins)
    want = block(*ins)
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, ins), torch.autograd.grad(want, ins)):
        torch.testing.assert_close(g, w)


def test_torch_compile_with_dropout():
    ins = make_qkv(1, 2, 24, 24, 32)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, dropout_p=0.1), backend="aot_eager", fullgraph=True)
    out = compiled(*ins)
    assert out.shape == ins[0].shape and torch.isfinite(torch.autograd.grad(out.sum(), ins)[0]).all()


# Bad input: a clear error naming the argument.


def test_rejects_bad_shapes_and_dtypes():
    q, k, v = (t.detach() for t in make_qkv(2, 2, 8, 8, 32))
    cases = [
        ((q.double(), k.double(), v.double()), {}, "'q' has dtype float64; the CPU kernels take float32"),
        ((q.bfloat16(), k.bfloat16(), v.bfloat16()), {}, "'q' has dtype bfloat16; the CPU kernels take float32"),
        ((q, k.double(), v), {}, "'k' has dtype float64 but 'q' has float32"),
        ((q[0], k[0], v[0]), {}, r"'q' has shape \[2, 8, 32\]; expected \[B, H, T, D\]"),
        ((q[:1], k, v), {}, r"'k' has shape \[2, 2, 8, 32\]; expected \[1, 2, 8, 32\]"),
        ((q, k, v[:, :, :5]), {}, r"'v' has shape \[2, 2, 5, 32\] but 'k' has shape \[2, 2, 8, 32\]"),
        ((q, k[:, :, :5], v[:, :, :5]), {}, "causal attention needs T_q <= T_k, got T_q = 8 and T_k = 5"),
        ((q, k, v), {"dropout_p": 1.0}, r"dropout_p must be in \[0, 1\), got 1"),
    ]
    for D in (16, 36, 136):
        t = torch.randn(1, 1, 4, D)
        cases.append(((t, t, t), {}, f"'q' has head dim D = {D}; supported are 32..128 in steps of 8"))
    for args, kwargs, match in cases:
        with pytest.raises(gptcore.Error, match=match):
            attention(*args, **kwargs)


def test_rejects_bad_decode_input():
    q, k, v = (t.detach() for t in make_qkv(2, 2, 3, 10, 32))
    lens = torch.tensor([3, 10], dtype=torch.int32)
    attention_decode(q, k, v, lens)
    cases = [
        (q, lens.long(), "'cache_lens' has dtype int64; expected one of: int32"),
        (q, lens[:1], r"'cache_lens' has shape \[1\]; expected \[2\]"),
        (q, torch.tensor([2, 10], dtype=torch.int32), r"'cache_lens'\[0\] = 2 is outside \[T_new, T_max\] = \[3, 10\]"),
        (q, torch.tensor([3, 11], dtype=torch.int32), r"'cache_lens'\[1\] = 11 is outside"),
        (torch.randn(2, 2, 11, 32), lens, "T_new = 11 new tokens but the cache holds at most T_max = 10"),
    ]
    for q_, lens_, match in cases:
        with pytest.raises(gptcore.Error, match=match):
            attention_decode(q_, k, v, lens_)


# CUDA: half precision against float64, allowed twice PyTorch's own error at that precision.


def _max_err(a, b):
    return (a.double() - b).abs().max().item()


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T_q,T_k", [(1, 1), (17, 17), (97, 97), (1025, 1025), (64, 200)])
@pytest.mark.parametrize("D", [32, 64, 80, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_matches_float64_within_twice_torch_error(dtype, T_q, T_k, D, causal):
    ins = make_qkv(2, 3, T_q, T_k, D, dtype, "cuda")
    out = attention(*ins, causal=causal)
    dout = torch.randn_like(out)
    want, want_grads = float64_grads(lambda q, k, v: reference.attention(q, k, v, causal), ins, dout)
    pt = [t.detach().clone().requires_grad_() for t in ins]
    out_pt = reference.attention(*pt, causal)
    assert _max_err(out, want) <= 2 * _max_err(out_pt, want) + 1e-5
    grads_pt = torch.autograd.grad(out_pt, pt, dout)
    for got, p, w in zip(torch.autograd.grad(out, ins, dout), grads_pt, want_grads):
        assert _max_err(got, w) <= 2 * _max_err(p, w) + 1e-5


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("T_new", [1, 3])
def test_cuda_decode_equals_full_attention(T_new):
    q, k_cache, v_cache = (t.detach() for t in make_qkv(3, 2, T_new, 300, 128, torch.bfloat16, "cuda"))
    lens = torch.tensor([5, 300, 123], dtype=torch.int32, device="cuda")
    out = attention_decode(q, k_cache, v_cache, lens)
    for b, n in enumerate(lens.tolist()):
        prefix = (q[b : b + 1], k_cache[b : b + 1, :, :n], v_cache[b : b + 1, :, :n])
        want = reference.attention(*(t.double() for t in prefix))
        assert _max_err(out[b : b + 1], want) < 2e-2


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_dropout_mask_equals_cpu_mask(dtype):
    T, p = 64, 0.25
    q = torch.zeros(2, 2, T, T)
    k = torch.randn(2, 2, T, T)
    v = torch.eye(T).expand(2, 2, T, T).contiguous()
    rng = torch.tensor([99, 2**33 + 5], dtype=torch.int64)
    cpu_out, _ = attention_fwd(q, k, v, False, p, 1.0, rng)
    gpu_out, _ = attention_fwd(*(t.to("cuda", dtype) for t in (q, k, v)), False, p, 1.0, rng)
    assert torch.equal(gpu_out.cpu() > 0, cpu_out > 0)
    assert torch.equal(cpu_out > 0, dropout_uniforms(rng, (2, 2, T, T)) >= p)


@cuda
@pytest.mark.cuda
def test_cuda_rejects_float32():
    q, k, v = (t.detach() for t in make_qkv(1, 1, 8, 8, 64, device="cuda"))
    with pytest.raises(gptcore.Error, match="the CUDA kernels take float16 or bfloat16"):
        attention(q, k, v)
