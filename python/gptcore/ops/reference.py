"""Pure-PyTorch twins of gptcore's ops: the definition each fused op must match."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def fused_add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    total = x + residual
    return total, layer_norm(total, weight, bias, eps)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """F.cross_entropy over logits [..., V] and target [...] (int64 or int32)."""
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1).long(), ignore_index=ignore_index, reduction=reduction
    )
    return loss.view(target.shape) if reduction == "none" else loss


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(F.linear(x, weight, bias)) + residual; activation None or "gelu" (tanh GELU)."""
    if activation not in (None, "gelu"):
        raise ValueError(f"activation must be None or 'gelu' (tanh GELU), got {activation!r}")
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y, approximate="tanh")
    return y if residual is None else y + residual


def causal_mask(T_q: int, T_k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bottom-right aligned causal mask [T_q, T_k]: query i sees keys j <= i + T_k - T_q."""
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q)


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, length: int) -> None:
    """ValueError unless cu_seqlens is [batch, S + 1] of integers, each row 0 = c_0 <= c_1 <= ... <=
    c_S = length: the document boundaries of a packed row (a row of fewer documents repeats length)."""
    if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.dim() != 2:
        raise ValueError(
            f"cu_seqlens must be an int32 [B, S + 1] tensor, got {cu_seqlens.dtype} {list(cu_seqlens.shape)}"
        )
    if cu_seqlens.shape[0] != batch or cu_seqlens.shape[1] < 2:
        raise ValueError(f"cu_seqlens is {list(cu_seqlens.shape)}; it must be [B = {batch}, S + 1 >= 2]")
    c = cu_seqlens.to("cpu", torch.int64)
    if bool((c[:, 0] != 0).any()) or bool((c[:, -1] != length).any()) or bool((c.diff(dim=1) < 0).any()):
        raise ValueError(f"each row of cu_seqlens must rise from 0 to the sequence length {length} (never down)")


def document_ids(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length]: the document of each position of each packed row (see check_cu_seqlens)."""
    positions = torch.arange(length, device=cu_seqlens.device)
    return (positions[None, :, None] >= cu_seqlens[:, None, 1:]).sum(-1)


def document_mask(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """[B, 1, length, length] bool: query i sees key j when j <= i and both are in one document."""
    doc = document_ids(cu_seqlens, length)
    same = doc[:, :, None] == doc[:, None, :]
    return (same & causal_mask(length, length, cu_seqlens.device)).unsqueeze(1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """F.scaled_dot_product_attention without dropout, causal aligned to the last keys; with
    cu_seqlens [B, S + 1] (packed documents: causal, T_q == T_k), each query sees only the keys of
    its own document (document_mask)."""
    if cu_seqlens is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(cu_seqlens, q.shape[-2]), scale=scale)
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def attention_with_dropout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    dropout_p: float,
    causal: bool = True,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The definition with a given keep-mask [B, H, T_q, T_k]:
    out = (softmax(scale * q k^T, masked) * keep / (1 - dropout_p)) v; the mask is document_mask's
    with cu_seqlens."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if cu_seqlens is not None:
        scores = scores.masked_fill(~document_mask(cu_seqlens, q.shape[-2]), float("-inf"))
    elif causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1) * keep.to(q.dtype) / (1 - dropout_p)
    return probs @ v


def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """gptcore.ops.attention_decode, one sequence at a time: row b attends over its first
    cache_lens[b] cache positions, its T_new queries being the last of them."""
    rows = []
    for b, n in enumerate(cache_lens.tolist()):
        rows.append(attention(q[b : b + 1], k_cache[b : b + 1, :, :n], v_cache[b : b + 1, :, :n], causal, scale))
    return torch.cat(rows)
