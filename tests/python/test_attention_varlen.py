"""Packed-document (variable-length) attention: gptcore.ops.attention(..., cu_seqlens=...) against
the float64 reference with document_mask, forward and backward, with and without dropout (the
same Philox draws), each document equal to running it alone, the ops under opcheck and
torch.compile, the CUDA kernels (skipped without a GPU), and the errors bad cu_seqlens raise."""

from __future__ import annotations

import random

import pytest
import torch
from attention_checks import close, float64_grads

import gptcore
from gptcore import _C
from gptcore.ops import attention, reference
from gptcore.ops.attention import attention_bwd, attention_fwd, dropout_uniforms

has_cuda = torch.cuda.is_available() and _C.build_info()["cuda"]
cuda = pytest.mark.skipif(not has_cuda, reason="needs a CUDA device and a CUDA build")


def make_qkv(B, H, T, D, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(device, dtype).requires_grad_() for _ in range(3)]


def cu_seqlens(rows: list[list[int]], T: int) -> torch.Tensor:
    """[B, S + 1] int32 from each row's document lengths (summing to T), short rows padded with T."""
    S = max(len(lengths) for lengths in rows)
    out = []
    for lengths in rows:
        assert sum(lengths) == T
        bounds = [0]
        for n in lengths:
            bounds.append(bounds[-1] + n)
        out.append(bounds + [T] * (S - len(lengths)))
    return torch.tensor(out, dtype=torch.int32)


def random_lengths(T: int, mean: int, rng: random.Random) -> list[int]:
    """Random document lengths around `mean` summing to T, with the odd empty document."""
    lengths = []
    while sum(lengths) < T:
        n = 0 if rng.random() < 0.1 else rng.randint(1, 2 * mean)
        lengths.append(min(n, T - sum(lengths)))
    return lengths


# Packings of one row of T tokens (B = 2: the second row packs differently, with fewer documents).
T_ROW = 300
PACKINGS = {
    "odd lengths": [[17, 97, 1, 63, 122], [129, 171]],
    "one-token documents": [[1] * 40 + [260], [1] * T_ROW],
    "empty documents": [[0, 0, 50, 0, 250, 0], [300, 0]],
    "one document spans the row": [[T_ROW], [150, 150]],
    "tile boundaries": [[64, 64, 65, 63, 44], [256, 44]],
}
rng_packing = random.Random(20)
for n in range(3):
    PACKINGS[f"random {n}"] = [random_lengths(T_ROW, 40, rng_packing), random_lengths(T_ROW, 90, rng_packing)]


@pytest.mark.parametrize("packing", list(PACKINGS))
@pytest.mark.parametrize("D", [32, 64, 72, 128])
def test_matches_float64(packing, D):
    cu = cu_seqlens(PACKINGS[packing], T_ROW)
    ins = make_qkv(2, 3, T_ROW, D, seed=D)
    out = attention(*ins, cu_seqlens=cu)
    dout = torch.randn_like(out)
    want, want_grads = float64_grads(lambda q, k, v: reference.attention(q, k, v, cu_seqlens=cu), ins, dout)
    close(out, want, 2e-5)
    for got, ref in zip(torch.autograd.grad(out, ins, dout), want_grads):
        close(got, ref, 1e-4)


def test_long_rows_and_many_documents():
    # Several 256-row CPU tiles, documents crossing them, and a third row of one document.
    T = 1100
    gen = random.Random(3)
    cu = cu_seqlens([random_lengths(T, 100, gen), random_lengths(T, 30, gen), [T]], T)
    ins = make_qkv(3, 2, T, 64, seed=1)
    out = attention(*ins, cu_seqlens=cu, scale=0.2)
    dout = torch.randn_like(out)
    want, want_grads = float64_grads(lambda q, k, v: reference.attention(q, k, v, scale=0.2, cu_seqlens=cu), ins, dout)
    close(out, want, 2e-5)
    for got, ref in zip(torch.autograd.grad(out, ins, dout), want_grads):
        close(got, ref, 1e-4)


def test_one_document_per_row_is_plain_causal():
    ins = make_qkv(2, 2, 97, 64)
    cu = torch.tensor([[0, 97], [0, 97]], dtype=torch.int32)
    torch.testing.assert_close(attention(*ins, cu_seqlens=cu), attention(*ins), rtol=0, atol=0)


