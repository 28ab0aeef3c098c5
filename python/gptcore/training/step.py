"""One optimizer step, shared by every training task (language modelling, classification) and
every process layout: micro batches forward and backward with loss scaling, the grad norm,
clipping, the lr of the schedule and the fused AdamW update, skipped when the grads overflow.

What a layout changes is given as parts: the gradients (`LocalGradients` here; data parallelism's
in training.placement) say how grads are kept, reduced, measured and cleared; the forward-backward
callable says how the micro batches run (a loop here, or a pipeline schedule).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch

from gptcore.optim import AdamW
from gptcore.optim.adamw import param_grad
from gptcore.training.schedule import LossScaler


def decay_groups(params, weight_decay: float) -> list[dict]:
    """AdamW's param groups over the trainable params: weight decay on 2-D weights only (not
    biases, not layer norms)."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def accumulate_in_fp32(model: torch.nn.Module) -> None:
    """Half params accumulate their grads in a float32 `main_grad` (Megatron's convention), which
    the optimizer reads: many micro batches then add up without half-precision rounding."""

    def accumulate(p: torch.Tensor) -> None:
        if p.main_grad is None:
            p.main_grad = p.grad.float()
        else:
            p.main_grad.add_(p.grad)
        p.grad = None

    for p in model.parameters():
        p.main_grad = None
        p.register_post_accumulate_grad_hook(accumulate)


def loss_scaler(
    dtype: torch.dtype,
    loss_scale: float | None = None,
    initial_loss_scale: float = 2.0**16,
    min_loss_scale: float = 1.0,
    window: int = 1000,
    hysteresis: int = 2,
) -> LossScaler:
    """fp16: a static scale (loss_scale) or dynamic loss scaling from initial_loss_scale; other
    precisions need none (a static 1)."""
    if dtype != torch.float16:
        return LossScaler(1.0, dynamic=False)
    dynamic = loss_scale is None
    return LossScaler(
        initial_loss_scale if dynamic else loss_scale,
        dynamic=dynamic,
        min_scale=min_loss_scale,
        window=window,
        hysteresis=hysteresis,
    )


class LocalGradients:
    """A model's grads in one process: `.grad`, or the float32 `main_grad` of half params."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def make_optimizer(self, groups: list[dict], **kwargs) -> AdamW:
        return AdamW(groups, **kwargs)

    def no_sync(self):
        return contextlib.nullcontext()

    def finish(self, ran_backward: bool) -> None:
        """After the step's backward passes: nothing to reduce."""

    def norm(self) -> float:
        """The L2 norm of the whole (still scaled) gradient."""
        grads = [g for p in self.model.parameters() if (g := param_grad(p)) is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))))

    def zero(self) -> None:
        for p in self.model.parameters():
            p.grad = None
            if hasattr(p, "main_grad"):
                p.main_grad = None


def forward_backward(
    loss_of: Callable,
    batches: Sequence,
    counts: Sequence[int],
    total: int,
    scale: float,
    grads,
    every_batch: bool = False,
) -> float:
    """Forward and backward of every micro batch, each micro batch's mean loss (`loss_of(batch)`)
    weighted by its share (counts[k], its targets) of the `total` targets, so the grads are those
    of the whole batch's mean loss (times scale). Returns this process's part of that mean loss
    (unscaled). A micro batch without targets is skipped, except with every_batch (ZeRO-3: each
    forward and backward gathers the params with the other data-parallel ranks), where it runs on a
    stand-in target with weight 0; the grads are reduced (`grads`) as the last backward runs."""
    ran = list(range(len(counts))) if every_batch else [k for k, count in enumerate(counts) if count]
    loss = 0.0
    for k in ran:
        batch = batches[k] if counts[k] else with_stand_in_target(batches[k])
        with grads.no_sync() if k != ran[-1] else contextlib.nullcontext():
            part = loss_of(batch).float() * (counts[k] / total)
            (part * scale if scale != 1.0 else part).backward()
        loss += float(part.detach())
    grads.finish(bool(ran))
    return loss


def with_stand_in_target(batch: dict) -> dict:
    """A batch without targets given one (token 0 at the first position), so its mean loss is finite."""
    labels = batch["labels"].clone()
    labels.view(-1)[0] = 0
    return {**batch, "labels": labels}


class OptimizerStep:
    """The update after the backward: the grad norm (global, unscaled), clipping to clip_grad
    (0: none), the schedule's lr (`lr_of(updates)`), the fused AdamW step (unscaling and clipping
    as it reads the grads), skipped when the grads overflow; then the loss scale's update and the
    grads cleared."""

    def __init__(self, optimizer, scaler: LossScaler, lr_of: Callable[[int], float], clip_grad: float, grads):
        self.optimizer, self.scaler, self.lr_of, self.clip_grad, self.grads = optimizer, scaler, lr_of, clip_grad, grads

    def __call__(self, run_backward: Callable[[float], float], updates: int) -> dict:
        """run_backward(scale) runs the forward and backward passes and returns the loss. Returns
        {"loss", "lr", "grad_norm", "loss_scale", "skipped"}; `updates` (steps applied so far)
        places the lr, and a step that is not skipped adds one."""
        scale = self.scaler.scale
        loss = run_backward(scale)
        grad_norm = self.grads.norm() / scale
        found_inf = not math.isfinite(grad_norm)
        lr = self.lr_of(updates)
        if not found_inf:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            clip = min(1.0, self.clip_grad / (grad_norm + 1e-6)) if self.clip_grad > 0 else 1.0
            # Unscale and clip inside the fused step: the grads are divided by scale / clip as read.
            self.optimizer.step(grad_scale=scale / clip if (scale != 1.0 or clip != 1.0) else None)
            found_inf = self.optimizer.found_inf
        loss_scale = self.scaler.scale
        self.scaler.update(found_inf)
        self.grads.zero()
        return {"loss": float(loss), "lr": lr, "grad_norm": grad_norm, "loss_scale": loss_scale, "skipped": found_inf}
