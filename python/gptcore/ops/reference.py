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


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None
) -> torch.Tensor:
    """F.scaled_dot_product_attention without dropout, causal aligned to the last keys."""
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
) -> torch.Tensor:
    """The definition with a given keep-mask [B, H, T_q, T_k]:
    out = (softmax(scale * q k^T, masked) * keep / (1 - dropout_p)) v."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
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