@pytest.mark.parametrize("packing", ["odd lengths", "empty documents", "random 0"])
def test_each_document_equals_running_it_alone(packing):
    cu = cu_seqlens(PACKINGS[packing], T_ROW)
    ins = make_qkv(2, 2, T_ROW, 64, seed=5)
    out = attention(*ins, cu_seqlens=cu)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, ins, dout)
    for b, row in enumerate(cu.tolist()):
        for begin, end in zip(row, row[1:]):
            if begin == end:
                continue
            piece = [t.detach()[b : b + 1, :, begin:end].clone().requires_grad_() for t in ins]
            alone = attention(*piece)
            torch.testing.assert_close(out[b : b + 1, :, begin:end], alone, rtol=1e-6, atol=2e-6)
            alone_grads = torch.autograd.grad(alone, piece, dout[b : b + 1, :, begin:end])
            for got, want in zip(grads, alone_grads):
                torch.testing.assert_close(got[b : b + 1, :, begin:end], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packing", ["odd lengths", "one-token documents", "empty documents", "random 1"])
def test_dropout_matches_reference_with_the_same_mask(packing):
    p, B, H = 0.3, 2, 2
    cu = cu_seqlens(PACKINGS[packing], T_ROW)
    ins = make_qkv(B, H, T_ROW, 64, seed=9)
    rng = torch.tensor([98765, 4321], dtype=torch.int64)
    out, _ = attention_fwd(*ins, True, p, 0.125, rng, cu)
    keep = dropout_uniforms(rng, (B, H, T_ROW, T_ROW)) >= p
    dout = torch.randn_like(out)

    def ref(q, k, v):
        return reference.attention_with_dropout(q, k, v, keep, p, scale=0.125, cu_seqlens=cu)

    want, want_grads = float64_grads(ref, ins, dout)
    close(out, want, 2e-5)
    for got, want_grad in zip(torch.autograd.grad(out, ins, dout), want_grads):
        close(got, want_grad, 1e-4)


def test_public_dropout_follows_torch_manual_seed():
    cu = cu_seqlens([[10, 23], [33]], 33)
    ins = make_qkv(2, 2, 33, 32)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(attention(*ins, dropout_p=0.5, cu_seqlens=cu))
    assert torch.equal(*runs)
    assert not torch.equal(runs[0], attention(*ins, cu_seqlens=cu))


def test_backward_is_deterministic():
    cu = cu_seqlens(PACKINGS["random 2"], T_ROW)
    q, k, v = make_qkv(2, 2, T_ROW, 64)
    dout = torch.randn_like(q)
    runs = [torch.autograd.grad(attention(q, k, v, cu_seqlens=cu), (q, k, v), dout) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_int64_cu_seqlens_are_taken():
    cu = cu_seqlens([[5, 12], [17]], 17)
    ins = make_qkv(2, 1, 17, 32)
    torch.testing.assert_close(attention(*ins, cu_seqlens=cu.long()), attention(*ins, cu_seqlens=cu), rtol=0, atol=0)


def test_opcheck():
    q, k, v = (t.detach() for t in make_qkv(2, 2, 37, 32))
    cu = cu_seqlens([[5, 0, 32], [37]], 37)
    rng = torch.tensor([1, 2], dtype=torch.int64)
    for p in (0.0, 0.2):
        torch.library.opcheck(attention_fwd, (q.requires_grad_(), k, v, True, p, 0.2, rng, cu))
        out, lse = attention_fwd(q, k, v, True, p, 0.2, rng, cu)
        bwd_args = (torch.randn_like(out), q.detach(), k, v, out.detach(), lse, True, p, 0.2, rng, cu)
        torch.library.opcheck(attention_bwd, bwd_args)


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_torch_compile_forward_and_backward(dropout_p):
    ins = make_qkv(2, 2, 40, 64)
    cu = cu_seqlens([[7, 33], [20, 0, 20]], 40)

    def block(q, k, v, cu):
        return attention(q * 2, k, v, dropout_p=dropout_p, cu_seqlens=cu).square().sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.manual_seed(4)
    got = compiled(*ins, cu)
    got_grads = torch.autograd.grad(got, ins)
    torch.manual_seed(4)
    want = block(*ins, cu)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, torch.autograd.grad(want, ins)):
        torch.testing.assert_close(g, w)


# Bad cu_seqlens: a clear error before (ValueError) or from the kernels' validation (gptcore.Error).


def test_rejects_bad_cu_seqlens():
    q, k, v = (t.detach() for t in make_qkv(2, 2, 8, 32))
    good = cu_seqlens([[3, 5], [8, 0]], 8)
    cases = [
        ({"cu_seqlens": good.float()}, ValueError, "cu_seqlens must be an int32 .B, S . 1. tensor, got torch.float32"),
        ({"cu_seqlens": [0, 8]}, ValueError, "cu_seqlens must be an int32 .B, S . 1. tensor, got list"),
        ({"cu_seqlens": good[0]}, ValueError, r"cu_seqlens is \[3\]; it must be \[B = 2, S \+ 1 >= 2\]"),
        ({"cu_seqlens": good[:1]}, ValueError, r"cu_seqlens is \[1, 3\]; it must be \[B = 2"),
        ({"cu_seqlens": good[:, :1]}, ValueError, r"it must be \[B = 2, S \+ 1 >= 2\]"),
        ({"cu_seqlens": good, "causal": False}, ValueError, "needs causal=True and as many queries as keys"),
        (
            {"cu_seqlens": torch.tensor([[0, 3, 7], [0, 8, 8]], dtype=torch.int32)},
            gptcore.Error,
            "'cu_seqlens' row 0 must rise from 0 to T = 8",
        ),
        ({"cu_seqlens": torch.tensor([[0, 5, 3], [0, 8, 8]], dtype=torch.int32)}, gptcore.Error, "never down"),
        ({"cu_seqlens": torch.tensor([[1, 3, 8], [0, 8, 8]], dtype=torch.int32)}, gptcore.Error, "got c_0 = 1"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="T_q=4, T_k=8"):
        attention(q[:, :, :4], k, v, cu_seqlens=good)
    rng = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(gptcore.Error, match="'cu_seqlens' has dtype int64; expected one of: int32"):
        attention_fwd(q, k, v, True, 0.0, 0.2, rng, good.long())
    with pytest.raises(gptcore.Error, match="needs causal attention with T_q == T_k"):
        attention_fwd(q, k, v, False, 0.0, 0.2, rng, good)


# CUDA: float16 / bfloat16 against float64, within twice PyTorch's own error at that precision
# (PyTorch's SDPA with the document mask), plus a small atol and half an ulp of the largest value.


def _assert_within_torch_error(name, got, torch_lowp, want, atol=1e-4):
    assert torch.isfinite(got).all(), f"{name}: non-finite elements"
    err = (got.double() - want).abs().max().item()
    torch_err = (torch_lowp.double() - want).abs().max().item()
    half_ulp = torch.finfo(got.dtype).eps / 2 * want.abs().max().item()
    bound = 2 * torch_err + atol + half_ulp
    assert err <= bound, f"{name}: max error {err:.3g} vs PyTorch's {torch_err:.3g} (bound {bound:.3g})"


def _check_cuda(dtype, rows, T, D, dropout_p, H=3):
    B = len(rows)
    q, k, v = (t.detach() for t in make_qkv(B, H, T, D, dtype, "cuda", seed=T + D))
    cu = cu_seqlens(rows, T).cuda()
    scale, rng = D**-0.5, torch.tensor([77, 3 + T], dtype=torch.int64)
    keep = (dropout_uniforms(rng, (B, H, T, T)) >= dropout_p).cuda()

    def ref(q_, k_, v_):
        return reference.attention_with_dropout(q_, k_, v_, keep, dropout_p, scale=scale, cu_seqlens=cu)

    out, lse = attention_fwd(q, k, v, True, dropout_p, scale, rng, cu)
    dout = torch.randn_like(out)
    dq, dk, dv = attention_bwd(dout, q, k, v, out, lse, True, dropout_p, scale, rng, cu)
    want, want_grads = float64_grads(ref, (q, k, v), dout)
    torch_ins = [t.clone().requires_grad_() for t in (q, k, v)]
    torch_out = ref(*torch_ins)
    torch_grads = torch.autograd.grad(torch_out, torch_ins, dout)
    _assert_within_torch_error("out", out, torch_out, want)
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~reference.document_mask(cu, T), float("-inf"))
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), rtol=0, atol=1e-3)
    for name, got, pt, w in zip(("dq", "dk", "dv"), (dq, dk, dv), torch_grads, want_grads):
        _assert_within_torch_error(name, got, pt, w)


