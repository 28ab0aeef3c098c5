"""What a training checkpoint holds beyond the shared files, by process layout (the on-disk names
and the step folders are gptcore.checkpoint's).

`OneFileCheckpoints` (a world of one): model.safetensors (or a LoRA run's adapters.safetensors),
and in the trainer state the optimizer state and the RNG states. `ShardedCheckpoints` (several
processes): one model file per (tp, pp) shard, written by dp rank 0; layout.json; a rank state
file per process (rank_NNNNN.json + .safetensors: its RNG states, and its optimizer state: every
rank's ZeRO shard, or without ZeRO the dp rank 0 copy). Either loads the other's checkpoints: the
weights are resharded on load; the optimizer state comes back when it fits (same tp and pp, and
same dp under ZeRO), else training goes on from the weights with fresh AdamW moments.

Both are driven by the Trainer (`trainer` below): they read its model, optimizer, config and
processes, and `trainer.write_shared` writes the trainer state, config.yaml and the tokenizer. Every
state goes through gptcore.checkpoint's state files, never pickle.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gptcore.checkpoint import (
    MODEL_FILE,
    adapter_file_name,
    has_rank_state,
    load_full_state,
    load_rank_state,
    load_shard_for,
    read_layout,
    save_model,
    save_model_shard,
    save_rank_state,
    write_checkpoint,
    write_layout,
)
from gptcore.finetune.lora import save_adapters
from gptcore.parallel.layout import ParallelLayout


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


class OneFileCheckpoints:
    """A world of one's checkpoints."""

    adapters = adapter_file_name(0, 0, 1, 1)

    def load_shard(self, trainer, part) -> None:
        """Nothing before placement: `load_weights` loads the whole model once it is placed."""

    def load_weights(self, trainer, folder: Path) -> None:
        if trainer.cfg.lora_rank:
            trainer.load_adapters(trainer.model, folder, self.adapters)
        else:
            state, saved_config = load_full_state(folder)
            trainer.check_same_model(folder, saved_config)
            trainer.model.load_state_dict({k: v.to(trainer.dtype) for k, v in state.items()})

    def write(self, trainer) -> Path:
        cfg = trainer.cfg

        def write(folder: Path) -> None:
            if cfg.lora_rank:  # the adapters only: the frozen base is init_from
                save_adapters(trainer.model, folder / self.adapters, cfg.lora_config(), base=cfg.init_from)
            else:
                save_model(trainer.model, folder / MODEL_FILE)
            trainer.write_shared(folder, {"optimizer": trainer.optimizer.state_dict(), "rng": rng_state()})

        return write_checkpoint(cfg.save, trainer.step, write, cfg.keep_last)

    def saved_state(self, trainer, folder: Path, trainer_state: dict) -> tuple[dict | None, dict | None]:
        """(optimizer state, RNG states) of this process in a checkpoint, each None when the checkpoint
        has none that fits (saved under another layout, or weights only)."""
        if "optimizer" in trainer_state:  # a one-process checkpoint
            return trainer_state["optimizer"], trainer_state["rng"]
        layout = read_layout(folder)
        unsplit = (layout["tensor_parallel"], layout["pipeline_parallel"], layout["zero_stage"]) == (1, 1, 0)
        if not (unsplit and has_rank_state(folder, 0)):
            return None, None
        return load_rank_state(folder, 0)["optimizer"], None


class ShardedCheckpoints:
    """Checkpoints of several processes, each writing and reading its own shard."""

    def __init__(self, processes):
        self.processes = processes
        layout, coords = processes.layout, processes.coords
        self.adapters = adapter_file_name(coords.tp, coords.pp, layout.tp, layout.pp)

    def load_shard(self, trainer, part) -> None:
        """This shard's weights (before DataParallel and ZeRO's masters copy them), or a LoRA run's
        adapters (once they are made)."""
        folder, layout, coords = trainer.resume_folder, self.processes.layout, self.processes.coords
        if trainer.cfg.lora_rank:
            trainer.load_adapters(part, folder, self.adapters)
            return
        state, saved = load_shard_for(folder, layout.tp, layout.pp, coords.tp, coords.pp)
        trainer.check_same_model(folder, saved)
        part.load_state_dict(state)

    def load_weights(self, trainer, folder: Path) -> None:
        """The weights were loaded when the model was placed."""

    def write(self, trainer) -> Path:
        cfg, processes = trainer.cfg, self.processes
        layout, coords = processes.layout, processes.coords

        def write(folder: Path) -> None:
            if coords.dp == 0 and cfg.lora_rank:
                save_adapters(trainer.model, folder / self.adapters, cfg.lora_config(), base=cfg.init_from)
            elif coords.dp == 0:
                state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
                save_model_shard(state, trainer.config, folder, coords.tp, coords.pp, layout.tp, layout.pp)
            own = {"rng": rng_state()}
            if cfg.zero_stage or coords.dp == 0:
                own["optimizer"] = trainer.optimizer.state_dict()
            save_rank_state(own, folder, processes.rank)
            if processes.is_main:
                write_layout(folder, layout.tp, layout.pp, layout.dp, cfg.zero_stage)
                trainer.write_shared(folder, {})

        return write_checkpoint(cfg.save, trainer.step, write, cfg.keep_last, rank=processes.rank, barrier=dist.barrier)

    def saved_state(self, trainer, folder: Path, trainer_state: dict) -> tuple[dict | None, dict | None]:
        cfg, processes = trainer.cfg, self.processes
        layout, coords = processes.layout, processes.coords
        saved = read_layout(folder)
        one_process = "optimizer" in trainer_state
        if one_process:
            saved |= {"data_parallel": 1, "zero_stage": 0}
        same_split = (saved["tensor_parallel"], saved["pipeline_parallel"]) == (layout.tp, layout.pp)
        same_world = same_split and (saved["data_parallel"], saved["zero_stage"]) == (layout.dp, cfg.zero_stage)
        own = None  # this process's own state: only where the world is the same
        if same_world:
            own = trainer_state if one_process else load_rank_state(folder, processes.rank)
        rng = None if own is None else own["rng"]
        if not same_split or saved["zero_stage"] is None:  # another split, or weights only
            return None, rng
        if cfg.zero_stage or saved["zero_stage"]:  # shards of the optimizer state: only the same ones fit
            return (own["optimizer"] if same_world else None), rng
        if one_process:
            return trainer_state["optimizer"], rng
        # Without ZeRO every dp rank holds the same optimizer state: any dp size reads dp rank 0's.
        old = ParallelLayout(layout.tp * layout.pp * saved["data_parallel"], layout.tp, layout.pp)
        return load_rank_state(folder, old.rank(0, coords.tp, coords.pp))["optimizer"], rng


def checkpoints_for(processes) -> OneFileCheckpoints | ShardedCheckpoints:
    return OneFileCheckpoints() if processes.alone else ShardedCheckpoints(processes)
