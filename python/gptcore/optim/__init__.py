"""Optimizers whose step runs in gptcore's fused kernels."""

from gptcore.optim.adamw import AdamW

__all__ = ["AdamW"]
