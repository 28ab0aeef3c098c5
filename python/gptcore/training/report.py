"""Where a training run's numbers go: the console (above a tqdm bar), a JSONL file and TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gptcore.training.config import ConfigError


class Reporter:
    """A run's reporting from `trainer` (its cfg, log, history, step, scaler, flops and memory) to step `end`."""

    def __init__(self, trainer, end: int):
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

    def __enter__(self) -> Reporter:
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
        per_device = tokens_per_s / t.processes.layout.world  # Megatron's TGS: tokens per GPU per second
        r = {
            "step": out["step"],
            "loss": self.loss / self.steps,
            "lr": out["lr"],
            "grad_norm": out["grad_norm"],
            "loss_scale": out["loss_scale"],
            "skipped_steps": self.skipped,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": per_device,
            "mfu": None if t.peak_flops is None else tokens_per_s * t.flops_per_token / t.peak_flops,
            "memory_gib": t.memory_gib(),
        }
        self.emit(r)
        parts = [
            f"step {r['step']:>6}",
            f"loss {r['loss']:.4f}",
            f"lr {r['lr']:.3e}",
            f"grad norm {r['grad_norm']:.3f}",
            f"{tokens_per_s:,.0f} tok/s ({per_device:,.0f} per device)",
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
