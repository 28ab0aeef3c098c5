"""Pipeline parallelism: GPT layers split into stages, run by a 1F1B schedule over micro batches.

`pipeline_stage(model, s, S)` cuts stage s of S from a GPT in place: it holds the layers
`split_layers(n_layer, S)[s]`; the first stage also holds the embeddings (wte, wpe), the last
the final layer norm and the head. The head is tied to wte, so the
first and the last stage each keep a copy of wte: broadcast from the first stage at init, their
grads summed over the embedding group (the first and last stage's ranks) after each backward, so
both copies take the same update (Megatron's scheme).

A stage's parameters keep the full model's names (`transformer.h.5.attn.c_attn.weight` on
whichever stage runs layer 5), so a stage's state dict is a slice of the full GPT's.

Communication is explicit: the schedule takes the pipeline's process group and the global ranks of
the neighbouring stages. Activations and their grads go point to point with one fixed shape,
`activation_shape(stage, micro_B, T)` ([micro_B, T, C]; a tensor-parallel stage with sequence
parallelism sends its [micro_B, T/tp, C] chunk), and the parameters' dtype; every stage knows them
from its micro batches and the config, so no shape is exchanged.

One loss convention: the model's mean over a micro batch's target tokens; the schedule weights
each micro batch's mean by its share of the batch's target tokens (stage_loss), so the micro
batches add up to the batch's mean loss.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from gptcore.model import GPT, IGNORE_INDEX, Layers
from gptcore.optim.adamw import param_grad

_LAYER_KEY = re.compile(r"transformer\.h\.(\d+)\.")


def split_layers(n_layer: int, num_stages: int) -> list[range]:
    """Contiguous layer ranges of equal size, one per stage.

    Stages are equal (as gptcore.parallel.layout.check_layout requires): each stage's activations
    and its schedule slots have one size, so an uneven split would only idle the others.
    """
    if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
        raise ValueError(f"pipeline: the number of stages must be a positive integer, got {num_stages!r}")
    if n_layer < num_stages:
        raise ValueError(
            f"pipeline: {n_layer} layers cannot fill {num_stages} stages; every stage needs at least one"
            " layer (n_layer >= pipeline parallel size)"
        )
    if n_layer % num_stages:
        fits = [p for p in range(1, n_layer + 1) if n_layer % p == 0]
        raise ValueError(
            f"pipeline: n_layer ({n_layer}) is not divisible by {num_stages} stages; stages hold equal numbers"
            f" of layers, so use a pipeline size in {fits}"
        )
    per_stage = n_layer // num_stages
    return [range(s * per_stage, (s + 1) * per_stage) for s in range(num_stages)]


def neighbour_ranks(pipeline_ranks: Sequence[int], stage: int) -> tuple[int | None, int | None]:
    """The global ranks of the stages before and after `stage` in a pipeline given in stage order
    (ParallelGroups.pp_ranks); None past either end."""
    _check_stage(stage, len(pipeline_ranks))
    prev_rank = pipeline_ranks[stage - 1] if stage > 0 else None
    next_rank = pipeline_ranks[stage + 1] if stage < len(pipeline_ranks) - 1 else None
    return prev_rank, next_rank


def _check_stage(stage: int, num_stages: int) -> None:
    if not 0 <= stage < num_stages:
        raise ValueError(f"pipeline: stage {stage} is out of range for {num_stages} stages")


def _stages_holding(key: str, layer_stage: list[int], num_stages: int) -> set[int]:
    """The stages whose state holds the full-model entry `key` (two for the tied wte)."""
    last = num_stages - 1
    if key == "transformer.wte.weight":
        return {0, last}
    if key.startswith("transformer.wpe."):
        return {0}
    if key.startswith("transformer.ln_f."):
        return {last}
    match = _LAYER_KEY.match(key)
    if match is None:
        raise ValueError(f"pipeline: {key!r} is not a GPT state entry")
    layer = int(match.group(1))
    if layer >= len(layer_stage):
        raise ValueError(f"pipeline: {key!r} belongs to layer {layer}, but the model has n_layer={len(layer_stage)}")
    return {layer_stage[layer]}


def stage_state_dict(
    full_state: dict[str, torch.Tensor], stage: int, num_stages: int, n_layer: int
) -> dict[str, torch.Tensor]:
    """The entries of a full GPT state dict that stage `stage` of `num_stages` holds, same names,
    same tensors (not copies), in the full state's order. Both the first and the last stage get wte."""
    _check_stage(stage, num_stages)
    layer_stage = [s for s, layers in enumerate(split_layers(n_layer, num_stages)) for _ in layers]
    return {k: v for k, v in full_state.items() if stage in _stages_holding(k, layer_stage, num_stages)}


