"""The trainer over several processes: data, tensor and pipeline parallelism with ZeRO, composed.

Launched by torchrun (or `gptcore train --nproc-per-node N`, which runs torchrun): every process
builds a ParallelTrainer from the same config. The layout is world = dp x tp x pp
(gptcore.parallel.layout, Megatron's rank order); each process holds one (tp, pp) shard of the model
(a GPT cut by parallel.pipeline_stage and split by parallel.parallelize as the layout asks)
wrapped in DataParallel over its dp group, whose float32 main_grad buckets are all-reduced
(ZeRO 0, 1) or reduce-scattered (ZeRO 2) while the backward of the step's last micro batch runs.

The step is the one-device trainer's, split up:
- micro batch k of data-parallel rank d is global samples [k dp mb + d mb, + mb) of the step's batch,
  so the union over ranks is the same global batch whatever the layout (and resume stays exact);
- each rank weights its micro batches' losses by the global batch's token count (one all-reduce of
  the counts), so the summed grads are those of the global mean loss (DataParallel(average=False));
- pipelines run the micro batches with the 1F1B schedule; the last stage's loss is all-reduced;
- after the backward: sequence-parallel grads summed over tp, the tied embedding's two copies over
  the first and last stage, then the global grad norm (each parameter counted once: tensor-parallel
  shards on every tp rank, replicated ones on tp rank 0, the tied copy once, ZeRO shards once) for
  clipping, and the update (AdamW, or ZeroAdamW on this rank's shard).

Checkpoints (gptcore.checkpoint): the model as one file per (tp, pp) shard,
written by dp rank 0; layout.json; trainer.pt (step, schedule, loss scaler, config) from rank 0;
rank_NNNNN.pt per process (its RNG states, and its optimizer state: every rank's ZeRO shard, or
without ZeRO the dp rank 0 copy). A checkpoint loads under any other layout: the weights are resharded
on load; the optimizer state comes back when it fits (same tp and pp, and same dp under ZeRO).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

from gptcore import _C
from gptcore.checkpoint import (
    adapter_file_name,
    load_shard_for,
    rank_file_name,
    read_layout,
    save_model_shard,
    write_checkpoint,
    write_layout,
)
from gptcore.finetune.lora import save_adapters
from gptcore.model import GPT
from gptcore.optim import AdamW
from gptcore.parallel.comm import CommCollectives
from gptcore.parallel.data_parallel import DataParallel, ZeroAdamW
from gptcore.parallel.layout import ParallelGroups, ParallelLayout, build_groups, check_layout
from gptcore.parallel.mappings import all_reduce_coalesced
from gptcore.parallel.pipeline import (
    all_reduce_tied_embedding_grad,
    broadcast_tied_embedding,
    forward_backward_1f1b,
    neighbour_ranks,
    owned_parameters,
    pipeline_stage,
)
from gptcore.parallel.tensor_parallel import parallelize
from gptcore.training.config import ConfigError, TrainConfig, launch_error
from gptcore.training.trainer import Trainer, decay_groups


def launched_world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 1 when not launched by it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_trainer(cfg: TrainConfig, log=print) -> Trainer:
    """A ParallelTrainer when launched as several processes or asked for model parallelism, else a Trainer."""
    parallel = launched_world_size() > 1 or cfg.tensor_parallel * cfg.pipeline_parallel > 1
    return ParallelTrainer(cfg, log) if parallel else Trainer(cfg, log)


def _init_process_group(cfg: TrainConfig) -> None:
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        raise launch_error(cfg)
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


class ParallelTrainer(Trainer):
    """Trainer over the processes of an initialized (or torchrun-launched) torch.distributed world,
    laid out by the config's tensor_parallel and pipeline_parallel; see the module docstring."""

    def __init__(self, cfg: TrainConfig, log=print):
        cfg.validate()
        _init_process_group(cfg)
        try:
            layout = ParallelLayout(dist.get_world_size(), cfg.tensor_parallel, cfg.pipeline_parallel)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.groups: ParallelGroups = build_groups(layout)
        self.is_main = self.groups.rank == 0
        super().__init__(cfg, log if self.is_main else lambda line: None)

    # ---- setup --------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        device = super()._device()
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    @contextlib.contextmanager
    def _main_first(self):
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main:
            dist.barrier()

    def _peak_flops(self) -> float | None:
        peak = super()._peak_flops()
        return None if peak is None else peak * self.groups.layout.world

    def _where(self) -> str:
        layout = self.groups.layout
        return f"{layout.world} x {self.device.type} (dp {layout.dp} x tp {layout.tp} x pp {layout.pp})"

    def _place(self, model: GPT) -> torch.nn.Module:
        cfg, g = self.cfg, self.groups
        layout, coords = g.layout, g.coords
        try:
            self.accum_steps = check_layout(layout, model.config, cfg.global_batch_size, cfg.micro_batch_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        part = pipeline_stage(model, coords.pp, layout.pp) if layout.pp > 1 else model
        if layout.tp > 1:
            part = parallelize(part, g.tp, cfg.sequence_parallel)
        # This shard's weights (or a LoRA run's adapters), before DataParallel and ZeRO's masters copy them.
        if self._resume is not None and not cfg.lora_rank:
            state, saved = load_shard_for(self._resume, layout.tp, layout.pp, coords.tp, coords.pp)
            self._check_same_model(self._resume, saved)
            part.load_state_dict(state)
        self._adapt(part)
        if self._resume is not None and cfg.lora_rank:
            self._load_adapters(part, self._resume, adapter_file_name(coords.tp, coords.pp, layout.tp, layout.pp))
        part.recompute = cfg.recompute
        part.to(device=self.device, dtype=self.dtype)
        if layout.pp > 1:
            broadcast_tied_embedding(part, g.embedding, g.pp_ranks[0])
        self.tied = part.transformer.wte.weight if layout.pp > 1 and part.pipeline.holds_tied_copy else None
        # Dropout: the tp ranks of a stage draw alike (replicated activations; where their data differ,
        # mappings.rank_dropout_rng forks a stream per rank), the other ranks differ.
        torch.manual_seed(cfg.seed + 100_003 * coords.dp + 1_009 * coords.pp)
        dp_group = g.dp
        if self.device.type == "cuda" and _C.build_info()["nccl_version"] > 0:  # gptcore's NCCL communicator
            dp_group = CommCollectives.create(g.dp, self.device)
        self.ddp = DataParallel(
            part,
            dp_group,
            bucket_mb=cfg.ddp_bucket_mb,
            average=False,
            own_bucket=() if self.tied is None else [self.tied],
        )
        owned = owned_parameters(part) if layout.pp > 1 else list(part.parameters())
        self._counted = {id(p) for p in owned if getattr(p, "tensor_parallel", False) or coords.tp == 0}
        self._prev, self._next = neighbour_ranks(g.pp_ranks, coords.pp)
        return part

    def _make_optimizer(self):
        cfg = self.cfg
        groups = decay_groups(self.model.parameters(), cfg.weight_decay)
        kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        if cfg.zero_stage:
            return ZeroAdamW(self.ddp, groups, stage=cfg.zero_stage, **kwargs)
        return AdamW(groups, **kwargs)

    # ---- one step -----------------------------------------------------------------------------
    def _step_batches(self) -> list[dict[str, torch.Tensor]]:
        micro, dp = self.cfg.micro_batch_size, self.groups.layout.dp
        first = self.step * self.cfg.global_batch_size + self.groups.coords.dp * micro
        return [self._batch(first + k * micro * dp, micro, self.train_data) for k in range(self.accum_steps)]

    def _all_reduce(self, values: list[float], group=None) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=group)
        return t.tolist()

    def _global_count(self, count: int) -> int:
        return int(self._all_reduce([count], self.groups.dp)[0])

    def _forward_backward(self, batches, counts: list[int], total: int, scale: float) -> torch.Tensor:
        g, layout = self.groups, self.groups.layout
        if layout.pp > 1:
            micro = [(b["tokens"], b["labels"]) for b in batches]
            losses = forward_backward_1f1b(
                self.model,
                micro,
                g.pp,
                self._prev,
                self._next,
                num_tokens=total,
                grad_scale=scale,
                no_sync=self.ddp.no_sync,
            )
            loss = float(sum(losses)) if losses else 0.0
        else:
            nonempty = [k for k, count in enumerate(counts) if count]
            loss = 0.0
            for k in nonempty:
                with self.ddp.no_sync() if k != nonempty[-1] else contextlib.nullcontext():
                    _, mean = self.model(batches[k]["tokens"], batches[k]["labels"])
                    part = mean.float() * (counts[k] / total)
                    (part * scale if scale != 1.0 else part).backward()
                loss += float(part.detach())
            if not nonempty:  # every sample of this rank is masked: reduce the zero grads all the same
                self.ddp.sync_grads()
        self._finish_grads()
        # Every tp rank of the last stage holds the loss; the dp ranks hold parts of it.
        return torch.tensor(self._all_reduce([loss])[0] / layout.tp, dtype=torch.float64)

    def _grad_views(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(param, the part of its reduced grad the optimizer reads on this rank)."""
        if self.cfg.zero_stage:
            return [(piece.param, piece.master.main_grad) for piece in self.optimizer.pieces]
        return [(p, p.main_grad) for p in self.model.parameters() if p.requires_grad]

    def _finish_grads(self) -> None:
        """Sequence-parallel grads summed over tp; the tied embedding's copies over the first and last stage."""
        views = self._grad_views()
        if self.cfg.sequence_parallel:
            all_reduce_coalesced([g for p, g in views if getattr(p, "sequence_parallel", False)], self.groups.tp)
        if self.tied is not None:
            if self.cfg.zero_stage:  # each copy is a bucket of its own, sharded alike on both stages
                all_reduce_coalesced([g for p, g in views if p is self.tied], self.groups.embedding)
            else:
                all_reduce_tied_embedding_grad(self.model, self.groups.embedding)

    def _grad_norm(self) -> float:
        counted = [g for p, g in self._grad_views() if id(p) in self._counted and g.numel()]
        square = 0.0
        if counted:
            square = float(torch.stack(torch._foreach_norm(counted, 2, dtype=torch.float32)).square().sum())
        total = self._all_reduce([square])[0]
        if not self.cfg.zero_stage:  # every dp rank holds the whole reduced grad
            total /= self.groups.layout.dp
        return total**0.5

    def _zero_grads(self) -> None:
        self.ddp.zero_grad()

    def _stop_requested(self) -> bool:
        # Every process stops after the same step, or the others would wait for it forever.
        if self._all_reduce([float(self._stop_signal is not None)])[0] > 0:
            self._stop_signal = self._stop_signal or "a signal to another process"
        return self._stop_signal is not None

    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.valid_data is None:
            return {}
        g, layout, micro = self.groups, self.groups.layout, self.cfg.micro_batch_size
        self.model.eval()
        ks = range(g.coords.dp, self.cfg.eval_steps, layout.dp)  # micro batch k on dp rank k % dp
        batches = [self._batch(k * micro, micro, self.valid_data) for k in ks]
        counts = [int((b["labels"] != -100).sum()) for b in batches]
        total = 0.0
        if layout.pp > 1 and batches:
            micro_batches = [(b["tokens"], b["labels"]) for b in batches]
            total = float(
                sum(
                    forward_backward_1f1b(
                        self.model, micro_batches, g.pp, self._prev, self._next, num_tokens=1, forward_only=True
                    )
                )
            )
        elif layout.pp == 1:
            for b, n in zip(batches, counts):
                if n:
                    total += float(self.model(b["tokens"], b["labels"])[1]) * n
        self.model.train()
        total, count = self._all_reduce([total, sum(counts)])
        # Losses: from the last stage's tp ranks; counts: from every rank.
        return self._eval_result(total / layout.tp, count / (layout.tp * layout.pp))

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        cfg, g = self.cfg, self.groups
        if cfg.save is None:
            raise ConfigError("save is not set: no folder to write checkpoints to")
        layout, coords = g.layout, g.coords

        def write(folder: Path) -> None:
            if coords.dp == 0 and cfg.lora_rank:
                name = adapter_file_name(coords.tp, coords.pp, layout.tp, layout.pp)
                save_adapters(self.model, folder / name, cfg.lora_config(), base=cfg.init_from)
            elif coords.dp == 0:
                state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                save_model_shard(state, self.config, folder, coords.tp, coords.pp, layout.tp, layout.pp)
            own = {"rng": self._rng_state()}
            if cfg.zero_stage or coords.dp == 0:
                own["optimizer"] = self.optimizer.state_dict()
            torch.save(own, folder / rank_file_name(g.rank))
            if self.is_main:
                write_layout(folder, layout.tp, layout.pp, layout.dp, cfg.zero_stage)
                self._write_shared(folder, {})

        return write_checkpoint(cfg.save, self.step, write, cfg.keep_last, rank=g.rank, barrier=dist.barrier)

    def load_checkpoint(self, folder: Path) -> None:
        """Restore from a checkpoint; the weights were loaded when the model was placed."""
        self._load_training_state(folder)

    def _saved_state(self, folder: Path, trainer_state: dict) -> tuple[dict | None, dict | None]:
        cfg, g = self.cfg, self.groups
        layout, coords = g.layout, g.coords
        saved = read_layout(folder)
        one_process = "optimizer" in trainer_state
        if one_process:
            saved |= {"data_parallel": 1, "zero_stage": 0}
        same_split = (saved["tensor_parallel"], saved["pipeline_parallel"]) == (layout.tp, layout.pp)
        same_world = same_split and (saved["data_parallel"], saved["zero_stage"]) == (layout.dp, cfg.zero_stage)

        def load(rank: int) -> dict:
            return torch.load(folder / rank_file_name(rank), map_location="cpu", weights_only=False)

        rng = (trainer_state["rng"] if one_process else load(g.rank)["rng"]) if same_world else None
        if not same_split or saved["zero_stage"] is None:  # another split, or weights only
            return None, rng
        if cfg.zero_stage or saved["zero_stage"]:  # shards of the optimizer state: only the same ones fit
            return (load(g.rank)["optimizer"] if same_world else None), rng
        if one_process:
            return trainer_state["optimizer"], rng
        # Without ZeRO every dp rank holds the same optimizer state: any dp size reads dp rank 0's.
        old = ParallelLayout(layout.tp * layout.pp * saved["data_parallel"], layout.tp, layout.pp)
        return load(old.rank(0, coords.tp, coords.pp))["optimizer"], rng
