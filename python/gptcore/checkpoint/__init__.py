"""gptcore's on-disk format: every file name and the step folders (names), writing and finding
checkpoints (folders), verifying them (integrity), the pickle-free state files of step counters,
optimizer and RNG states (state_file), the model file (model_file), the tokenizer copy (tokenizer),
the tensor / pipeline layout (layout) and the per-rank model files (sharded), LoRA adapter files (adapters),
and any model source to a GPT (resolve). It may use gptcore.convert (HF GPT-2 folders), never the
reverse; training, finetuning, evaluation, serving and the CLI read and write checkpoints here."""

from gptcore.checkpoint.adapters import read_adapters, save_adapter_file
from gptcore.checkpoint.folders import (
    complete_checkpoints,
    crash_point,
    find_checkpoint,
    verify_checkpoints,
    write_checkpoint,
)
from gptcore.checkpoint.integrity import Verdict, verify
from gptcore.checkpoint.layout import read_layout, write_layout
from gptcore.checkpoint.model_file import load_model, read_model_metadata, save_model, save_model_state
from gptcore.checkpoint.names import (
    COMPLETE,
    CONFIG_FILE,
    LATEST,
    LAYOUT_FILE,
    MODEL_FILE,
    TOKENIZER_DIR,
    TRAINER_STATE,
    adapter_file_name,
    model_file_name,
    rank_state_name,
    step_dir_name,
)
from gptcore.checkpoint.resolve import load_any, load_for_inference, resolve, tokenizer_of
from gptcore.checkpoint.sharded import (
    load_full_state,
    load_model_shards,
    load_shard_for,
    reshard_checkpoint,
    save_model_shard,
)
from gptcore.checkpoint.state_file import (
    has_rank_state,
    has_trainer_state,
    load_rank_state,
    load_state,
    load_trainer_state,
    save_rank_state,
    save_state,
    save_trainer_state,
)
from gptcore.checkpoint.tokenizer import copy_tokenizer

__all__ = [
    "COMPLETE",
    "CONFIG_FILE",
    "LATEST",
    "LAYOUT_FILE",
    "MODEL_FILE",
    "TOKENIZER_DIR",
    "TRAINER_STATE",
    "Verdict",
    "adapter_file_name",
    "complete_checkpoints",
    "copy_tokenizer",
    "crash_point",
    "find_checkpoint",
    "has_rank_state",
    "has_trainer_state",
    "load_any",
    "load_for_inference",
    "load_full_state",
    "load_model",
    "load_model_shards",
    "load_rank_state",
    "load_shard_for",
    "load_state",
    "load_trainer_state",
    "model_file_name",
    "rank_state_name",
    "read_adapters",
    "read_layout",
    "read_model_metadata",
    "reshard_checkpoint",
    "resolve",
    "save_adapter_file",
    "save_model",
    "save_model_shard",
    "save_model_state",
    "save_rank_state",
    "save_state",
    "save_trainer_state",
    "step_dir_name",
    "tokenizer_of",
    "verify",
    "verify_checkpoints",
    "write_checkpoint",
    "write_layout",
]
