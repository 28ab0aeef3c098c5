"""Every name in gptcore's checkpoints: files, folders, the step folder pattern, metadata keys.

<save>/step_00000100/                  a checkpoint: step_dir_name(100)
    model.safetensors                  the model (MODEL_FILE; model_file_name(0, 0, 1, 1))
    model_tp{t:02d}_pp{p:02d}.safetensors
                                       instead, one shard per (tp, pp) rank (model_file_name)
    adapters.safetensors               a LoRA run: its adapters instead of the model
    adapters_tp{t:02d}_pp{p:02d}.safetensors   (adapter_file_name)
    layout.json                        a distributed run's tp x pp (x dp, ZeRO stage) layout
    trainer_state.json                 step counters, loss scaler, config (+ optimizer, RNG: one process),
    trainer_state.safetensors          as a state file: its tensors, and the rest as JSON (TRAINER_STATE)
    rank_{r:05d}.json                  a distributed run: one process's optimizer shard and RNG states,
    rank_{r:05d}.safetensors           a state file too (rank_state_name)
    config.yaml                        the training config
    tokenizer/                         a copy of the tokenizer
    COMPLETE                           written last
<save>/latest                          "step_00000100"

State files (checkpoint.state_file) hold no pickle. Older gptcore wrote trainer.pt and
rank_{r:05d}.pt with torch.save (LEGACY_TRAINER_STATE_FILE, legacy_rank_file_name): still read, with
torch.load(weights_only=True), when a folder has no state file in their place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MODEL_FILE = "model.safetensors"
TRAINER_STATE = "trainer_state"  # a state file: trainer_state.json + trainer_state.safetensors
LEGACY_TRAINER_STATE_FILE = "trainer.pt"  # an older gptcore's pickle, read only
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
LAYOUT_FILE = "layout.json"
COMPLETE = "COMPLETE"
LATEST = "latest"

MODEL_CONFIG_KEY = "gptcore_config"  # model file metadata: the GPTConfig as JSON
SHARD_KEYS = ("tp_rank", "pp_rank", "tensor_parallel", "pipeline_parallel")  # a model shard's metadata
ADAPTER_CONFIG_KEY = "gptcore_lora"  # adapter file metadata: the LoRAConfig as JSON
ADAPTER_BASE_KEY = "gptcore_lora_base"  # adapter file metadata: the base model's path

STEP_DIR = re.compile(r"^step_(\d+)$")
SHARD_FILE = re.compile(r"^model_tp(\d+)_pp(\d+)\.safetensors$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(folder: str | os.PathLike) -> int | None:
    """The step a checkpoint folder's name says (step_00000100 -> 100); None for another name."""
    match = STEP_DIR.match(Path(folder).name)
    return int(match.group(1)) if match else None


def rank_state_name(rank: int) -> str:
    """A distributed checkpoint's state file of one process's own state (optimizer shard, RNG
    states): rank_{rank:05d}.json + rank_{rank:05d}.safetensors."""
    return f"rank_{rank:05d}"


def legacy_rank_file_name(rank: int) -> str:
    """What an older gptcore wrote in place of rank_state_name(rank), with pickle: read only."""
    return f"rank_{rank:05d}.pt"


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def non_negative_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_parallel_sizes(tp, pp) -> None:
    for name, value in (("tensor-parallel", tp), ("pipeline-parallel", pp)):
        if not positive_int(value):
            raise ValueError(f"checkpoint layout: the {name} size must be a positive integer, got {value!r}")


def model_file_name(tp_rank: int, pp_rank: int, tp: int, pp: int) -> str:
    """The model file of rank (tp_rank, pp_rank) in a tp x pp layout: model.safetensors for 1 x 1,
    else model_tp{tp_rank:02d}_pp{pp_rank:02d}.safetensors."""
    check_parallel_sizes(tp, pp)
    if not (non_negative_int(tp_rank) and tp_rank < tp and non_negative_int(pp_rank) and pp_rank < pp):
        raise ValueError(f"checkpoint layout: rank ({tp_rank}, {pp_rank}) is outside a tp={tp} x pp={pp} layout")
    if (tp, pp) == (1, 1):
        return MODEL_FILE
    return f"model_tp{tp_rank:02d}_pp{pp_rank:02d}.safetensors"


def adapter_file_name(tp_rank: int, pp_rank: int, tp: int, pp: int) -> str:
    """A LoRA run's checkpoint file of one (tp, pp) shard's adapters."""
    return "adapters.safetensors" if tp == pp == 1 else f"adapters_tp{tp_rank:02d}_pp{pp_rank:02d}.safetensors"
