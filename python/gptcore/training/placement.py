"""Where the model lives and how its micro batches run, as the process layout asks.

`place(model, ...)` returns a `Placement`: the model (this process's part of it), its gradients
part and its forward-backward and forward-only passes. In a world of one that is the whole GPT
on the device (LoRA adapters when asked, float32 grad accumulation for half params), plain
`LocalGradients` and a loop over the micro batches. Over several processes: the GPT cut by
parallel.pipeline_stage and split by parallel.parallelize as the layout asks, this shard's weights
loaded before DataParallel and ZeRO copy them, DataParallel over the dp group (float32 main_grad
buckets all-reduced, or reduce-scattered under ZeRO 2 and 3, while the last micro batch's backward
runs; under ZeRO 3 the params sharded too, each block's gathered around its forward and backward),
`DataParallelGradients` for the reductions the layout adds (sequence-parallel grads over tp, the
tied embedding over the first and last stage, the grad norm counting each parameter once), and
with pipeline stages the 1F1B schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptcore import _C
from gptcore.model import GPT
from gptcore.optim import AdamW
from gptcore.parallel.comm import CommCollectives
from gptcore.parallel.data_parallel import DataParallel, ZeroAdamW
from gptcore.parallel.layout import check_layout
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
from gptcore.training.batches import model_inputs
from gptcore.training.config import ConfigError, TrainConfig
from gptcore.training.processes import Processes
from gptcore.training.step import LocalGradients, accumulate_in_fp32, forward_backward, with_stand_in_target


def _lm_loss(model) -> Callable:
    return lambda batch: model(batch["tokens"], batch["labels"], **model_inputs(batch))[1]


class DataParallelGradients:
    """Grads of a model shard wrapped in DataParallel over its dp group (see the module docstring)."""

    def __init__(self, model: GPT, ddp: DataParallel, processes: Processes, cfg: TrainConfig, tied, counted):
        self.model, self.ddp, self.processes, self.cfg = model, ddp, processes, cfg
        self.tied, self.counted = tied, counted
        self.optimizer = None

    def make_optimizer(self, groups: list[dict], **kwargs):
        if self.cfg.zero_stage:
            self.optimizer = ZeroAdamW(
                self.ddp, groups, stage=self.cfg.zero_stage, offload=self.cfg.offload_optimizer, **kwargs
            )
        else:
            self.optimizer = AdamW(groups, **kwargs)
        return self.optimizer

    def no_sync(self):
        return self.ddp.no_sync()

    def views(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(param, the part of its reduced grad the optimizer reads on this rank)."""
        if self.cfg.zero_stage:
            return [(piece.param, piece.grad) for piece in self.optimizer.pieces]
        return [(p, p.main_grad) for p in self.model.parameters() if p.requires_grad]

    def finish(self, ran_backward: bool) -> None:
        """Data-parallel buckets reduced even when this rank ran no backward (all its samples masked);
        sequence-parallel grads summed over tp; the tied embedding's copies over the first and last stage."""
        groups = self.processes.groups
        if not ran_backward:
            self.ddp.sync_grads()
        views = self.views()
        if self.cfg.sequence_parallel:
            all_reduce_coalesced([g for p, g in views if getattr(p, "sequence_parallel", False)], groups.tp)
        if self.tied is not None:
            if self.cfg.zero_stage:  # each copy is a bucket of its own, sharded alike on both stages
                all_reduce_coalesced([g for p, g in views if p is self.tied], groups.embedding)
            else:
                all_reduce_tied_embedding_grad(self.model, groups.embedding)

    def norm(self) -> float:
        """The global norm: each parameter counted once (tensor-parallel shards on every tp rank,
        replicated ones on tp rank 0, the tied copy once, ZeRO shards once)."""
        counted = [g for p, g in self.views() if id(p) in self.counted and g.numel()]
        square = 0.0
        if counted:
            square = float(torch.stack(torch._foreach_norm(counted, 2, dtype=torch.float32)).square().sum())
        total = self.processes.all_reduce([square])[0]
        if not self.cfg.zero_stage:  # every dp rank holds the whole reduced grad
            total /= self.processes.layout.dp
        return total**0.5

    def zero(self) -> None:
        self.ddp.zero_grad()


