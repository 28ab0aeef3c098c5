"""LayerNorm and fused residual add + LayerNorm as torch custom ops over gptcore._C."""

from __future__ import annotations

import torch

from gptcore import _C
from gptcore.ops._views import rows, stream, view


@torch.library.custom_op("gptcore::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, sum, mean, rstd); sum = x + residual, or an empty tensor without residual."""
    y = torch.empty_like(x)
    total = torch.empty_like(x) if residual is not None else x.new_empty(0)
    mean = x.new_empty(rows(x), dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _C.layer_norm_fwd(
        view(x, "x"),
        view(residual, "residual"),
        view(weight, "weight"),
        view(bias, "bias"),
        view(y, "y"),
        view(total, "sum") if residual is not None else None,
        view(mean, "mean"),
        view(rstd, "rstd"),
        eps,
        stream(x),
    )
    return y, total, mean, rstd


@layer_norm_fwd.register_fake
def _(x, residual, weight, bias, eps):
    mean = x.new_empty(rows(x), dtype=torch.float32)
    total = torch.empty_like(x) if residual is not None else x.new_empty(0)
    return torch.empty_like(x), total, mean, torch.empty_like(mean)


@torch.library.custom_op("gptcore::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dsum: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dbias); dsum (the fused add's incoming gradient) is added to dx."""
    dx = torch.empty_like(x)
    dweight = torch.empty_like(weight)
    dbias = torch.empty_like(weight)
    args = (
        view(dy, "dy"),
        view(x, "x"),
        view(weight, "weight"),
        view(mean, "mean"),
        view(rstd, "rstd"),
        view(dsum, "dsum"),
        view(dx, "dx"),
        view(dweight, "dweight"),
        view(dbias, "dbias"),
    )
    workspace = torch.empty(_C.layer_norm_bwd_workspace_size(*args), dtype=torch.uint8, device=x.device)
    _C.layer_norm_bwd(*args, workspace.data_ptr(), workspace.numel(), stream(x))
    return dx, dweight, dbias


@layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, dsum):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, _ = inputs
    _, total, mean, rstd = output
    ctx.has_residual = residual is not None
    ctx.has_bias = bias is not None
    ctx.save_for_backward(total if ctx.has_residual else x, weight, mean, rstd)


def _backward(ctx, dy, dsum, _dmean, _drstd):
    normalized, weight, mean, rstd = ctx.saved_tensors
    dsum = dsum.contiguous() if ctx.has_residual else None
    dx, dweight, dbias = layer_norm_bwd(dy.contiguous(), normalized, weight, mean, rstd, dsum)
    return dx, dx if ctx.has_residual else None, dweight, dbias if ctx.has_bias else None, None


layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension, like F.layer_norm(x, x.shape[-1:], weight, bias, eps)."""
    return layer_norm_fwd(x, None, weight, bias, eps)[0]


def fused_add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, layer_norm(sum)) with sum = x + residual, in one pass: the pre-LN residual step."""
    y, total, _, _ = layer_norm_fwd(x, residual, weight, bias, eps)
    return total, y
