"""GPT training: data, model, AdamW, schedule, mixed precision, eval, checkpoints, on one process or
several (torchrun, or `gptcore train --nproc-per-node N`).

One optimizer step takes global_batch_size samples in micro batches of micro_batch_size (gradient
accumulation); the loss is the mean over every target token of the global batch, so accumulating
micro batches gives the gradient of one large batch. Sample i of step s is train sample
s * global_batch_size + i, a pure function of the seed, which is what makes resume exact.

The processes (training.processes) are laid out as world = dp x tp x pp (a world of one when not
launched as several); the layout chooses the parts the trainer composes, and with groups of one
each part does what one process does:
- the placement (training.placement): the whole GPT, or this rank's shard of it (pipeline_stage,
  parallelize) in DataParallel over its dp group, with ZeRO when asked; its gradients part reduces
  and measures the grads (each parameter counted once) and its passes run the micro batches in a
  loop or by the 1F1B pipeline schedule;
- the data: micro batch k of data-parallel rank d is global samples [k dp mb + d mb, + mb) of the
  step's batch, so the union over ranks is the same global batch whatever the layout; each rank
  weights its micro batches' losses by the global batch's token count;
- the step (training.step): the grad norm, clipping, the lr schedule, the fused AdamW update and
  fp16 loss scaling, the same for every layout (and for classification, finetune.classify);
- the checkpoints (training.checkpointing): one model file, or one per (tp, pp) shard with a file
  per rank; either loads under any other layout.
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
import signal
import sys
from pathlib import Path

import torch
import yaml

import gptcore
from gptcore.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_DIR,
    copy_tokenizer,
    crash_point,
    find_checkpoint,
    load_any,
    load_trainer_state,
    resolve,
    save_trainer_state,
    step_dir_name,
)
from gptcore.checkpoint.tokenizer import tokenizer_beside
from gptcore.data import default_dataset, load_tokenizer
from gptcore.finetune.lora import apply_lora, load_adapters, load_lora_state_dict
from gptcore.model import DTYPES, GPT
from gptcore.training.batches import DocumentReset, make_batch
from gptcore.training.checkpointing import BackgroundSaves, checkpoints_for, set_rng_state
from gptcore.training.config import ConfigError, TrainConfig, check_device
from gptcore.training.datasets import build_datasets, steps_for_epochs
from gptcore.training.placement import place
from gptcore.training.processes import Processes
from gptcore.training.report import Reporter
from gptcore.training.schedule import lr_at
from gptcore.training.step import OptimizerStep, decay_groups, loss_scaler

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) for MFU; other devices need peak_tflops in the config.
_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


def resolve_device(name: str, gptcore_ops: bool = True) -> torch.device:
    """The training device. A GPU that gptcore's ops cannot use (a build without the CUDA kernels,
    e.g. no cuBLAS when it was installed) is left for the CPU under "auto", with the build's reason,
    and refused when named."""
    cuda_kernels = gptcore._build_info()["cuda"] or not gptcore_ops
    if name == "auto":
        if torch.cuda.is_available() and not cuda_kernels:
            print(
                f"gptcore: a GPU is visible but this build has no CUDA kernels ({_build_reason()}); training on the CPU"
            )
        return torch.device("cuda" if torch.cuda.is_available() and cuda_kernels else "cpu")
    device = torch.device(check_device(name))
    if device.type == "cuda" and not cuda_kernels:
        raise ConfigError(
            f"device {name!r}: this gptcore build has no CUDA kernels ({_build_reason()}); use device=cpu,"
            " or use_gptcore_ops=false for PyTorch's ops"
        )
    return device


# Text a tokenizer's ids are compared on: ASCII, digits, code, whitespace, CJK, an emoji.
_PROBE = "The quick brown fox, 1234567890!\n\tdef f(x): return x ** 2  # 数据和模型 🙂 naïve café"


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers agree: vocabulary size, eod id, and the ids of a probe text."""
    return (a.vocab_size, a.eod_id, a.encode(_PROBE)) == (b.vocab_size, b.eod_id, b.encode(_PROBE))


