"""gptcore.ops.cross_entropy against a float64 F.cross_entropy, its custom ops, torch.compile,
the vocab-parallel C API path, and the errors bad input raises."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

import gptcore
from gptcore import _C
from gptcore.ops import cross_entropy, reference
from gptcore.ops._views import stream, view
from gptcore.ops.cross_entropy import cross_entropy_bwd, cross_entropy_fwd

IGNORE = -100
has_cuda = torch.cuda.is_available() and _C.build_info()["cuda"]
cuda = pytest.mark.skipif(not has_cuda, reason="needs a CUDA device and a CUDA build")


def make_batch(shape, V, dtype=torch.float32, device="cpu", target_dtype=torch.int64, ignore_every=3, seed=0):
    """Logits of scale ~3 (peaked and flat rows alike) and targets with every ignore_every-th row ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, V, generator=g)).to(device=device, dtype=dtype)
    target = torch.randint(0, V, shape, generator=g)
    target.view(-1)[::ignore_every] = IGNORE
    return logits, target.to(device=device, dtype=target_dtype)


def reference_loss_and_grad(logits, target, reduction, ignore_index=IGNORE):
    x = logits.detach().double().requires_grad_()
    loss = reference.cross_entropy(x, target, ignore_index=ignore_index, reduction=reduction)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad


def ours_loss_and_grad(logits, target, reduction, ignore_index=IGNORE):
    x = logits.detach().clone().requires_grad_()
    loss = cross_entropy(x, target, ignore_index=ignore_index, reduction=reduction)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad


SHAPES = [(rows, V) for rows in (1, 7, 1025) for V in (1, 63, 768)] + [(1, 50257), (7, 50257)]


@pytest.mark.parametrize("rows,V", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32])
def test_matches_float64_reference(rows, V, reduction, target_dtype):
    logits, target = make_batch((rows,), V, target_dtype=target_dtype, ignore_every=3 if rows > 1 else 2)
    if rows == 1:  # keep the single row live: it is the only one
        target.fill_(V - 1)
    want, want_grad = reference_loss_and_grad(logits, target, reduction)
    got, got_grad = ours_loss_and_grad(logits, target, reduction)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-5, atol=2e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_batched_logits(reduction):
    logits, target = make_batch((3, 5), 97)
    want, want_grad = reference_loss_and_grad(logits, target, reduction)
    got, got_grad = ours_loss_and_grad(logits, target, reduction)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-5, atol=2e-7)
    assert (got_grad.view(-1, 97)[target.view(-1) == IGNORE] == 0).all()


def test_all_rows_ignored():
    logits, target = make_batch((4,), 10)
    target.fill_(IGNORE)
    assert torch.isnan(cross_entropy(logits, target))  # like F.cross_entropy: 0 / 0
    assert cross_entropy(logits, target, reduction="sum").item() == 0
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=IGNORE))


def test_other_ignore_index_and_extreme_logits():
    logits, target = make_batch((9,), 40, ignore_every=4)
    target[target == IGNORE] = 5  # class 5 is now the ignored one
    logits[0, :20] = float("-inf")  # masked columns
    logits[1] *= 100  # a very peaked row
    target[0] = 30
    want, want_grad = reference_loss_and_grad(logits, target, "none", ignore_index=5)
    got, got_grad = ours_loss_and_grad(logits, target, "none", ignore_index=5)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-5, atol=2e-7)


def test_opcheck():
    logits, target = make_batch((6,), 33)
    loss, lse = cross_entropy_fwd(logits, target, IGNORE)
    torch.library.opcheck(cross_entropy_fwd, (logits.requires_grad_(), target, IGNORE))
    torch.library.opcheck(cross_entropy_bwd, (logits.detach(), target, lse, torch.rand(6), IGNORE))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile(backend):
    logits, target = make_batch((2, 6), 50)

    def f(x, t):
        return cross_entropy(2 * x, t) + cross_entropy(x, t, reduction="sum") / 10

    torch._dynamo.reset()
    compiled = torch.compile(f, backend=backend, fullgraph=True)
    x = logits.clone().requires_grad_()
    got = compiled(x, target)
    got.backward()
    x_ref = logits.double().requires_grad_()
    want = reference.cross_entropy(2 * x_ref, target) + reference.cross_entropy(x_ref, target, reduction="sum") / 10
    want.backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-5, atol=2e-7)


