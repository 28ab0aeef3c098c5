"""GPT pretraining on one device: data, model, AdamW, schedule, mixed precision, eval, checkpoints.
(training.parallel_trainer.ParallelTrainer runs the same loop over several processes.)

One optimizer step takes global_batch_size samples in micro batches of micro_batch_size (gradient
accumulation); the loss is the mean over every target token of the global batch, so accumulating
micro batches gives the gradient of one large batch. Sample i of step s is train sample
s * global_batch_size + i, a pure function of the seed, which is what makes resume exact.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

import gptcore
from gptcore.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_DIR,
    TRAINER_STATE_FILE,
    adapter_file_name,
    copy_tokenizer,
    find_checkpoint,
    load_any,
    load_full_state,
    rank_file_name,
    read_layout,
    save_model,
    write_checkpoint,
)
from gptcore.data import (
    BlendedDataset,
    GPTDataset,
    IndexedDataset,
    SFTDataset,
    blend_sample_counts,
    default_dataset,
    has_loss_mask,
    load_tokenizer,
    loss_mask_prefix,
    parse_blend,
    parse_split,
)
from gptcore.data.stdlib_corpus import cache_root
from gptcore.finetune.lora import apply_lora, load_adapters, load_lora_state_dict, save_adapters
from gptcore.model import DTYPES, GPT
from gptcore.optim import AdamW
from gptcore.optim.adamw import param_grad
from gptcore.training.config import ConfigError, TrainConfig, launch_error
from gptcore.training.schedule import LossScaler, lr_at

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
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device is visible; use device=cpu")
    if device.type == "cuda" and not cuda_kernels:
        raise ConfigError(
            f"device {name!r}: this gptcore build has no CUDA kernels ({_build_reason()}); use device=cpu,"
            " or use_gptcore_ops=false for PyTorch's ops"
        )
    return device


def _build_reason() -> str:
    return gptcore._build_info()["note"] or "built without CUDA"


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs a token costs: 6 per parameter (forward + backward) plus the attention
    scores and weighted sum, 12 * n_layer * n_embd * seq_len (PaLM's count, causal mask ignored)."""
    c = model.config
    return 6.0 * model.num_parameters() + 12.0 * c.n_layer * c.n_embd * seq_len