def _build_reason() -> str:
    return gptcore._build_info()["note"] or "built without CUDA"


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs a token costs: 6 per parameter (forward + backward) plus the attention
    scores and weighted sum, 12 * n_layer * n_embd * seq_len (PaLM's count, causal mask ignored)."""
    c = model.config
    return 6.0 * model.num_parameters() + 12.0 * c.n_layer * c.n_embd * seq_len


class Trainer:
    """Builds everything from a TrainConfig and runs `train()`; resumes from the newest checkpoint
    in `load` (or `save`) when there is one. `log` receives each console line (on the main process:
    rank 0 of several, which also writes the shared files)."""

    def __init__(self, cfg: TrainConfig, log=print):
        cfg.validate()
        self.processes = Processes.start(cfg)
        self.is_main = self.processes.is_main
        self.cfg, self.log = cfg, log if self.is_main else lambda line: None
        self.device = self.processes.device = self._device()
        self.dtype = DTYPES[cfg.precision]
        if self.device.type == "cpu" and cfg.precision != "fp32" and cfg.use_gptcore_ops:
            raise ConfigError(
                f"precision {cfg.precision} on the CPU: gptcore's CPU kernels are float32; use precision=fp32,"
                " a CUDA device, or use_gptcore_ops=false (PyTorch's CPU ops)"
            )
        data_path, tokenizer_path = cfg.data_path, cfg.tokenizer_source()
        if data_path is None:
            with self.processes.main_first():  # the first run builds the corpus; the others wait and read it
                prefix, tokenizer_path = default_dataset(progress=cfg.progress and self.is_main)
            data_path = str(prefix)
        if tokenizer_path is None:
            raise ConfigError("data_path is set but tokenizer is not; name the tokenizer the data was made with")
        self.tokenizer_path = tokenizer_path
        try:
            self.tokenizer = load_tokenizer(tokenizer_path)
        except (ValueError, OSError) as e:
            raise ConfigError(f"tokenizer: {e}") from None
        if (cfg.reset_attention_mask or cfg.reset_position_ids) and self.tokenizer.eod_id is None:
            raise ConfigError(
                "reset_attention_mask / reset_position_ids: the tokenizer has no end-of-document token to split"
                " documents at"
            )
        self.reset = DocumentReset(cfg.reset_attention_mask, cfg.reset_position_ids, self.tokenizer.eod_id)

        source = cfg.load or cfg.save
        try:  # the newest intact checkpoint: a damaged one is named in the log and an older one taken
            self.resume_folder = find_checkpoint(source, self.log) if source is not None else None
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.resume_folder is None and cfg.load is not None:
            raise ConfigError(f"load: no complete checkpoint in {cfg.load}")
        self.checkpoints = checkpoints_for(self.processes, background=cfg.async_save)
        self.saves = BackgroundSaves()

        torch.manual_seed(cfg.seed)
        model = (
            self._initial_model(cfg.init_from) if cfg.init_from else GPT(cfg.model_config(self.tokenizer.vocab_size))
        )
        if cfg.init_from:
            self._check_tokenizer(cfg.init_from, model.config.vocab_size)
        elif model.config.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(
                f"vocab_size ({model.config.vocab_size}) is smaller than the tokenizer's "
                f"({self.tokenizer.vocab_size}); unset vocab_size to take the tokenizer's"
            )
        if cfg.seq_len > model.config.n_positions:
            raise ConfigError(f"seq_len ({cfg.seq_len}) exceeds the model's n_positions ({model.config.n_positions})")
        model.recompute = cfg.recompute
        self.config = model.config
        self.num_parameters = model.num_parameters()
        self.flops_per_token = flops_per_token(model, cfg.seq_len)
        self.placement = place(model, cfg, self.processes, self.device, self.dtype, self._prepare)
        self.model, self.grads = self.placement.model, self.placement.grads
        self.trainable_parameters = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if cfg.train_epochs is not None:
            self._steps_from_epochs(data_path)
        with self.processes.main_first():  # the first run writes the sample-index caches; the others read them
            self.train_data, self.valid_data = build_datasets(
                cfg, data_path, self.tokenizer, self.config.vocab_size, self.log
            )
        groups = decay_groups(self.model.parameters(), cfg.weight_decay)
        self.optimizer = self.grads.make_optimizer(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        scaling = (cfg.loss_scale, cfg.initial_loss_scale, cfg.min_loss_scale, cfg.loss_scale_window, cfg.hysteresis)
        self.scaler = loss_scaler(self.dtype, *scaling)
        self.update = OptimizerStep(self.optimizer, self.scaler, self.lr, cfg.clip_grad, self.grads)
        self.step = 0  # optimizer steps taken (skipped ones included): the data position
        self.updates = 0  # steps whose update was applied: the lr schedule's position
        self.peak_flops = self._peak_flops()
        self.history: list[dict] = []
        self._stop_signal: str | None = None
        self.resumed_from = None
        if self.resume_folder is not None:
            self.load_checkpoint(self.resume_folder)

    # ---- setup --------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        device = resolve_device(self.cfg.device, self.cfg.use_gptcore_ops)
        if device.type == "cuda" and device.index is None and not self.processes.alone:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def _prepare(self, part: torch.nn.Module) -> None:
        """Before the model (or this process's part of it) is placed: what a sharded checkpoint
        holds for it, and LoRA adapters (lora_rank > 0: on the target linears, every other
        parameter frozen)."""
        resuming = self.resume_folder is not None
        if resuming and not self.cfg.lora_rank:
            self.checkpoints.load_shard(self, part)
        if self.cfg.lora_rank:
            apply_lora(part, self.cfg.lora_config(), seed=self.cfg.seed)
            if resuming:
                self.checkpoints.load_shard(self, part)

    def load_adapters(self, model: torch.nn.Module, folder: Path, name: str) -> None:
        """A LoRA run resumes its adapters (the frozen base comes from init_from)."""
        path = folder / name
        if not path.is_file():
            raise ConfigError(
                f"{folder}: no {name}; resuming a LoRA run (lora_rank > 0) needs a checkpoint of a LoRA run with the"
                " same tensor_parallel and pipeline_parallel; to finetune from a full checkpoint, name it with"
                " init_from and save to a new folder"
            )
        state, saved, _ = load_adapters(path)
        if saved != self.cfg.lora_config():
            raise ConfigError(
                f"{path}: the adapters were trained with {saved}, this config asks for {self.cfg.lora_config()}"
            )
        load_lora_state_dict(model, state)

    def _initial_model(self, source: str) -> GPT:
        cfg = self.cfg
        overrides = {"use_gptcore_ops": cfg.use_gptcore_ops}
        for name in ("dropout", "attn_dropout"):
            if getattr(cfg, name) is not None:
                overrides[name] = getattr(cfg, name)
        try:
            return load_any(source, **overrides)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"init_from: {e}") from None

    def _steps_from_epochs(self, data_path: str) -> None:
        """train_epochs: train_steps from the train split's size and the global batch (said in the log)."""
        cfg = self.cfg
        steps, samples = steps_for_epochs(cfg, data_path, self.tokenizer, self.config.vocab_size)
        self.log(
            f"train_epochs {cfg.train_epochs:g}: {samples:,} samples an epoch / global batch"
            f" {cfg.global_batch_size} -> train_steps={steps}"
        )
        cfg.train_steps = steps
        cfg.validate()  # the warmup and decay steps against the derived length

    def _check_tokenizer(self, init_from: str, vocab_size: int) -> None:
        """Finetuning: the tokenizer must be the one init_from's model was trained with. Refused: one
        with more ids than the model's vocabulary, or one other than the tokenizer saved with it."""
        name = self.tokenizer_path
        if self.tokenizer.vocab_size > vocab_size:
            raise ConfigError(
                f"tokenizer {name}: its vocabulary ({self.tokenizer.vocab_size}) is larger than init_from's model's"
                f" ({vocab_size}); finetune with the tokenizer the model was trained with"
            )
        saved = tokenizer_beside(*resolve(init_from))
        if saved is None or Path(saved).resolve() == Path(name).resolve():
            return
        if not same_tokenizer(load_tokenizer(saved), self.tokenizer):
            raise ConfigError(
                f"tokenizer {name} is not the tokenizer saved with init_from ({saved}): they split text into"
                f" different ids; finetune with {saved} (and preprocess the data with it)"
            )

    def _peak_flops(self) -> float | None:
        """The peak of every process together."""
        if self.cfg.peak_tflops is not None:
            return self.cfg.peak_tflops * 1e12 * self.processes.layout.world
        if self.device.type == "cuda" and self.cfg.precision != "fp32":
            name = torch.cuda.get_device_name(self.device)
            for key, tflops in _PEAK_TFLOPS.items():
                if key in name:
                    return tflops * 1e12 * self.processes.layout.world
        return None

    def lr(self, updates: int) -> float:
        c = self.cfg
        return lr_at(updates, c.lr, c.min_lr, c.warmup_steps_resolved, c.decay_steps_resolved, c.decay_style)

    # ---- one step ---------------------------------------------------------------------------
    def _batch(self, first: int, count: int, data) -> dict[str, torch.Tensor]:
        return make_batch([data[i] for i in range(first, first + count)], self.reset, self.device)

    def _step_batches(self) -> list[dict[str, torch.Tensor]]:
        """This process's micro batches of the step's global batch (see the module docstring)."""
        micro, dp = self.cfg.micro_batch_size, self.processes.layout.dp
        first = self.step * self.cfg.global_batch_size + self.processes.coords.dp * micro
        return [self._batch(first + k * micro * dp, micro, self.train_data) for k in range(self.placement.accum_steps)]

    def train_step(self) -> dict:
        """One optimizer step over a global batch; returns its metrics."""
        self.model.train()
        processes = self.processes
        batches = self._step_batches()
        counts = [int((b["labels"] != -100).sum()) for b in batches]
        total = int(processes.all_reduce([sum(counts)], processes.group("dp"))[0])

        def run_backward(scale: float) -> float:
            loss = self.placement.forward_backward(batches, counts, max(total, 1), scale)
            crash_point(f"step-{self.step + 1}")
            # Every tp rank of the last stage holds the loss; the dp ranks hold parts of it.
            return processes.all_reduce([loss])[0] / processes.layout.tp

        out = self.update(run_backward, self.updates)
        if not out["skipped"]:
            self.updates += 1
        self.step += 1
        return {"step": self.step, **out, "tokens": total}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over the validation samples (the same ones each time) and its perplexity."""
        if self.valid_data is None:
            return {}
        layout, micro = self.processes.layout, self.cfg.micro_batch_size
        self.model.eval()
        ks = range(self.processes.coords.dp, self.cfg.eval_steps, layout.dp)  # micro batch k on dp rank k % dp
        batches = [self._batch(k * micro, micro, self.valid_data) for k in ks]
        counts = [int((b["labels"] != -100).sum()) for b in batches]
        if self.placement.lockstep:  # every dp rank runs as many forwards, the last ones counting for nothing
            padding = -(-self.cfg.eval_steps // layout.dp) - len(batches)
            batches += [self._batch(0, micro, self.valid_data)] * padding
            counts += [0] * padding
        total = self.placement.forward_losses(batches, counts)
        self.model.train()
        total, count = self.processes.all_reduce([total, sum(counts)])
        # Losses: from the last stage's tp ranks; counts: from every rank.
        loss = (total / layout.tp) / max(count / (layout.tp * layout.pp), 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Save a checkpoint of this step: written now, or with async_save copied to host memory now and
        written by a background thread (`saves.wait()` for it). Returns its folder."""
        if self.cfg.save is None:
            raise ConfigError("save is not set: no folder to write checkpoints to")
        write = self.checkpoints.capture(self)
        publish = functools.partial(self.checkpoints.publish, self, self.step, write)
        if not self.cfg.async_save:
            return publish()
        self.saves.submit(publish)
        return Path(self.cfg.save) / step_dir_name(self.step)

    def shared_state(self, extra: dict) -> dict:
        """The trainer state as of now (step counters, loss scaler, config) with `extra`."""
        cfg = self.cfg
        return {
            "step": self.step,
            "updates": self.updates,
            "consumed_samples": self.step * cfg.global_batch_size,
            "scaler": self.scaler.state_dict(),
            "config": cfg.to_dict(),
            **extra,
        }

    def write_shared(self, folder: Path, trainer_state: dict) -> None:
        """trainer_state (shared_state's), config.yaml and the tokenizer."""
        cfg = self.cfg
        save_trainer_state(trainer_state, folder)
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        copy_tokenizer(self.tokenizer_path, folder / TOKENIZER_DIR)

    def load_checkpoint(self, folder: Path) -> None:
        """Restore model, optimizer, scaler, RNGs and data position from a checkpoint folder. The
        weights of any layout's checkpoint are resharded to this one; its optimizer state comes back
        when it fits (checkpointing's docstring), otherwise training goes on from the weights with
        fresh AdamW moments (said in the log)."""
        self.checkpoints.load_weights(self, folder)
        state = load_trainer_state(folder)
        optimizer_state, rng = self.checkpoints.saved_state(self, folder, state)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        else:
            self.log(
                f"{folder}: its optimizer state does not fit this run's layout (or it holds weights only);"
                " resuming from the weights, step and schedule with fresh AdamW moments"
            )
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.updates = state["step"], state["updates"]
        if rng is not None:
            set_rng_state(rng)
        self.resumed_from = folder
        self.log(f"resumed from {folder} at step {self.step}")

    def check_same_model(self, folder: Path, saved_config) -> None:
        saved, ours = saved_config.to_dict(), self.config.to_dict()
        for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "bias", "pad_vocab_multiple"):
            if saved[key] != ours[key]:
                raise ConfigError(
                    f"{folder}: the checkpoint's model has {key}={saved[key]!r} but this config builds "
                    f"{key}={ours[key]!r}; resume with the same model, or save to a new folder"
                )

    # ---- the loop -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = name
        self.log(f"{name}: finishing step {self.step + 1}, then saving and exiting")

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM (and SIGINT) finish the current step, save and stop."""
        try:
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def memory_gib(self) -> float:
        """Peak memory: CUDA allocations on a GPU, the process's max RSS on the CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform != "darwin" else rss / 2**30

    def train(self, max_steps: int | None = None) -> list[dict]:
        """Train to train_steps (or `max_steps` more steps, stopping there as if interrupted), saving
        at the end; returns the records logged (one per log_interval, and one per eval)."""
        cfg = self.cfg
        end = cfg.train_steps if max_steps is None else min(cfg.train_steps, self.step + max_steps)
        self.log(
            f"training {self.num_parameters / 1e6:.2f}M params{self._trainable()} on"
            f" {self.processes.describe(self.device)} ({cfg.precision}), global batch {cfg.global_batch_size} x"
            f" {cfg.seq_len} tokens, steps {self.step} -> {end}"
        )
        with Reporter(self, end) as report, self._signals():
            while self.step < end:
                out = self.train_step()
                report.step(out)
                if self.step % cfg.log_interval == 0 or self.step == end:
                    report.log_window(out)
                if cfg.eval_interval and self.valid_data and (self.step % cfg.eval_interval == 0 or self.step == end):
                    report.log_eval(self.evaluate())
                stopping = self._stop_requested()
                periodic = cfg.save_interval and self.step % cfg.save_interval == 0
                if cfg.save and (stopping or periodic or self.step == end):
                    self._save(report)
                if stopping:
                    if not cfg.save:
                        report.write(
                            f"{self._stop_signal}: stopped at step {self.step}; nothing saved (save is not set)"
                        )
                    break
            if cfg.async_save and self.saves.wait() is not None:  # the last save finished before returning
                report.write(f"saved {self.saves.last}")
        return self.history

    def _save(self, report) -> None:
        if not self.cfg.async_save:
            report.write(f"saved {self.save_checkpoint()}")
            return
        before = self.saves.wait()  # the previous background save, finished (or its error raised)
        folder = self.save_checkpoint()
        report.write(f"saving {folder} in the background" + (f" (saved {before})" if before else ""))

    def _trainable(self) -> str:
        if not self.cfg.lora_rank:
            return ""
        return f" (LoRA rank {self.cfg.lora_rank}: {self.trainable_parameters / 1e6:.3f}M trainable here)"

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop (after this step): on any process, so that every process
        stops after the same step (the others would wait for it forever)."""
        if self.processes.all_reduce([float(self._stop_signal is not None)])[0] > 0:
            self._stop_signal = self._stop_signal or "a signal to another process"
        return self._stop_signal is not None

    @property
    def stopped_by_signal(self) -> str | None:
        """The signal that stopped the last train() ('SIGTERM', 'SIGINT'), or None."""
        return self._stop_signal
