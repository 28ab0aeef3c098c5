"""Optimizers whose step runs in gptcore's fused kernels."""
