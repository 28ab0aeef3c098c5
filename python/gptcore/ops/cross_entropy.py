"""Fused softmax cross-entropy as torch custom ops over gptcore._C."""

from __future__ import annotations

import torch

from gptcore import _C
from gptcore.ops._views import stream, view


@torch.library.custom_op("gptcore::cross_entropy_fwd", mutates_args=())
def cross_entropy_fwd(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, V], target [N] -> (loss [N], lse [N]) in float32; ignored rows get loss 0."""
    loss = logits.new_empty(logits.shape[0], dtype=torch.float32)
    lse = torch.empty_like(loss)
    _C.cross_entropy_fwd(
        view(logits, "logits"), view(target, "target"), view(lse, "lse"), view(loss, "loss"), None,
        0, logits.shape[-1], ignore_index, stream(logits),
    )  # fmt: skip
    return loss, lse


@cross_entropy_fwd.register_fake
def _(logits, target, ignore_index):
    loss = logits.new_empty(logits.shape[0], dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.custom_op("gptcore::cross_entropy_bwd", mutates_args=())
def cross_entropy_bwd(
    logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor, dloss: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """dlogits = (softmax(logits) - onehot(target)) * dloss[:, None]; zero on ignored rows."""
    dlogits = torch.empty_like(logits)
    _C.cross_entropy_bwd(
        view(logits, "logits"), view(target, "target"), view(lse, "lse"), view(dloss, "dloss"),
        view(dlogits, "dlogits"), 0, logits.shape[-1], ignore_index, stream(logits),
    )  # fmt: skip
    return dlogits


@cross_entropy_bwd.register_fake
def _(logits, target, lse, dloss, ignore_index):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, target, ignore_index = inputs
    _, lse = output
    ctx.ignore_index = ignore_index
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(logits, target, lse)


def _backward(ctx, dloss, _dlse):
    logits, target, lse = ctx.saved_tensors
    return cross_entropy_bwd(logits, target, lse, dloss.contiguous(), ctx.ignore_index), None, None


cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """Like F.cross_entropy(logits.view(-1, V), target.view(-1), ignore_index=..., reduction=...)
    for logits [..., V] and int64 / int32 target [...], without materializing probabilities.

    "mean" averages over the rows whose target is not ignore_index (NaN when there are none);
    "none" returns the per-row loss shaped like target. The loss has the logits' dtype.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.dim() < 1 or target.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: 'target' has shape {list(target.shape)}; expected the leading dimensions of "
            f"'logits' {list(logits.shape)}, i.e. {list(logits.shape[:-1])}"
        )
    if not logits.is_contiguous():
        raise ValueError("cross_entropy: 'logits' is not contiguous; pass logits.contiguous()")
    loss, _ = cross_entropy_fwd(logits.reshape(-1, logits.shape[-1]), target.reshape(-1).contiguous(), ignore_index)
    return reduce_token_losses(loss, target, ignore_index, reduction, logits.dtype)


def reduce_token_losses(
    loss: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str, dtype: torch.dtype
) -> torch.Tensor:
    """Flat per-token losses (0 at ignored targets) reduced like F.cross_entropy: shaped as target
    ("none"), summed ("sum") or averaged over the targets != ignore_index ("mean"); in dtype."""
    if reduction == "none":
        return loss.view(target.shape).to(dtype)
    total = loss.sum()
    if reduction == "mean":
        total = total / (target != ignore_index).sum()
    return total.to(dtype)
