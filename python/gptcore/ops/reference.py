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