def merge_stage_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The full GPT state dict from every stage's, given in stage order: the inverse of
    stage_state_dict. An entry two stages hold (the tied wte) must be equal on both."""
    merged: dict[str, torch.Tensor] = {}
    for stage, state in enumerate(states):
        for key, value in state.items():
            if key not in merged:
                merged[key] = value
            elif not torch.equal(merged[key], value):
                raise ValueError(
                    f"pipeline: {key!r} differs between stage {stage} and an earlier stage; the tied embedding"
                    " copies must be kept in sync (broadcast_tied_embedding, all_reduce_tied_embedding_grad)"
                )
    return merged


@dataclass(frozen=True)
class PipelinePosition:
    """Where pipeline_stage put a model: stage `stage` of `num_stages`."""

    stage: int
    num_stages: int

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    @property
    def holds_tied_copy(self) -> bool:
        """True on the first and last stage of a pipeline of two or more: its wte is one of two copies."""
        return self.num_stages > 1 and (self.is_first or self.is_last)


def pipeline_stage(model: GPT, stage: int, num_stages: int) -> GPT:
    """Stage `stage` of `num_stages` cut from a GPT in place (torchtitan's pattern): it keeps the
    layers split_layers gives it, under their names (transformer.h.<layer>), the embeddings (wte,
    wpe) on the first stage, ln_f and the head on the last, which holds wte too (the head is tied
    to it). A stage's state dict is stage_state_dict of the full model's. GPT.forward then takes
    token ids on the first stage and hidden states [B, T, C] on the others, and returns hidden
    states except on the last, which returns (logits, mean loss). Returns the model;
    model.pipeline records the position. A tensor-parallel stage: parallelize(pipeline_stage(...))."""
    config = model.config
    _check_stage(stage, num_stages)
    layers = split_layers(config.n_layer, num_stages)[stage]
    t = model.transformer
    if "pipeline" in vars(model) or len(t.h) != config.n_layer:
        raise ValueError("pipeline_stage: the model is already a pipeline stage; cut stages from the whole GPT")
    t.h = Layers({str(i): t.h[i] for i in layers})
    position = PipelinePosition(stage, num_stages)
    if not position.is_first:
        del t["wpe"], t["drop"]
    if not (position.is_first or position.is_last):
        del t["wte"]
    if not position.is_last:
        del t["ln_f"]
    model.pipeline = position
    return model


def owned_parameters(stage: GPT) -> list[nn.Parameter]:
    """The parameters less the last stage's wte copy: over all stages, every parameter of the
    full model exactly once (grad norms, parameter counts)."""
    position = stage.pipeline
    copy = stage.transformer.wte.weight if position.holds_tied_copy and not position.is_first else None
    return [p for p in stage.parameters() if p is not copy]


def activation_shape(stage: GPT, batch: int, seq_len: int) -> tuple[int, ...]:
    """The shape of the hidden states a stage passes on (and the next stage takes) for micro
    batches of [batch, seq_len] ids: [batch, seq_len, C], or with sequence parallelism
    (gptcore.parallel.parallelize) this tensor-parallel rank's chunk [batch, seq_len / tp, C];
    a ValueError when seq_len does not split over the tp group."""
    tp = getattr(stage, "tensor_parallel", None)
    if tp is None or not tp.sequence_parallel:
        return (batch, seq_len, stage.config.n_embd)
    if seq_len % tp.size:
        raise ValueError(
            f"pipeline: with sequence parallelism the sequence length ({seq_len}) must be divisible by"
            f" the tensor-parallel size ({tp.size}): each tp rank holds and passes on a [B, T/tp, C]"
            " chunk of the residual stream"
        )
    return (batch, seq_len // tp.size, stage.config.n_embd)


def stage_loss(stage: GPT, x: torch.Tensor, targets: torch.Tensor, num_tokens: int, **inputs) -> torch.Tensor:
    """The last stage's share of a batch's mean loss: the model's mean over this micro batch's
    target tokens times their count, over the batch's num_tokens (float32). A micro batch without
    target tokens adds zero (its mean is undefined) and zero grads. inputs: GPT.forward's packed
    document arguments (cu_seqlens, position_ids)."""
    count = int((targets != IGNORE_INDEX).sum())
    if count == 0:
        logits, _ = stage(x, **inputs)
        return logits.float().sum() * 0.0
    _, mean = stage(x, targets, **inputs)
    return mean.float() * (count / num_tokens)


def broadcast_tied_embedding(stage: GPT, embedding_group: dist.ProcessGroup | None, first_stage_rank: int) -> None:
    """At init: the last stage's wte copy takes the first stage's values. embedding_group: the first
    and last stage (ParallelGroups.embedding); first_stage_rank: a global rank. A no-op on middle
    stages and when the pipeline has one stage."""
    if stage.pipeline.holds_tied_copy:
        dist.broadcast(stage.transformer.wte.weight.detach(), src=first_stage_rank, group=embedding_group)


def all_reduce_tied_embedding_grad(stage: GPT, embedding_group: dist.ProcessGroup | None) -> None:
    """After the backward: both wte copies get the sum of the embedding's and the head's grads, the
    grad of the one tied weight. Reads `main_grad` where the param has one (as the optimizer does).
    A no-op on middle stages and when the pipeline has one stage."""
    if not stage.pipeline.holds_tied_copy:
        return
    weight = stage.transformer.wte.weight
    grad = param_grad(weight)
    if grad is None:  # no backward reached this copy: it contributes zero
        grad = weight.grad = torch.zeros_like(weight)
    dist.all_reduce(grad, group=embedding_group)


def schedule_1f1b(num_micro_batches: int, stage: int, num_stages: int) -> list[tuple[str, int]]:
    """The order in which a stage runs forwards ("F", k) and backwards ("B", k) of micro batches k:
    num_stages - stage - 1 warmup forwards (fewer when there are fewer micro batches), then a
    forward and a backward in turn, then the remaining backwards. A stage holds the activations of
    at most num_stages - stage micro batches, not of all of them as with all forwards first (GPipe)."""
    _check_stage(stage, num_stages)
    warmup = min(num_stages - stage - 1, num_micro_batches)
    order = [("F", k) for k in range(warmup)]
    for k in range(num_micro_batches - warmup):
        order += [("F", warmup + k), ("B", k)]
    return order + [("B", k) for k in range(num_micro_batches - warmup, num_micro_batches)]


class _Neighbours:
    """Point-to-point transfers with the previous and next stage. Receives block; sends are
    asynchronous, so a stage blocks only on what it needs next, and 1F1B's order cannot deadlock."""

    def __init__(self, group, prev_rank, next_rank, shape, dtype, device):
        self.group, self.prev_rank, self.next_rank = group, prev_rank, next_rank
        self.shape, self.dtype, self.device = shape, dtype, device
        self.sends: list[tuple[dist.Work, torch.Tensor]] = []  # tensors kept alive until sent

    def recv_activation(self) -> torch.Tensor:
        return self._recv(self.prev_rank)

    def recv_grad(self) -> torch.Tensor:
        return self._recv(self.next_rank)

    def send_activation(self, x: torch.Tensor) -> None:
        self._send(x, self.next_rank, "activation")

    def send_grad(self, grad: torch.Tensor) -> None:
        self._send(grad, self.prev_rank, "activation grad")

    def finish(self) -> None:
        for work, _ in self.sends:
            work.wait()
        self.sends = []

    def _recv(self, src: int) -> torch.Tensor:
        buffer = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        dist.recv(buffer, src=src, group=self.group)
        return buffer

    def _send(self, x: torch.Tensor, dst: int, what: str) -> None:
        if x.shape != self.shape or x.dtype != self.dtype:
            raise RuntimeError(
                f"pipeline: the {what} to send is {x.dtype} {list(x.shape)}; the receiving stage expects"
                f" {self.dtype} {list(self.shape)} (the parameters' dtype, activation_shape(stage, micro_B, T))"
            )
        self.sends = [(work, t) for work, t in self.sends if not work.is_completed()]
        x = x.detach().contiguous()
        self.sends.append((dist.isend(x, dst=dst, group=self.group), x))


def _check_micro_batches(stage: GPT, micro_batches) -> torch.Size:
    """The one [micro_B, T] shape of every micro batch's ids and targets."""
    if len(micro_batches) == 0:
        raise ValueError("forward_backward_1f1b: no micro batches")
    shape = None
    for k, (idx, targets, *_) in enumerate(micro_batches):
        if idx.dim() != 2:
            raise ValueError(
                f"forward_backward_1f1b: micro batch {k} has ids of shape {list(idx.shape)}; expected [B, T]"
            )
        if targets is None or targets.shape != idx.shape:
            got = None if targets is None else list(targets.shape)
            raise ValueError(
                f"forward_backward_1f1b: micro batch {k} has targets of shape {got};"
                f" expected its ids' {list(idx.shape)}"
            )
        if shape is None:
            shape = idx.shape
        elif idx.shape != shape:
            raise ValueError(
                f"forward_backward_1f1b: micro batch {k} has shape {list(idx.shape)}, micro batch 0 {list(shape)};"
                " every micro batch must have the same shape (activations pass between stages in one fixed shape)"
            )
    if shape[1] > stage.config.n_positions:
        raise ValueError(
            f"forward_backward_1f1b: sequence length {shape[1]} exceeds n_positions {stage.config.n_positions}"
        )
    return shape


def forward_backward_1f1b(
    stage: GPT,
    micro_batches: Sequence[tuple],
    group: dist.ProcessGroup | None,
    prev_rank: int | None,
    next_rank: int | None,
    *,
    num_tokens: int | None = None,
    grad_scale: float = 1.0,
    forward_only: bool = False,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> list[torch.Tensor]:
    """Forward and backward of one batch through the pipeline, micro batch by micro batch, in the
    order schedule_1f1b gives this stage; grads accumulate into the stage's parameters.

    micro_batches: the same (ids [B, T], targets [B, T]) list on every stage of the pipeline (the
    first stage reads the ids, the last the targets, all of them the shape); a micro batch of packed
    documents is (ids, targets, inputs), inputs GPT.forward's keyword arguments {"cu_seqlens",
    "position_ids"}, which every stage passes to its part of the model (each stage's attention
    needs the boundaries). group: the pipeline's
    process group; prev_rank / next_rank: the global ranks of the neighbouring stages, None on the
    first / last stage. The loss is the mean over the batch's target tokens: each micro batch's
    mean times its token count, over num_tokens (stage_loss; default: the targets != -100 over all
    micro batches; pass the count over more ranks when the batch spans them). grad_scale multiplies
    the loss the backward starts from (loss scaling). forward_only: forwards without grad, for evaluation. no_sync: a
    context manager factory (DataParallel.no_sync when the stage is data parallel) entered around
    every backward but the batch's last, so the data-parallel grad reduction runs once, on the
    grads of all the micro batches (Megatron's no_sync_func).

    Returns on the last stage each micro batch's detached loss (their sum is the batch's mean loss,
    unscaled), elsewhere []. The tied embedding grads are not summed here: call
    all_reduce_tied_embedding_grad afterwards (after any data parallel grad reduction too).
    """
    B, T = _check_micro_batches(stage, micro_batches)
    position = stage.pipeline
    if (prev_rank is None) != position.is_first or (next_rank is None) != position.is_last:
        raise ValueError(
            f"forward_backward_1f1b: stage {position.stage} of {position.num_stages} got prev_rank={prev_rank},"
            f" next_rank={next_rank}; prev_rank is None exactly on the first stage, next_rank on the last"
        )
    if num_tokens is None:
        num_tokens = sum(int((batch[1] != IGNORE_INDEX).sum()) for batch in micro_batches)
    num_tokens = max(num_tokens, 1)
    param = next(stage.parameters())
    shape = activation_shape(stage, B, T)  # checked on every stage before any transfer
    neighbours = _Neighbours(group, prev_rank, next_rank, shape, param.dtype, param.device)
    num_micro_batches = len(micro_batches)
    if forward_only:
        order = [("F", k) for k in range(num_micro_batches)]
    else:
        order = schedule_1f1b(num_micro_batches, position.stage, position.num_stages)
    in_flight: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # k -> (stage input, stage output)
    losses = []
    with torch.no_grad() if forward_only else contextlib.nullcontext():
        for action, k in order:
            if action == "F":
                idx, targets, *rest = micro_batches[k]
                inputs = rest[0] if rest else {}
                x = idx if position.is_first else neighbours.recv_activation().requires_grad_(not forward_only)
                if position.is_last:
                    out = stage_loss(stage, x, targets, num_tokens, **inputs)
                    losses.append(out.detach())
                else:
                    out = stage(x, **inputs)
                    neighbours.send_activation(out)
                if not forward_only:
                    in_flight[k] = (x, out)
            else:
                x, out = in_flight.pop(k)
                # Backwards run in micro batch order, so k == num_micro_batches - 1 is the last.
                deferred = no_sync is not None and k < num_micro_batches - 1
                with no_sync() if deferred else contextlib.nullcontext():
                    if position.is_last:
                        torch.autograd.backward(out * grad_scale if grad_scale != 1.0 else out)
                    else:
                        torch.autograd.backward(out, neighbours.recv_grad())
                if not position.is_first:
                    neighbours.send_grad(x.grad)
        neighbours.finish()
    return losses
