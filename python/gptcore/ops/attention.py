"""Fused scaled-dot-product attention (flash-style) and KV-cache decoding as torch custom ops.

Dropout draws from Philox (seed, offset) pairs taken from torch's CPU default generator, so
torch.manual_seed makes a run reproducible; the pair travels as a small int64 CPU tensor so
torch.compile traces through without a graph break, and the backward reuses it.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from gptcore import _C
from gptcore.ops import reference
from gptcore.ops._views import stream, view


def _lse_like(q: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("gptcore::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    dropout_p: float,
    scale: float,
    rng: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, H, T_q, D], k and v [B, H, T_k, D] -> (out like q, lse [B, H, T_q] float32).
    rng: int64 CPU tensor [2] holding the dropout (seed, offset). cu_seqlens: None, or int32
    [B, S + 1] document boundaries on q's device (packed documents; causal, T_q == T_k)."""
    seed, offset = rng.tolist()
    out = torch.empty_like(q)
    lse = _lse_like(q)
    if q.numel() == 0:  # nothing to compute (and torch gives empty tensors no data pointer)
        return out, lse
    _C.attention_fwd(
        view(q, "q"), view(k, "k"), view(v, "v"), view(out, "out"), view(lse, "lse"),
        scale, causal, dropout_p, seed, offset, stream(q), view(cu_seqlens, "cu_seqlens"),
    )  # fmt: skip
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, causal, dropout_p, scale, rng, cu_seqlens=None):
    return torch.empty_like(q), _lse_like(q)


@torch.library.custom_op("gptcore::attention_bwd", mutates_args=())
def attention_bwd(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    dropout_p: float,
    scale: float,
    rng: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), recomputing the probabilities from lse and the same dropout mask."""
    seed, offset = rng.tolist()
    if q.numel() == 0:  # no query sees a key: zero key gradients (torch gives empty tensors no data pointer)
        return torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args = (
        view(q, "q"), view(k, "k"), view(v, "v"), view(out, "out"), view(dout, "dout"), view(lse, "lse"),
        view(dq, "dq"), view(dk, "dk"), view(dv, "dv"), scale, causal, dropout_p, seed, offset,
    )  # fmt: skip
    documents = view(cu_seqlens, "cu_seqlens")
    workspace = torch.empty(
        _C.attention_bwd_workspace_size(*args, cu_seqlens=documents), dtype=torch.uint8, device=q.device
    )
    _C.attention_bwd(*args, workspace.data_ptr(), workspace.numel(), stream(q), cu_seqlens=documents)
    return dq, dk, dv


@attention_bwd.register_fake
def _(dout, q, k, v, out, lse, causal, dropout_p, scale, rng, cu_seqlens=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, dropout_p, scale, rng, cu_seqlens = inputs
    out, lse = output
    ctx.causal, ctx.dropout_p, ctx.scale = causal, dropout_p, scale
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, rng, cu_seqlens)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, rng, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = attention_bwd(
        dout.contiguous(), q, k, v, out, lse, ctx.causal, ctx.dropout_p, ctx.scale, rng, cu_seqlens
    )
    return dq, dk, dv, None, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("gptcore::attention_decode", mutates_args=())
def attention_decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_lens: torch.Tensor, causal: bool, scale: float
) -> torch.Tensor:
    """q [B, H, T_new, D] over k_cache, v_cache [B, H, T_max, D] with int32 cache_lens [B]."""
    out = torch.empty_like(q)
    if q.numel() == 0:
        return out
    args = (
        view(q, "q"), view(k_cache, "k_cache"), view(v_cache, "v_cache"), view(cache_lens, "cache_lens"),
        view(out, "out"), scale, causal,
    )  # fmt: skip
    # Scratch for the partial results of a cache split over the GPU (flash-decoding); 0 bytes on CPU.
    workspace = torch.empty(_C.attention_decode_workspace_size(*args), dtype=torch.uint8, device=q.device)
    _C.attention_decode(*args, workspace.data_ptr(), workspace.numel(), stream(q))
    return out


@attention_decode_op.register_fake
def _(q, k_cache, v_cache, cache_lens, causal, scale):
    return torch.empty_like(q)


def takes_head_dim(head_dim: int) -> bool:
    """Whether gptcore's attention kernels take heads of this size (32..128 in steps of 8); a model
    with other heads runs attention on the PyTorch reference (gptcore.model.op_set)."""
    return 32 <= head_dim <= 128 and head_dim % 8 == 0


def draw_dropout_rng() -> torch.Tensor:
    """A fresh (seed, offset) pair from torch's CPU default generator, as an int64 tensor [2]."""
    return torch.randint(0, 2**62, (2,), dtype=torch.int64)


