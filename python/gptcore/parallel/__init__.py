"""Parallel training: process-group layout, data, tensor and pipeline parallelism."""