@dataclass
class Placement:
    """The model as this process holds it, its gradients part, and how micro batches run through it:
    forward_backward(batches, counts, total, scale) -> this process's loss part, and
    forward_losses(batches, counts) -> the sum of loss x targets over the batches this process scores."""

    model: GPT
    grads: LocalGradients | DataParallelGradients
    accum_steps: int  # micro batches a step on this process
    pipeline: tuple | None = None  # (pp group, previous stage's rank, next stage's rank)
    # ZeRO-3: each forward gathers params with the other dp ranks, so they all run every micro batch,
    # and the same number of them in an evaluation.
    lockstep: bool = False

    def forward_backward(self, batches, counts: list[int], total: int, scale: float) -> float:
        if self.pipeline is None:
            loss_of = _lm_loss(self.model)
            return forward_backward(loss_of, batches, counts, total, scale, self.grads, every_batch=self.lockstep)
        group, prev, next_ = self.pipeline
        micro = [(b["tokens"], b["labels"], model_inputs(b)) for b in batches]
        losses = forward_backward_1f1b(
            self.model, micro, group, prev, next_, num_tokens=total, grad_scale=scale, no_sync=self.grads.no_sync
        )
        self.grads.finish(True)
        return float(sum(losses)) if losses else 0.0

    def forward_losses(self, batches, counts: list[int]) -> float:
        if self.pipeline is None:
            total = 0.0
            for b, n in zip(batches, counts):
                if n:
                    total += float(self.model(b["tokens"], b["labels"], **model_inputs(b))[1]) * n
                elif self.lockstep:
                    b = with_stand_in_target(b)
                    self.model(b["tokens"], b["labels"], **model_inputs(b))
            return total
        if not batches:
            return 0.0
        group, prev, next_ = self.pipeline
        micro = [(b["tokens"], b["labels"], model_inputs(b)) for b in batches]
        return float(sum(forward_backward_1f1b(self.model, micro, group, prev, next_, num_tokens=1, forward_only=True)))


def place(
    model: GPT,
    cfg: TrainConfig,
    processes: Processes,
    device: torch.device,
    dtype: torch.dtype,
    prepare: Callable[[torch.nn.Module], None],
) -> Placement:
    """This process's part of `model` on the device in the training precision. prepare(part), run
    before it is moved or copied, adds LoRA adapters and loads what a checkpoint holds for it."""
    if processes.alone:
        if cfg.offload_optimizer:
            raise ConfigError(
                "offload_optimizer: a run of one process has no ZeRO optimizer to offload; launch several"
                " processes (--nproc-per-node N) with zero_stage >= 1"
            )
        prepare(model)
        model.to(device=device, dtype=dtype)
        if dtype != torch.float32:
            accumulate_in_fp32(model)
        return Placement(model, LocalGradients(model), cfg.grad_accum_steps)
    g, layout, coords = processes.groups, processes.layout, processes.coords
    try:
        accum_steps = check_layout(layout, model.config, cfg.global_batch_size, cfg.micro_batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    part = pipeline_stage(model, coords.pp, layout.pp) if layout.pp > 1 else model
    if layout.tp > 1:
        part = parallelize(part, g.tp, cfg.sequence_parallel)
    prepare(part)
    part.recompute = cfg.recompute
    part.to(device=device, dtype=dtype)
    if layout.pp > 1:
        broadcast_tied_embedding(part, g.embedding, g.pp_ranks[0])
    tied = part.transformer.wte.weight if layout.pp > 1 and part.pipeline.holds_tied_copy else None
    # Dropout: the tp ranks of a stage draw alike (replicated activations; where their data differ,
    # mappings.rank_dropout_rng forks a stream per rank), the other ranks differ.
    torch.manual_seed(cfg.seed + 100_003 * coords.dp + 1_009 * coords.pp)
    dp_group = g.dp
    if device.type == "cuda" and _C.build_info()["nccl_version"] > 0:  # gptcore's NCCL communicator
        dp_group = CommCollectives.create(g.dp, device)
    units = list(part.transformer.h.values()) if cfg.zero_stage == 3 else None  # ZeRO-3 gathers a block at a time
    ddp = DataParallel(
        part,
        dp_group,
        bucket_mb=cfg.ddp_bucket_mb,
        average=False,
        own_bucket=() if tied is None else [tied],
        param_units=units,
    )
    owned = owned_parameters(part) if layout.pp > 1 else list(part.parameters())
    counted = {id(p) for p in owned if getattr(p, "tensor_parallel", False) or coords.tp == 0}
    grads = DataParallelGradients(part, ddp, processes, cfg, tied, counted)
    pipeline = (g.pp, *neighbour_ranks(g.pp_ranks, coords.pp)) if layout.pp > 1 else None
    return Placement(part, grads, accum_steps, pipeline, lockstep=cfg.zero_stage == 3)