def test_vocab_parallel_shards():
    """Three uneven vocabulary shards through the C API, combined as vocab-parallel ranks would."""
    rows, V = 11, 301
    logits, target = make_batch((rows,), V)
    bounds = [0, 50, 220, V]
    lses, target_logits = [], []
    for start, stop in pairwise(bounds):
        shard = logits[:, start:stop].contiguous()
        lse, loss, tl = torch.empty(rows), torch.empty(rows), torch.full((rows,), float("nan"))
        _C.cross_entropy_fwd(view(shard, "logits"), view(target, "target"), view(lse, "lse"), view(loss, "loss"),
                             view(tl, "target_logit"), start, V, IGNORE, 0)  # fmt: skip
        lses.append(lse)
        target_logits.append(tl)
    lse = torch.logsumexp(torch.stack(lses), dim=0)
    loss = torch.where(target == IGNORE, 0.0, lse - torch.stack(target_logits).sum(0))
    want, want_grad = reference_loss_and_grad(logits, target, "none")
    torch.testing.assert_close(loss.double(), want, rtol=2e-6, atol=2e-6)

    dloss = torch.rand(rows)
    grads = []
    for start, stop in pairwise(bounds):
        shard = logits[:, start:stop].contiguous()
        dshard = torch.empty_like(shard)
        _C.cross_entropy_bwd(view(shard, "logits"), view(target, "target"), view(lse, "lse"), view(dloss, "dloss"),
                             view(dshard, "dlogits"), start, V, IGNORE, 0)  # fmt: skip
        grads.append(dshard)
    torch.testing.assert_close(torch.cat(grads, 1).double(), want_grad * dloss.double()[:, None], rtol=1e-5, atol=2e-7)


def test_in_place_backward_through_c_api():
    logits, target = make_batch((5,), 70)
    loss, lse = cross_entropy_fwd(logits, target, IGNORE)
    dloss = torch.rand(5)
    want = cross_entropy_bwd(logits, target, lse, dloss, IGNORE)
    _C.cross_entropy_bwd(view(logits, "logits"), view(target, "target"), view(lse, "lse"), view(dloss, "dloss"),
                         view(logits, "dlogits"), 0, 70, IGNORE, 0)  # fmt: skip
    torch.testing.assert_close(logits, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "logits,target,error,match",
    [
        (torch.randn(4, 8, dtype=torch.float64), torch.zeros(4).long(), gptcore.Error, "'logits' has dtype float64"),
        (torch.randn(4, 8).bfloat16(), torch.zeros(4).long(), gptcore.Error, "'logits' has dtype bfloat16"),
        (torch.randn(4, 8), torch.zeros(4), gptcore.Error, "'target' has dtype float32"),
        (torch.randn(4, 8), torch.zeros(3, dtype=torch.long), ValueError, "'target' has shape \\[3\\]"),
        (torch.randn(8, 4).t(), torch.zeros(4).long(), ValueError, "'logits' is not contiguous"),
        (torch.randn(4, 8), torch.tensor([0, 1, 8, 2]), gptcore.Error, "'target'\\[2\\] = 8 is outside"),
        (torch.randn(4, 8), torch.tensor([0, -3, 1, 2]), gptcore.Error, "'target'\\[1\\] = -3"),
        (torch.randn(4, 8), torch.zeros(4, dtype=torch.uint8), gptcore.Error, "'target' has dtype uint8"),
    ],
)
def test_bad_input(logits, target, error, match):
    with pytest.raises(error, match=match):
        cross_entropy(logits, target)


def test_bad_input_reaching_the_custom_op():
    with pytest.raises(gptcore.Error, match="'logits' .* is not contiguous"):
        cross_entropy_fwd(torch.randn(8, 4).t(), torch.zeros(4).long(), IGNORE)
    with pytest.raises(gptcore.Error, match="'logits' has shape \\[8\\]; expected \\[N, V\\]"):
        cross_entropy_fwd(torch.randn(8), torch.zeros(1, dtype=torch.long), IGNORE)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), reduction="avg")
    assert issubclass(gptcore.Error, RuntimeError)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,V", [(7, 63), (1025, 768), (3, 50257), (5, 50304)])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32])
def test_cuda_matches_float64_reference(dtype, rows, V, target_dtype):
    logits, target = make_batch((rows,), V, dtype=dtype, device="cuda", target_dtype=target_dtype)
    want, want_grad = reference_loss_and_grad(logits, target, "none")
    got, got_grad = ours_loss_and_grad(logits, target, "none")
    assert got.dtype == dtype and got_grad.dtype == dtype
    # PyTorch's own error at this precision, against the same float64 reference.
    x = logits.detach().clone().requires_grad_()
    torch_loss = F.cross_entropy(x, target.long(), ignore_index=IGNORE, reduction="none")
    torch_loss.backward(torch.ones_like(torch_loss))
    torch_grad = x.grad
    loss_tol = 2 * (torch_loss.double() - want).abs().max().item() + 1e-5
    grad_tol = 2 * (torch_grad.double() - want_grad).abs().max().item() + 1e-6
    assert (got.double() - want).abs().max().item() <= loss_tol
    assert (got_grad.double() - want_grad).abs().max().item() <= grad_tol


@pytest.mark.cuda
@cuda
def test_cuda_out_of_range_target_gives_nan():
    logits, target = make_batch((4,), 16, device="cuda")
    target[1] = 16
    loss = cross_entropy(logits, target, reduction="none")
    assert torch.isnan(loss[1]) and not torch.isnan(loss[[0, 2, 3]]).any()