def decay_groups(params, weight_decay: float) -> list[dict]:
    """AdamW's param groups over the trainable params: weight decay on 2-D weights only (not
    biases, not layer norms)."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def _accumulate_in_fp32(model: torch.nn.Module) -> None:
    """Half params accumulate their grads in a float32 `main_grad` (Megatron's convention), which
    the optimizer reads: many micro batches then add up without half-precision rounding."""

    def accumulate(p: torch.Tensor) -> None:
        if p.main_grad is None:
            p.main_grad = p.grad.float()
        else:
            p.main_grad.add_(p.grad)
        p.grad = None

    for p in model.parameters():
        p.main_grad = None
        p.register_post_accumulate_grad_hook(accumulate)


def _open_indexed(prefix: str, vocab_size: int) -> IndexedDataset:
    for suffix in (".idx", ".bin"):
        if not Path(prefix + suffix).is_file():
            raise ConfigError(
                f"data_path: {prefix}{suffix} not found; give the prefix that `gptcore preprocess --output-prefix`"
                " wrote (without .bin/.idx)"
            )
    indexed = IndexedDataset(prefix)
    try:
        indexed.check_vocab(vocab_size)
    except RuntimeError as e:
        raise ConfigError(f"data_path {prefix}: {e}; was it tokenized with this tokenizer?") from None
    return indexed


class Trainer:
    """Builds everything from a TrainConfig and runs `train()`; resumes from the newest checkpoint
    in `load` (or `save`) when there is one. `log` receives each console line."""

    is_main = True  # the process that logs and writes shared files (rank 0 of a distributed run)

    def __init__(self, cfg: TrainConfig, log=print):
        self.cfg, self.log = cfg.validate(), log
        if cfg.tensor_parallel * cfg.pipeline_parallel > 1 and type(self) is Trainer:
            raise launch_error(cfg)
        self.device = self._device()
        self.dtype = DTYPES[cfg.precision]
        if self.device.type == "cpu" and cfg.precision != "fp32" and cfg.use_gptcore_ops:
            raise ConfigError(
                f"precision {cfg.precision} on the CPU: gptcore's CPU kernels are float32; use precision=fp32,"
                " a CUDA device, or use_gptcore_ops=false (PyTorch's CPU ops)"
            )
        data_path, tokenizer_path = cfg.data_path, cfg.tokenizer
        if data_path is None:
            with self._main_first():  # the first run builds the corpus; the others wait and read it
                prefix, tokenizer_path = default_dataset(progress=cfg.progress and self.is_main)
            data_path = str(prefix)
        if tokenizer_path is None:
            raise ConfigError("data_path is set but tokenizer is not; name the tokenizer the data was made with")
        self.tokenizer_path = tokenizer_path
        try:
            self.tokenizer = load_tokenizer(tokenizer_path)
        except (ValueError, OSError) as e:
            raise ConfigError(f"tokenizer: {e}") from None

        source = cfg.load or cfg.save
        self._resume = find_checkpoint(source) if source is not None else None
        if self._resume is None and cfg.load is not None:
            raise ConfigError(f"load: no complete checkpoint in {cfg.load}")

        torch.manual_seed(cfg.seed)
        model = (
            self._initial_model(cfg.init_from) if cfg.init_from else GPT(cfg.model_config(self.tokenizer.vocab_size))
        )
        if model.config.vocab_size < self.tokenizer.vocab_size:
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
        self.model = self._place(model)
        self.trainable_parameters = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        with self._main_first():  # the first run writes the sample-index caches; the others read them
            self.train_data, self.valid_data = self._datasets(data_path)
        self.optimizer = self._make_optimizer()
        if cfg.precision == "fp16":
            dynamic = cfg.loss_scale is None
            self.scaler = LossScaler(
                cfg.initial_loss_scale if dynamic else cfg.loss_scale,
                dynamic=dynamic,
                min_scale=cfg.min_loss_scale,
                window=cfg.loss_scale_window,
                hysteresis=cfg.hysteresis,
            )
        else:
            self.scaler = LossScaler(1.0, dynamic=False)
        self.step = 0  # optimizer steps taken (skipped ones included): the data position
        self.updates = 0  # steps whose update was applied: the lr schedule's position
        self.peak_flops = self._peak_flops()
        self.history: list[dict] = []
        self._stop_signal: str | None = None
        self.resumed_from = None
        if self._resume is not None:
            self.load_checkpoint(self._resume)

    # ---- setup (a ParallelTrainer overrides the device, the placement and the optimizer) --------
    def _device(self) -> torch.device:
        return resolve_device(self.cfg.device, self.cfg.use_gptcore_ops)

    def _main_first(self):
        """Run a block in the main process before the others (file caches): nothing to order here."""
        return contextlib.nullcontext()

    def _place(self, model: GPT) -> torch.nn.Module:
        """The model (with LoRA adapters when asked) on the device in the training precision; half
        params accumulate in float32."""
        self._adapt(model)
        model.to(device=self.device, dtype=self.dtype)
        if self.dtype != torch.float32:
            _accumulate_in_fp32(model)
        return model

    def _adapt(self, model: torch.nn.Module) -> None:
        """lora_rank > 0: low-rank adapters on the target linears; every other parameter frozen."""
        if self.cfg.lora_rank:
            apply_lora(model, self.cfg.lora_config(), seed=self.cfg.seed)

    def _load_adapters(self, model: torch.nn.Module, folder: Path, name: str) -> None:
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

    def _make_optimizer(self):
        cfg = self.cfg
        return AdamW(
            decay_groups(self.model.parameters(), cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
        )

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

    def _datasets(self, data_path: str):
        cfg = self.cfg
        try:
            weights, prefixes = parse_blend(data_path)
        except ValueError as e:
            raise ConfigError(f"data_path: {e}") from None
        indexed = [_open_indexed(prefix, self.config.vocab_size) for prefix in prefixes]
        cache = cfg.data_cache or str(cache_root() / "indices")
        eod = self.tokenizer.eod_id if cfg.eod_mask_loss else None
        num_train = cfg.train_steps * cfg.global_batch_size
        num_valid = cfg.eval_steps * cfg.micro_batch_size if cfg.eval_interval and cfg.eval_steps else 0

        try:
            splits = [parse_split(cfg.split, data.num_documents) for data in indexed]
        except ValueError as e:
            raise ConfigError(str(e)) from None

        def split_dataset(which: int, size: int, seed: int):
            counts = blend_sample_counts(weights, size)
            parts = []
            for prefix, data, documents, count in zip(prefixes, indexed, splits, counts):
                try:
                    if has_loss_mask(prefix):  # finetuning examples: the loss on their target tokens only
                        parts.append(self._sft_dataset(prefix, data, documents[which], max(count, 1), seed))
                    else:
                        parts.append(GPTDataset(data, documents[which], max(count, 1), cfg.seq_len, seed, cache, eod))
                except ValueError as e:
                    name = ("train", "validation")[which]
                    raise ConfigError(f"{name} split of {prefix} (split {cfg.split!r}): {e}") from None
            return parts[0] if len(parts) == 1 else BlendedDataset(parts, weights, size)

        train = split_dataset(0, num_train, cfg.seed)
        if num_valid and not any(len(documents[1]) for documents in splits):
            self.log(f"split {cfg.split!r} leaves no validation documents: no eval")
            num_valid = 0
        valid = split_dataset(1, num_valid, cfg.seed + 1) if num_valid else None
        return train, valid

    def _sft_dataset(self, prefix: str, data: IndexedDataset, documents, count: int, seed: int) -> SFTDataset:
        mask = IndexedDataset(loss_mask_prefix(prefix))
        pad = self.tokenizer.eod_id if self.tokenizer.eod_id is not None else 0
        dataset = SFTDataset(data, mask, documents, count, self.cfg.seq_len, seed, pad, pack=self.cfg.sft_packing)
        if dataset.num_truncated:
            self.log(
                f"{prefix}: {dataset.num_truncated} examples are longer than seq_len + 1 = {self.cfg.seq_len + 1}"
                " tokens and are cut to their first seq_len + 1 (their later targets are not trained on)"
            )
        return dataset

    def _peak_flops(self) -> float | None:
        if self.cfg.peak_tflops is not None:
            return self.cfg.peak_tflops * 1e12
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            for key, tflops in _PEAK_TFLOPS.items():
                if key in name and (self.cfg.precision != "fp32"):
                    return tflops * 1e12
        return None

    def lr(self, updates: int) -> float:
        c = self.cfg
        return lr_at(updates, c.lr, c.min_lr, c.warmup_steps_resolved, c.decay_steps_resolved, c.decay_style)

    # ---- one step ---------------------------------------------------------------------------
    def _batch(self, first: int, count: int, data) -> dict[str, torch.Tensor]:
        items = [data[i] for i in range(first, first + count)]
        batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
        labels = batch["labels"].masked_fill(batch["loss_mask"] == 0, -100)
        return {"tokens": batch["tokens"].to(self.device), "labels": labels.to(self.device)}

    def _step_batches(self) -> list[dict[str, torch.Tensor]]:
        """This step's micro batches: the whole global batch, micro_batch_size samples each."""
        micro, first = self.cfg.micro_batch_size, self.step * self.cfg.global_batch_size
        return [self._batch(first + k * micro, micro, self.train_data) for k in range(self.cfg.grad_accum_steps)]

    def _global_count(self, count: int) -> int:
        """The target tokens of the whole global batch, from this process's count."""
        return count

    def _forward_backward(self, batches, counts: list[int], total: int, scale: float) -> torch.Tensor:
        """Forward and backward of every micro batch, each micro batch's mean loss weighted by its
        share of the `total` target tokens, so the grads are those of the batch's mean loss (times
        scale). Returns that mean loss (float64, unscaled)."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch, count in zip(batches, counts):
            if count == 0:
                continue  # nothing to predict in this micro batch (all masked)
            _, loss = self.model(batch["tokens"], batch["labels"])
            loss = loss.float() * (count / total)
            (loss * scale if scale != 1.0 else loss).backward()
            loss_sum += loss.detach()
        return loss_sum

    def _grad_norm(self) -> float:
        """The L2 norm of the whole (still scaled) gradient."""
        grads = [g for p in self.model.parameters() if (g := param_grad(p)) is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))))

    def _zero_grads(self) -> None:
        for p in self.model.parameters():
            p.grad = None
            if hasattr(p, "main_grad"):
                p.main_grad = None

    def train_step(self) -> dict:
        """One optimizer step over a global batch; returns its metrics."""
        cfg = self.cfg
        self.model.train()
        batches = self._step_batches()
        counts = [int((b["labels"] != -100).sum()) for b in batches]
        total = self._global_count(sum(counts))
        scale = self.scaler.scale
        loss = self._forward_backward(batches, counts, max(total, 1), scale)
        grad_norm = self._grad_norm() / scale
        found_inf = not math.isfinite(grad_norm)
        lr = self.lr(self.updates)
        if not found_inf:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            clip = min(1.0, cfg.clip_grad / (grad_norm + 1e-6)) if cfg.clip_grad > 0 else 1.0
            # Unscale and clip inside the fused step: the grads are divided by scale / clip as read.
            self.optimizer.step(grad_scale=scale / clip if (scale != 1.0 or clip != 1.0) else None)
            found_inf = self.optimizer.found_inf
        if not found_inf:
            self.updates += 1
        loss_scale = self.scaler.scale
        self.scaler.update(found_inf)
        self._zero_grads()
        self.step += 1
        return {
            "step": self.step,
            "loss": float(loss),
            "lr": lr,
            "grad_norm": grad_norm,
            "loss_scale": loss_scale,
            "skipped": found_inf,
            "tokens": total,
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over the validation samples (the same ones each time) and its perplexity."""
        if self.valid_data is None:
            return {}
        self.model.eval()
        micro, total, count = self.cfg.micro_batch_size, 0.0, 0
        for k in range(self.cfg.eval_steps):
            batch = self._batch(k * micro, micro, self.valid_data)
            n = int((batch["labels"] != -100).sum())
            if n:
                _, loss = self.model(batch["tokens"], batch["labels"])
                total, count = total + float(loss) * n, count + n
        self.model.train()
        return self._eval_result(total, count)

    @staticmethod
    def _eval_result(total: float, count: float) -> dict:
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}

    # ---- checkpoints --------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self) -> Path:
        cfg = self.cfg
        if cfg.save is None:
            raise ConfigError("save is not set: no folder to write checkpoints to")

        def write(folder: Path) -> None:
            if cfg.lora_rank:  # the adapters only: the frozen base is init_from
                save_adapters(self.model, folder / adapter_file_name(0, 0, 1, 1), cfg.lora_config(), base=cfg.init_from)
            else:
                save_model(self.model, folder / MODEL_FILE)
            self._write_shared(folder, {"optimizer": self.optimizer.state_dict(), "rng": self._rng_state()})

        return write_checkpoint(cfg.save, self.step, write, cfg.keep_last)

    def _write_shared(self, folder: Path, extra: dict) -> None:
        """trainer.pt (step counters, loss scaler, config and `extra`), config.yaml and the tokenizer."""
        import yaml

        cfg = self.cfg
        trainer_state = {
            "step": self.step,
            "updates": self.updates,
            "consumed_samples": self.step * cfg.global_batch_size,
            "scaler": self.scaler.state_dict(),
            "config": cfg.to_dict(),
            **extra,
        }
        torch.save(trainer_state, folder / TRAINER_STATE_FILE)
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        copy_tokenizer(self.tokenizer_path, folder / TOKENIZER_DIR)

    def load_checkpoint(self, folder: Path) -> None:
        """Restore model, optimizer, scaler, RNGs and data position from a checkpoint folder. A
        checkpoint of a distributed run is merged into the one model; its optimizer state comes
        back when it was not split by the layout (no tensor or pipeline parallelism, no ZeRO),
        otherwise training goes on from the weights with fresh AdamW moments (said in the log)."""
        if self.cfg.lora_rank:
            self._load_adapters(self.model, folder, adapter_file_name(0, 0, 1, 1))
        else:
            state, saved_config = load_full_state(folder)
            self._check_same_model(folder, saved_config)
            self.model.load_state_dict({k: v.to(self.dtype) for k, v in state.items()})
        self._load_training_state(folder)

    def _check_same_model(self, folder: Path, saved_config) -> None:
        saved, ours = saved_config.to_dict(), self.config.to_dict()
        for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "bias", "pad_vocab_multiple"):
            if saved[key] != ours[key]:
                raise ConfigError(
                    f"{folder}: the checkpoint's model has {key}={saved[key]!r} but this config builds "
                    f"{key}={ours[key]!r}; resume with the same model, or save to a new folder"
                )

    def _saved_state(self, folder: Path, trainer_state: dict) -> tuple[dict | None, dict | None]:
        """(optimizer state, RNG states) of this process in a checkpoint, each None when the checkpoint
        has none that fits (saved under another layout, or weights only)."""
        if "optimizer" in trainer_state:  # a one-process checkpoint
            return trainer_state["optimizer"], trainer_state["rng"]
        layout = read_layout(folder)
        unsplit = (layout["tensor_parallel"], layout["pipeline_parallel"], layout["zero_stage"]) == (1, 1, 0)
        rank0 = folder / rank_file_name(0)
        if not (unsplit and rank0.is_file()):
            return None, None
        saved = torch.load(rank0, map_location="cpu", weights_only=False)
        return saved["optimizer"], None

    def _load_training_state(self, folder: Path) -> None:
        """Everything but the weights: optimizer, loss scaler, step counters, RNG states."""
        state = torch.load(folder / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
        optimizer_state, rng = self._saved_state(folder, state)
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
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.resumed_from = folder
        self.log(f"resumed from {folder} at step {self.step}")

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
            f"training {self.num_parameters / 1e6:.2f}M params{self._trainable()} on {self._where()}"
            f" ({cfg.precision}), global batch {cfg.global_batch_size} x {cfg.seq_len} tokens,"
            f" steps {self.step} -> {end}"
        )
        with _Reporter(self, end) as report, self._signals():
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
                    report.write(f"saved {self.save_checkpoint()}")
                if stopping:
                    if not cfg.save:
                        report.write(
                            f"{self._stop_signal}: stopped at step {self.step}; nothing saved (save is not set)"
                        )
                    break
        return self.history

    def _where(self) -> str:
        return str(self.device)

    def _trainable(self) -> str:
        if not self.cfg.lora_rank:
            return ""
        return f" (LoRA rank {self.cfg.lora_rank}: {self.trainable_parameters / 1e6:.3f}M trainable here)"

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop (after this step)."""
        return self._stop_signal is not None

    @property
    def stopped_by_signal(self) -> str | None:
        """The signal that stopped the last train() ('SIGTERM', 'SIGINT'), or None."""
        return self._stop_signal


class _Reporter:
    """Where a run's numbers go: the console (above a tqdm bar), a JSONL file and TensorBoard."""

    def __init__(self, trainer: Trainer, end: int):
        self.trainer, self.cfg = trainer, trainer.cfg
        self.bar = self.metrics = self.writer = None
        main = trainer.is_main
        if self.cfg.progress and main and trainer.step < end:
            from tqdm import tqdm

            self.bar = tqdm(total=end, initial=trainer.step, unit="step", dynamic_ncols=True, leave=False, disable=None)
        path = self.cfg.log_file or (str(Path(self.cfg.save) / "metrics.jsonl") if self.cfg.save else None)
        if path and main:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.metrics = open(path, "a")  # noqa: SIM115 (closed in __exit__)
        if self.cfg.tensorboard_dir and main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "tensorboard_dir is set but tensorboard is missing; pip install tensorboard"
                ) from None
            self.writer = SummaryWriter(self.cfg.tensorboard_dir)
        self._reset()

    def __enter__(self) -> _Reporter:
        return self

    def __exit__(self, *exc) -> None:
        for resource_ in (self.bar, self.metrics, self.writer):
            if resource_ is not None:
                resource_.close()

    def _reset(self) -> None:
        self.loss, self.steps, self.skipped, self.t0 = 0.0, 0, 0, time.perf_counter()

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        self.trainer.log(line)
        if self.bar is not None:
            self.bar.refresh()

    def emit(self, record: dict) -> None:
        self.trainer.history.append(record)
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.writer:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(
                        ("eval/" if key.startswith("val") else "train/") + key, value, record["step"]
                    )

    def step(self, out: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
        self.loss, self.steps, self.skipped = self.loss + out["loss"], self.steps + 1, self.skipped + out["skipped"]
        if out["skipped"]:
            scale = self.trainer.scaler.scale
            self.write(f"step {out['step']}: grads overflowed (inf/nan), update skipped; loss scale now {scale:g}")

    def log_window(self, out: dict) -> None:
        """One record for the steps since the last: mean loss, last lr / grad norm, throughput."""
        t = self.trainer
        tokens_per_s = self.steps * self.cfg.global_batch_size * self.cfg.seq_len / (time.perf_counter() - self.t0)
        r = {
            "step": out["step"],
            "loss": self.loss / self.steps,
            "lr": out["lr"],
            "grad_norm": out["grad_norm"],
            "loss_scale": out["loss_scale"],
            "skipped_steps": self.skipped,
            "tokens_per_s": tokens_per_s,
            "mfu": None if t.peak_flops is None else tokens_per_s * t.flops_per_token / t.peak_flops,
            "memory_gib": t.memory_gib(),
        }
        self.emit(r)
        parts = [
            f"step {r['step']:>6}",
            f"loss {r['loss']:.4f}",
            f"lr {r['lr']:.3e}",
            f"grad norm {r['grad_norm']:.3f}",
            f"{tokens_per_s:,.0f} tok/s",
        ]
        if self.cfg.precision == "fp16":
            parts.append(f"loss scale {r['loss_scale']:g} ({self.skipped} skipped)")
        if r["mfu"] is not None:
            parts.append(f"MFU {100 * r['mfu']:.1f}%")
        parts.append(f"mem {r['memory_gib']:.2f} GiB")
        self.write(" | ".join(parts))
        self._reset()

    def log_eval(self, result: dict) -> None:
        step = self.trainer.step
        self.emit({"step": step, **result})
        self.write(f"step {step:>6} | val loss {result['val_loss']:.4f} | val ppl {result['val_ppl']:.2f}")
