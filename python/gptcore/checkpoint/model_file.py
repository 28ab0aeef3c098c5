"""gptcore's model file: one safetensors file holding a GPT's state dict (or one shard of it), with
the GPTConfig as JSON under the metadata key "gptcore_config" (names.MODEL_CONFIG_KEY)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gptcore.checkpoint.names import MODEL_CONFIG_KEY
from gptcore.convert import model_state
from gptcore.model import GPT, GPTConfig


def save_model_state(
    state: dict[str, torch.Tensor], config: GPTConfig, path, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write a gptcore model file: `state` (any tensors keyed by GPT parameter names: a full state
    dict or one shard of it) as safetensors, `config` in its metadata (without use_gptcore_ops,
    which is a choice of whoever runs the model, not part of it), plus `extra_metadata` (strings).
    Returns the path."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    saved = config.to_dict()
    del saved["use_gptcore_ops"]
    metadata = {MODEL_CONFIG_KEY: json.dumps(saved)}
    for key, value in (extra_metadata or {}).items():
        if key == MODEL_CONFIG_KEY or not isinstance(value, str):
            raise ValueError(
                f"save_model_state: extra metadata {key!r}={value!r}: string values, not {MODEL_CONFIG_KEY!r}"
            )
        metadata[key] = value
    save_file(tensors, path, metadata=metadata)
    return path


def save_model(model: GPT, path) -> None:
    """gptcore's model file: the model's weights (convert.model_state) and config (save_model_state)."""
    save_model_state(model_state(model), model.config, path)


def read_model_metadata(path) -> dict[str, str]:
    """The metadata of a gptcore model file; ValueError if `path` is not one."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path}: not a safetensors file ({e})") from None
    if MODEL_CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: not a gptcore model file (no {MODEL_CONFIG_KEY!r} metadata)")
    return metadata


def saved_config(metadata: dict[str, str]) -> dict:
    """The GPTConfig fields a gptcore model file's metadata holds (use_gptcore_ops is not one)."""
    return json.loads(metadata[MODEL_CONFIG_KEY])


def load_model(path, **overrides) -> GPT:
    """A GPT from a file written by `save_model`; `overrides` set GPTConfig fields."""
    model = GPT(GPTConfig(**(saved_config(read_model_metadata(path)) | overrides)))
    model.load_state_dict(load_file(path))
    return model