CUDA_PACKINGS = ["odd lengths", "one-token documents", "empty documents", "tile boundaries", "random 0"]


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [32, 64, 72, 128])
@pytest.mark.parametrize("packing", CUDA_PACKINGS)
def test_cuda_matches_float64_within_twice_torch_error(dtype, D, packing):
    _check_cuda(dtype, PACKINGS[packing], T_ROW, D, 0.0)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("packing", ["odd lengths", "random 1"])
def test_cuda_dropout_matches_float64_with_the_cpu_mask(dtype, packing):
    _check_cuda(dtype, PACKINGS[packing], T_ROW, 64, 0.1)


@cuda
@pytest.mark.cuda
def test_cuda_long_rows():
    gen = random.Random(8)
    T = 2000
    _check_cuda(torch.bfloat16, [random_lengths(T, 150, gen), random_lengths(T, 40, gen)], T, 64, 0.0, H=2)


@cuda
@pytest.mark.cuda
def test_cuda_each_document_equals_running_it_alone():
    cu = cu_seqlens(PACKINGS["odd lengths"], T_ROW)
    q, k, v = (t.detach() for t in make_qkv(2, 2, T_ROW, 64, torch.bfloat16, "cuda"))
    out = attention(q, k, v, cu_seqlens=cu.cuda())
    for b, row in enumerate(cu.tolist()):
        for begin, end in zip(row, row[1:]):
            if begin < end:
                alone = attention(*(t[b : b + 1, :, begin:end] for t in (q, k, v)))
                # Not bitwise: the document sits at another offset in the 64-key tiles.
                torch.testing.assert_close(out[b : b + 1, :, begin:end], alone, rtol=2e-2, atol=2e-2)


@cuda
@pytest.mark.cuda
def test_cuda_float32_runs_sdpa_with_the_document_mask():
    cu = cu_seqlens(PACKINGS["empty documents"], T_ROW).cuda()
    q, k, v = (t.detach() for t in make_qkv(2, 2, T_ROW, 64, torch.float32, "cuda"))
    with pytest.warns(UserWarning, match="float32 attention on CUDA runs PyTorch's SDPA"):
        out = attention(q, k, v, cu_seqlens=cu)
    want = reference.attention(q.double(), k.double(), v.double(), cu_seqlens=cu)
    close(out, want, 1e-4)