def _default_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Like F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=..., scale=...) for
    q [B, H, T_q, D] and k, v [B, H, T_k, D], without a T_q x T_k matrix in memory.

    causal aligns the queries to the last keys (query i sees keys j <= i + T_k - T_q), which is
    F.scaled_dot_product_attention's mask when T_q == T_k; causal needs T_q <= T_k. Head dims
    32..128 in steps of 8; float32 on CPU, float16 / bfloat16 on CUDA (float32 on CUDA runs
    PyTorch's SDPA, with a notice). Non-contiguous inputs are copied to contiguous ones.

    cu_seqlens: packed documents (see reference.check_cu_seqlens), an integer [B, S + 1] tensor,
    each row 0 = c_0 <= ... <= c_S = T: query i sees only the keys j <= i of its own document
    (reference.document_mask), with no work spent on the others. Needs causal and T_q == T_k.
    Passed to the kernels as int32 on q's device; its values are checked on CPU only.
    """
    if cu_seqlens is not None:
        cu_seqlens = _documents(q, k, causal, cu_seqlens)
    if q.is_cuda and q.dtype == torch.float32:
        return _float32_on_cuda(q, k, v, causal, dropout_p, scale, cu_seqlens)
    rng = draw_dropout_rng() if dropout_p > 0 else torch.zeros(2, dtype=torch.int64)
    out, _ = attention_fwd(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        causal,
        float(dropout_p),
        _default_scale(q, scale),
        rng,
        cu_seqlens,
    )
    return out


def _documents(q: torch.Tensor, k: torch.Tensor, causal: bool, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """cu_seqlens as the kernels take it (int32, contiguous, on q's device), or a ValueError for a
    call that cannot have packed documents. The values are the kernels' to check (on CPU)."""
    if not causal or q.shape[-2] != k.shape[-2]:
        raise ValueError(
            "attention: cu_seqlens (packed documents) needs causal=True and as many queries as keys, got "
            f"causal={causal}, T_q={q.shape[-2]}, T_k={k.shape[-2]}"
        )
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        kind = cu_seqlens.dtype if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"attention: cu_seqlens must be an int32 [B, S + 1] tensor, got {kind}")
    if cu_seqlens.dim() != 2 or cu_seqlens.shape[0] != q.shape[0] or cu_seqlens.shape[1] < 2:
        raise ValueError(
            f"attention: cu_seqlens is {list(cu_seqlens.shape)}; it must be [B = {q.shape[0]}, S + 1 >= 2]"
        )
    return cu_seqlens.to(q.device, torch.int32).contiguous()


def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of T_new new queries per sequence over a KV cache, for generation.

    k_cache, v_cache [B, H, T_max, D] already hold the new tokens' keys and values; sequence b
    uses its first cache_lens[b] positions (int32 [B], each in [T_new, T_max]), and new query t
    sits at position cache_lens[b] - T_new + t. Equals attention(q, k_cache[b, :, :len],
    v_cache[b, :, :len], causal) for each sequence. No dropout, no gradient.
    """
    if q.is_cuda and q.dtype == torch.float32:
        return _decode_float32_on_cuda(q, k_cache, v_cache, cache_lens, causal, scale)
    return attention_decode_op(
        q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), cache_lens, causal, _default_scale(q, scale)
    )


# gptcore's CUDA attention kernels run on the tensor cores in float16 / bfloat16. A float32 model on
# a GPU (a parity check, an fp32 fine-tune) gets PyTorch's SDPA for this one op instead of an error;
# its dropout draws from torch's CUDA generator, not gptcore's Philox stream.
_FLOAT32_NOTICE = "gptcore: CUDA attention kernels take float16/bfloat16; float32 attention on CUDA runs PyTorch's SDPA"


def _float32_on_cuda(
    q, k, v, causal: bool, dropout_p: float, scale: float | None, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    warnings.warn(_FLOAT32_NOTICE, stacklevel=3)
    T_q, T_k = q.shape[-2], k.shape[-2]
    if cu_seqlens is not None:
        mask = reference.document_mask(cu_seqlens, T_q)
    else:
        mask = reference.causal_mask(T_q, T_k, q.device) if causal and T_q != T_k else None
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, dropout_p=dropout_p, scale=scale
    )


def _decode_float32_on_cuda(q, k_cache, v_cache, cache_lens, causal: bool, scale: float | None) -> torch.Tensor:
    """The cache mask built on the device from cache_lens, so a CUDA graph replays it."""
    warnings.warn(_FLOAT32_NOTICE, stacklevel=3)
    T_new, T_max = q.shape[-2], k_cache.shape[-2]
    keys = torch.arange(T_max, device=q.device)
    last = cache_lens.to(torch.int64).view(-1, 1, 1, 1) - 1  # each row's last cache position
    if causal:  # new query t sits at position len - T_new + t
        last = last - (T_new - 1) + torch.arange(T_new, device=q.device).view(1, 1, -1, 1)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=keys <= last, scale=scale)


def dropout_uniforms(rng: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The uniform draws behind the dropout mask of an attention call with these (seed, offset):
    a float32 CPU tensor of `shape` = [B, H, T_q, T_k]; element (b, h, i, j) is kept when its
    draw is >= dropout_p. For tests and references: it materializes the T_q x T_k matrix."""
    seed, offset = rng.tolist()
    u = torch.empty(shape, dtype=torch.float32)
    _C.dropout_uniform_fill(view(u, "out"), seed, offset)
    return u
