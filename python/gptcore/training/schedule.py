"""Learning-rate schedule and fp16 loss scaling: small pure state machines, saved with checkpoints."""

from __future__ import annotations

import math


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int, style: str = "cosine") -> float:
    """The lr of optimizer step `step` (0-based), Megatron's schedule over n = step + 1: linear warmup
    lr * n / warmup_steps while n <= warmup_steps, then `style` decay (cosine, linear or constant)
    from lr to min_lr over ratio (n - warmup_steps) / (decay_steps - warmup_steps), and min_lr
    once n > decay_steps. "noam" (ModelScope's name; Megatron's inverse-square-root, fairseq's
    inverse_sqrt) is lr * min(n / w, sqrt(w / n)) with w = max(warmup_steps, 1): the peak lr at the
    end of the warmup, then falling as 1 / sqrt(n), not below min_lr, whatever decay_steps."""
    n = step + 1
    if n <= warmup_steps:
        return lr * n / warmup_steps
    if style == "constant":
        return lr
    if style == "noam":
        return max(min_lr, lr * math.sqrt(max(warmup_steps, 1) / n))
    if n > decay_steps:
        return min_lr
    ratio = (n - warmup_steps) / (decay_steps - warmup_steps)
    if style == "linear":
        coeff = 1.0 - ratio
    elif style == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    else:
        raise ValueError(f"decay style {style!r} is not cosine, linear, constant or noam")
    return min_lr + coeff * (lr - min_lr)


class LossScaler:
    """fp16 loss scaling. Static (dynamic=False): the scale never changes. Dynamic: an overflow
    (inf/nan grads) skips the step; after `hysteresis` overflows the scale is multiplied by
    `backoff` (not below min_scale) and the hysteresis count resets; after `window` good steps in a
    row it is multiplied by `growth`. Both kinds skip a step whose grads overflow."""

    def __init__(
        self,
        scale: float,
        dynamic: bool = True,
        min_scale: float = 1.0,
        window: int = 1000,
        hysteresis: int = 2,
        growth: float = 2.0,
        backoff: float = 0.5,
    ):
        self.scale, self.dynamic, self.min_scale = float(scale), dynamic, float(min_scale)
        self.window, self.hysteresis, self.growth, self.backoff = window, hysteresis, growth, backoff
        self.good_steps = 0
        self.hysteresis_left = hysteresis
        self.skipped_steps = 0

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.skipped_steps += 1
            self.good_steps = 0
            if not self.dynamic:
                return
            self.hysteresis_left -= 1
            if self.hysteresis_left <= 0:
                self.scale = max(self.scale * self.backoff, self.min_scale)
                self.hysteresis_left = self.hysteresis
            return
        if not self.dynamic:
            return
        self.good_steps += 1
        if self.good_steps == self.window:
            self.scale *= self.growth
            self.good_steps = 0
            self.hysteresis_left = self.hysteresis

    def state_dict(self) -> dict:
        keys = ("scale", "good_steps", "hysteresis_left", "skipped_steps")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
