"""What a training checkpoint holds beyond the shared files, by process layout (the on-disk names
and the step folders are gptcore.checkpoint's).

`OneFileCheckpoints` (a world of one): model.safetensors (or a LoRA run's adapters.safetensors),
and in the trainer state the optimizer state and the RNG states. `ShardedCheckpoints` (several
processes): one model file per (tp, pp) shard, written by dp rank 0 (under ZeRO-3 after every dp
rank's parameter shards are gathered); layout.json; a rank state
file per process (rank_NNNNN.json + .safetensors: its RNG states, and its optimizer state: every
rank's ZeRO shard, or without ZeRO the dp rank 0 copy). Either loads the other's checkpoints: the
weights are resharded on load; the optimizer state comes back when it fits (same tp and pp, and
same dp under ZeRO), else training goes on from the weights with fresh AdamW moments.

Both are driven by the Trainer (`trainer` below): they read its model, optimizer, config and
processes, and `trainer.write_shared` writes the trainer state, config.yaml and the tokenizer. Every
state goes through gptcore.checkpoint's state files, never pickle.

Saving is two phases: `capture` copies what this process writes into host memory at the step
boundary and returns a writer of that copy; `publish` runs the writer through write_checkpoint
(temporary folder, manifest, rename, `latest`). `BackgroundSaves` runs publish on a thread while
training goes on (async_save), one save at a time; a distributed run's background saves meet at
barriers of a process group of their own, apart from the training's collectives.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
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
    save_model_shard,
    save_model_state,
    save_rank_state,
    write_checkpoint,
    write_layout,
)
from gptcore.convert import model_state
from gptcore.finetune.lora import lora_state_dict, save_adapter_state
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


def host_copy(value):
    """value with every tensor in it copied to host memory (a copy even of a CPU tensor: training
    goes on changing the original); dicts, lists and tuples rebuilt, anything else kept."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(v) for v in value)
    return value


class BackgroundSaves:
    """Checkpoints published on a background thread, one at a time: `submit` waits for the one before
    (and raises its error), `wait` for the last. The thread is not a daemon, so a save still running
    when the program ends is finished first."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last: Path | None = None

    def submit(self, publish: Callable[[], Path]) -> None:
        self.wait()

        def run() -> None:
            try:
                self.last = publish()
            except BaseException as e:  # raised in the training thread at the next submit or wait
                self._error = e

        self._thread = threading.Thread(target=run, name="gptcore-checkpoint")
        self._thread.start()

    def wait(self) -> Path | None:
        """The last checkpoint published, once written; its error, if writing it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.last


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

    def capture(self, trainer) -> Callable[[Path], None]:
        write_weights = _weights_writer(trainer, self.adapters, None)
        shared = host_copy(trainer.shared_state({"optimizer": trainer.optimizer.state_dict(), "rng": rng_state()}))

        def write(folder: Path) -> None:
            write_weights(folder)
            trainer.write_shared(folder, shared)

        return write

    def publish(self, trainer, step: int, write: Callable[[Path], None]) -> Path:
        return write_checkpoint(trainer.cfg.save, step, write, trainer.cfg.keep_last)

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

    def __init__(self, processes, background: bool = False):
        self.processes = processes
        layout, coords = processes.layout, processes.coords
        self.adapters = adapter_file_name(coords.tp, coords.pp, layout.tp, layout.pp)
        # Background saves meet at barriers of their own group: a collective on the training's groups
        # from a second thread could interleave with the training's own. (Made by every rank, in order.)
        self.barrier_group = dist.new_group(backend="gloo") if background else None

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

    def capture(self, trainer) -> Callable[[Path], None]:
        cfg, processes = trainer.cfg, self.processes
        layout, coords = processes.layout, processes.coords
        write_weights = None
        # ZeRO-3: the dp ranks gather the whole (tp, pp) shard together, dp rank 0 copies it.
        gathered = trainer.grads.ddp.gathered() if cfg.zero_stage == 3 else contextlib.nullcontext()
        with gathered:
            if coords.dp == 0:  # one copy of each (tp, pp) shard
                write_weights = _weights_writer(trainer, self.adapters, (coords.tp, coords.pp, layout.tp, layout.pp))
        own = {"rng": rng_state()}
        if cfg.zero_stage or coords.dp == 0:
            own["optimizer"] = trainer.optimizer.state_dict()
        own = host_copy(own)
        shared = trainer.shared_state({}) if processes.is_main else None

        def write(folder: Path) -> None:
            if write_weights is not None:
                write_weights(folder)
            save_rank_state(own, folder, processes.rank)
            if shared is not None:
                write_layout(folder, layout.tp, layout.pp, layout.dp, cfg.zero_stage)
                trainer.write_shared(folder, shared)

        return write

    def publish(self, trainer, step: int, write: Callable[[Path], None]) -> Path:
        group = self.barrier_group
        barrier = dist.barrier if group is None else lambda: dist.barrier(group=group)
        cfg = trainer.cfg
        return write_checkpoint(cfg.save, step, write, cfg.keep_last, rank=self.processes.rank, barrier=barrier)

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


def _weights_writer(trainer, adapters: str, shard: tuple[int, int, int, int] | None) -> Callable[[Path], None]:
    """A writer of this process's weights (a LoRA run: its adapters, the frozen base being init_from),
    copied to host memory now; shard: (tp rank, pp rank, tp, pp) of a distributed run, None alone."""
    cfg = trainer.cfg
    if cfg.lora_rank:
        adapter_state = host_copy(lora_state_dict(trainer.model))
        return lambda folder: save_adapter_state(adapter_state, folder / adapters, cfg.lora_config(), cfg.init_from)
    if shard is None:
        state = host_copy(model_state(trainer.model))
        return lambda folder: save_model_state(state, trainer.config, folder / MODEL_FILE)
    state = host_copy(trainer.model.state_dict())
    return lambda folder: save_model_shard(state, trainer.config, folder, *shard)


def checkpoints_for(processes, background: bool = False) -> OneFileCheckpoints | ShardedCheckpoints:
    return OneFileCheckpoints() if processes.alone else ShardedCheckpoints(processes, background)
