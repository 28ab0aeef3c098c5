"""LoRA adapter files: safetensors holding the adapter tensors (full GPT names ending in .lora_A /
.lora_B, whole tensors or one tensor-parallel rank's shards), the LoRAConfig as JSON under the
metadata key "gptcore_lora" and the base model's path under "gptcore_lora_base". A LoRA run's
checkpoint holds one per (tp, pp) rank (names.adapter_file_name).

This module reads and writes the files; gptcore.finetune.lora makes and applies the adapters, and
turns the metadata into its LoRAConfig."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gptcore.checkpoint.folders import find_checkpoint
from gptcore.checkpoint.layout import read_layout
from gptcore.checkpoint.names import ADAPTER_BASE_KEY, ADAPTER_CONFIG_KEY, adapter_file_name
from gptcore.parallel.tensor_parallel import merge_state_dicts

FACTORS = (".lora_A", ".lora_B")


def save_adapter_file(state: Mapping[str, torch.Tensor], path, config_json: str, base=None) -> Path:
    """Write an adapter file: `state` (adapter tensors by full GPT names), the LoRAConfig's JSON and
    the base model's path in the metadata. Returns the path."""
    metadata = {ADAPTER_CONFIG_KEY: config_json, "format": "pt"}
    if base is not None:
        metadata[ADAPTER_BASE_KEY] = str(base)
    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path, metadata=metadata)
    return path


def read_adapter_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(adapter tensors, metadata) of one adapter file; ValueError if `path` is not one."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for missing, truncated or foreign files
        raise ValueError(f"{path}: not a LoRA adapter file ({e})") from None
    if ADAPTER_CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: not a gptcore LoRA adapter file (no {ADAPTER_CONFIG_KEY!r} metadata)")
    return load_file(path), metadata


def read_adapter_checkpoint(folder) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(adapter tensors, metadata) of a LoRA run's checkpoint (a step_N folder or its save folder),
    the per-(tp, pp) files of a model-parallel run joined into whole tensors."""
    step = find_checkpoint(folder)
    if step is None:
        raise ValueError(f"{folder}: no checkpoint here (expected a LoRA run's step_N folder or save folder)")
    layout = read_layout(step)
    tp, pp = layout["tensor_parallel"], layout["pipeline_parallel"]
    names = [[adapter_file_name(t, p, tp, pp) for t in range(tp)] for p in range(pp)]
    missing = [name for stage in names for name in stage if not (step / name).is_file()]
    if missing:
        raise ValueError(f"{step}: no LoRA adapters ({', '.join(missing[:4])} missing); is it a LoRA run's checkpoint?")
    state: dict[str, torch.Tensor] = {}
    for stage in names:
        shards = [read_adapter_file(step / name) for name in stage]
        state.update(merge_state_dicts([shard for shard, _ in shards]))
    return state, shards[0][1]


def read_adapters(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(adapter tensors, metadata) of an adapter file or of a LoRA run's checkpoint folder."""
    return read_adapter_checkpoint(path) if Path(path).is_dir() else read_adapter_file(path)