# The C API on CUDA with NaN-poisoned outputs at the GPT-2 vocabulary (odd V: every row starts at
# a different 16-byte phase), on views one element off their allocation, and in place.

GRAD_REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _offset_copy(t, offset):
    """t's values in a CUDA tensor `offset` elements into its allocation."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device="cuda")
    return buf[offset:].view(t.shape).copy_(t)


def _c_cross_entropy(logits, target, dloss, dlogits):
    """gc_cross_entropy_fwd then _bwd into NaN-poisoned lse, loss, target_logit and dlogits."""
    rows, V = logits.shape
    lse, loss, tl = (torch.full((rows,), float("nan"), device="cuda") for _ in range(3))
    _C.cross_entropy_fwd(view(logits, "logits"), view(target, "target"), view(lse, "lse"), view(loss, "loss"),
                         view(tl, "target_logit"), 0, V, IGNORE, stream(logits))  # fmt: skip
    _C.cross_entropy_bwd(view(logits, "logits"), view(target, "target"), view(lse, "lse"), view(dloss, "dloss"),
                         view(dlogits, "dlogits"), 0, V, IGNORE, stream(logits))  # fmt: skip
    return lse, loss, tl


def _float64_cross_entropy(logits, target, dloss):
    """lse, loss (0 on ignored rows), target logit (0 on ignored rows), dlogits in float64."""
    x = logits.double()
    lse = torch.logsumexp(x, dim=1)
    live = target != IGNORE
    tl = torch.where(live, x.gather(1, target.clamp(min=0).long()[:, None])[:, 0], 0.0)
    grad = torch.softmax(x, dim=1)
    grad[live.nonzero()[:, 0], target[live].long()] -= 1
    grad = grad * torch.where(live, dloss.double(), 0.0)[:, None]
    return lse, torch.where(live, lse - tl, 0.0), tl, grad


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["aligned", "logits_off_by_one", "both_off_by_one", "in_place"])
@pytest.mark.parametrize("rows", [1, 67])
def test_cuda_c_api_vocab_50257_on_poisoned_outputs(rows, layout, dtype):
    V = 50257
    logits, target = make_batch((rows,), V, dtype=dtype, device="cuda", ignore_every=4 if rows > 1 else 2)
    target[-1] = V - 1  # the last column as a target
    if rows > 1:
        target[1] = 0
    dloss = torch.rand(rows, device="cuda") + 0.5
    want_lse, want_loss, want_tl, want_grad = _float64_cross_entropy(logits, target, dloss)
    if layout != "aligned":
        logits = _offset_copy(logits, 1)
    dlogits = torch.full_like(logits, float("nan"))
    if layout == "both_off_by_one":
        dlogits = _offset_copy(dlogits, 1)
    elif layout == "in_place":
        dlogits = logits
    lse, loss, tl = _c_cross_entropy(logits, target, dloss, dlogits)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(tl.double(), want_tl, rtol=0, atol=0)  # a copy of the (rounded) logit
    assert (loss[target == IGNORE] == 0).all()
    assert torch.isfinite(dlogits).all(), "a dlogits element was not written (NaN poison survived)"
    assert (dlogits[target == IGNORE] == 0).all()
    err = ((dlogits.double() - want_grad).norm() / want_grad.norm()).item()
    assert err <= GRAD_REL_TOL[dtype], err


@pytest.mark.cuda
@cuda
def test_cuda_more_than_2_pow_31_logits():
    """42800 x 50257 bf16 logits (2.15e9 elements, past int32 indexing): the rows past element 2^31
    against float64, forward and in-place backward."""
    free, _ = torch.cuda.mem_get_info()
    if free < 16 << 30:
        pytest.skip("needs 16 GiB of free GPU memory")
    rows, V = 42800, 50257
    assert rows * V > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(rows, V, generator=g, device="cuda", dtype=torch.bfloat16) * 3
    target = torch.randint(0, V, (rows,), generator=g, device="cuda")
    target[-3] = IGNORE
    check = torch.tensor([0, rows // 2, 2**31 // V, 2**31 // V + 1, rows - 3, rows - 2, rows - 1], device="cuda")
    dloss = torch.rand(rows, device="cuda") + 0.5
    want_lse, want_loss, _, want_grad = _float64_cross_entropy(logits[check], target[check], dloss[check])
    lse, loss, _ = _c_cross_entropy(logits, target, dloss, logits)  # in place: dlogits is logits
    torch.testing.assert_close(lse[check].double(), want_lse, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(loss[check].double(), want_loss, rtol=1e-6, atol=1e-5)
    got = logits[check].double()
    assert ((got - want_grad).norm() / want_grad.norm()).item() <= GRAD_REL_TOL[torch.bfloat16]
    assert (logits[rows - 3] == 0).all()
