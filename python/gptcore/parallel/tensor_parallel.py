"""Tensor parallelism for gptcore's GPT (Megatron's layout), with optional sequence parallelism,
applied from outside: `parallelize(model, group, sequence_parallel)` swaps a GPT's (or a pipeline
stage's) modules for parallel ones in place, keeping every parameter name.

Rank r of a tensor-parallel group of size tp holds (Vp: the padded vocab, H: heads):
- wte: rows [r Vp/tp, (r+1) Vp/tp) (VocabParallelEmbedding). The tied head multiplies by those
  of its rows that are real tokens, so each rank gets a vocab shard of the logits, and
  vocab_parallel_cross_entropy takes the loss without gathering them (VocabParallelHead).
- attn.c_attn: the q, k and v rows of heads [r H/tp, (r+1) H/tp) (column parallel); attention
  runs on the local heads; attn.c_proj: the matching input columns (row parallel).
- mlp.c_fc: a chunk of rows, GELU fused (column parallel); mlp.c_proj: the matching columns.
- wpe, the layer norms and the row-parallel biases: replicated.
Parameter names are GPT's, so `shard_state_dict` / `merge_state_dicts` move weights, gradients
or any per-parameter state between one GPT and tp shards, exactly.

Without sequence parallelism the residual stream [B, T, C] is replicated: a column-parallel
linear enters with copy_to_region, a row-parallel one leaves with reduce_from_region, and every
replicated parameter gets its whole gradient on every rank. With `sequence_parallel=True` the
residual stream, layer norms and dropout work on [B, T/tp, C] sequence chunks: all-gather along
the sequence before a column-parallel linear, reduce-scatter after a row-parallel one. The
replicated parameters then see only their rank's tokens, so their gradients must be summed over
the group once per step, after the backward(s) and before clipping and the optimizer step:
`reduce_sequence_parallel_grads(model, group)`. Every parameter carries two flags:
`tensor_parallel` (split over the ranks; a global grad norm counts the others, replicated, once)
and `sequence_parallel` (its gradient is summed by reduce_sequence_parallel_grads).

Dropout: the tp ranks are seeded alike, so dropout on replicated activations (the hidden dropout
without sequence parallelism) draws the same mask on every rank, as it must. Where the ranks hold
different data, the local heads' attention dropout and, with sequence parallelism, the hidden and
embedding dropout of their sequence chunks, dropout runs under `mappings.rank_dropout_rng`
(OwnRandomStream): a stream per rank, seeded from the shared default stream, so the masks are
independent across ranks and an activation recompute draws them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from gptcore.model import GPT, GPTConfig, Linear, op_set
from gptcore.ops.cross_entropy import reduce_token_losses
from gptcore.optim.adamw import param_grad
from gptcore.parallel.mappings import (
    all_gather_along,
    all_reduce_coalesced,
    copy_to_region,
    gather_from_region,
    gather_from_sequence,
    rank_dropout_rng,
    reduce_from_region,
    reduce_scatter_to_sequence,
)

# Parameter name suffix -> (dim, blocks): dim is cut into `blocks` equal blocks and each block
# split evenly over the ranks, rank r taking chunk r of every block. Other parameters are replicated.
_SPLITS = {
    "wte.weight": (0, 1),
    "attn.c_attn.weight": (0, 3),  # rows [q; k; v]: a rank takes its heads' rows of each
    "attn.c_attn.bias": (0, 3),
    "attn.c_proj.weight": (1, 1),
    "mlp.c_fc.weight": (0, 1),
    "mlp.c_fc.bias": (0, 1),
    "mlp.c_proj.weight": (1, 1),
    # LoRA adapters (gptcore.finetune.lora): B's rows as the column-parallel W's, A's columns as the row-parallel W's
    "attn.c_attn.lora_B": (0, 3),
    "mlp.c_fc.lora_B": (0, 1),
    "attn.c_proj.lora_A": (1, 1),
    "mlp.c_proj.lora_A": (1, 1),
}


def _split_of(name: str) -> tuple[int, int] | None:
    return next((split for suffix, split in _SPLITS.items() if name == suffix or name.endswith("." + suffix)), None)


def check_tensor_parallel(config: GPTConfig, tp_size: int) -> None:
    """Raise ValueError unless a GPT with this config splits over tp_size ranks."""
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tensor parallel: the size must be a positive integer, got {tp_size!r}")
    if config.n_head % tp_size:
        raise ValueError(
            f"tensor parallel: n_head ({config.n_head}) must be divisible by the tensor-parallel size ({tp_size})"
        )
    vocab, padded = config.vocab_size, config.padded_vocab_size
    if padded % tp_size:
        raise ValueError(
            f"tensor parallel: the padded vocab ({padded}: vocab_size {vocab} rounded up to a multiple of"
            f" pad_vocab_multiple {config.pad_vocab_multiple}) must be divisible by the tensor-parallel size"
            f" ({tp_size}); make pad_vocab_multiple a multiple of {tp_size}"
        )
    if (tp_size - 1) * (padded // tp_size) >= vocab:
        raise ValueError(
            f"tensor parallel: with vocab_size {vocab} padded to {padded}, the last of {tp_size} ranks would hold"
            " padding rows only; lower pad_vocab_multiple or the tensor-parallel size"
        )


def _check_rank(tp_rank: int, tp_size: int) -> None:
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tensor parallel: rank {tp_rank} is outside [0, {tp_size})")


def shard_state_dict(full_state: Mapping[str, torch.Tensor], tp_rank: int, tp_size: int) -> dict[str, torch.Tensor]:
    """Rank tp_rank's shard of a GPT state dict (or of any tensors keyed by GPT parameter names:
    gradients, optimizer moments), as new tensors. Works from shapes alone; check_tensor_parallel
    validates a config (a head must not straddle ranks)."""
    _check_rank(tp_rank, tp_size)
    shard = {}
    for name, tensor in full_state.items():
        split = _split_of(name)
        if split is None:
            shard[name] = tensor.clone()
            continue
        dim, blocks = split
        if tensor.shape[dim] % (blocks * tp_size):
            raise ValueError(
                f"shard_state_dict: {name} has {tensor.shape[dim]} along dim {dim}, which does not split into"
                f" {blocks} x {tp_size} equal parts"
            )
        part = tensor.unflatten(dim, (blocks, tp_size, -1)).select(dim + 1, tp_rank).flatten(dim, dim + 1)
        shard[name] = part.clone(memory_format=torch.contiguous_format)
    return shard


def merge_state_dicts(shards: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The full GPT state dict from every rank's shard, in rank order (inverse of shard_state_dict);
    replicated tensors are taken from rank 0."""
    full = {}
    for name, tensor in shards[0].items():
        split = _split_of(name)
        if split is None:
            full[name] = tensor.clone()
            continue
        dim, blocks = split
        parts = [shard[name].unflatten(dim, (blocks, -1)) for shard in shards]
        full[name] = torch.stack(parts, dim + 1).flatten(dim, dim + 2)
    return full


def gather_full_state_dict(shard_state: Mapping[str, torch.Tensor], group) -> dict[str, torch.Tensor]:
    """Every rank's shard_state (tensors keyed by GPT parameter names: model.state_dict(), grads,
    optimizer moments) all-gathered and merged: the full tensors, on every rank of the group
    (replicated tensors are this rank's, not gathered). One collective per split tensor."""
    size = dist.get_world_size(group)
    gathered = {
        name: all_gather_along(tensor.unsqueeze(0), 0, group) if _split_of(name) else tensor.expand(size, *tensor.shape)
        for name, tensor in shard_state.items()
    }
    return merge_state_dicts([{name: stack[rank] for name, stack in gathered.items()} for rank in range(size)])


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row loss of logits [N, V_r] holding vocab columns [vocab_start, vocab_start + V_r);
    float32 math, two all-reduces (row max; sum of exponentials with the target logit)."""

    @staticmethod
    def forward(ctx, logits, target, vocab_start, ignore_index, group):
        logits32 = logits.float()
        row_max = logits32.max(dim=-1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits32 - row_max.unsqueeze(-1)
        local = target - vocab_start
        owned = (local >= 0) & (local < logits.shape[-1])
        local = local.masked_fill(~owned, 0)
        target_logit = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~owned, 0.0)
        sums = torch.stack([shifted.exp().sum(dim=-1), target_logit])
        dist.all_reduce(sums, group=group)
        lse = sums[0].log()  # of the shifted logits
        kept = target != ignore_index
        ctx.save_for_backward(logits, (row_max + lse).contiguous(), local, owned & kept, kept)
        return (lse - sums[1]).masked_fill(~kept, 0.0)

    @staticmethod
    def backward(ctx, dloss):
        logits, lse, local, owned, kept = ctx.saved_tensors
        grad = (logits.float() - lse.unsqueeze(-1)).exp()  # this rank's columns of the softmax
        rows = owned.nonzero().squeeze(-1)
        grad[rows, local[rows]] -= 1.0
        grad *= (dloss * kept).unsqueeze(-1)
        return grad.to(logits.dtype), None, None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    group,
    *,
    vocab_start: int | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """F.cross_entropy over vocab columns split across the group, without gathering them.

    logits [..., V_r]: this rank's columns [vocab_start, vocab_start + V_r) of the full logits
    (vocab_start defaults to rank * V_r: equal shards in rank order); target [...] full vocab ids,
    the same on every rank. "mean" averages over the targets that are not ignore_index (NaN when
    there are none), "none" returns the per-row loss shaped like target; the result, replicated
    on every rank, has the logits' dtype. Targets outside the vocab are not detected.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"vocab_parallel_cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"vocab_parallel_cross_entropy: 'target' has shape {list(target.shape)}; expected the leading dimensions"
            f" of 'logits' {list(logits.shape)}"
        )
    if vocab_start is None:
        vocab_start = dist.get_rank(group) * logits.shape[-1]
    rows = logits.reshape(-1, logits.shape[-1])
    loss = _VocabParallelCrossEntropy.apply(rows, target.reshape(-1).long(), vocab_start, ignore_index, group)
    return reduce_token_losses(loss, target, ignore_index, reduction, logits.dtype)


@dataclass(frozen=True)
class TensorParallel:
    """How parallelize split a model: over `group`, with or without sequence parallelism."""

    group: object
    sequence_parallel: bool

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)


def _check_sequence(seq_len: int, group) -> None:
    tp = dist.get_world_size(group)
    if seq_len % tp:
        raise ValueError(
            f"tensor parallel: with sequence parallelism the sequence length ({seq_len}) must be divisible by the"
            f" tensor-parallel size ({tp}): each rank holds a [B, T/tp, C] chunk of the residual stream"
        )


class ParallelLinear(nn.Module):
    """A model.Linear split over a tensor-parallel group, with the collectives of its region; the
    same call, forward(x, activation=None, residual=None). in_features / out_features are the whole
    layer's. The parameters are allocated, not initialized: parallelize loads them from a shard."""

    splits_input = False  # True: W's input columns split (row parallel); False: its output rows

    def __init__(self, linear: Linear, group, sequence_parallel: bool, shape: tuple[int, int], bias_rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group, self.sequence_parallel, self.use_gptcore_ops = group, sequence_parallel, linear.use_gptcore_ops
        like = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight = nn.Parameter(torch.empty(shape, **like))
        self.bias = None if linear.bias is None else nn.Parameter(torch.empty(bias_rows, **like))

    @property
    def ops(self):
        return op_set(self.use_gptcore_ops)

    def forward(self, x: torch.Tensor, activation: str | None = None, residual: torch.Tensor | None = None):
        return self.project(x, self.weight, self.bias, activation, residual)

    def adapter_region(self, h: torch.Tensor) -> torch.Tensor:
        """A low-rank adapter's rank-r activation (finetune.lora) passed through this layer's region."""
        raise NotImplementedError

    def shard_input(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's part of a tensor over the whole layer's input features (last dim)."""
        return t


class ColumnParallelLinear(ParallelLinear):
    """act(x W_r^T + b_r) for this rank's rows W_r of W (weight [out/tp, in]): x replicated
    [B, T, in] (or this rank's sequence chunk [B, T/tp, in] with sequence parallelism) -> [B, T, out/tp]."""

    def __init__(self, linear: Linear, group, sequence_parallel: bool = False):
        tp = dist.get_world_size(group)
        if linear.out_features % tp:
            raise ValueError(
                f"ColumnParallelLinear: out_features ({linear.out_features}) is not divisible by {tp} ranks"
            )
        rows = linear.out_features // tp
        super().__init__(linear, group, sequence_parallel, (rows, linear.in_features), rows)

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """x copied into the region, or this rank's sequence chunk all-gathered along the sequence."""
        return gather_from_sequence(x, self.group) if self.sequence_parallel else copy_to_region(x, self.group)

    def project(self, x, weight, bias, activation=None, residual=None) -> torch.Tensor:
        return self.ops.linear(self.enter(x), weight, bias, activation=activation, residual=residual)

    def adapter_region(self, h: torch.Tensor) -> torch.Tensor:
        return self.enter(h)  # A x enters the region as x does


class RowParallelLinear(ParallelLinear):
    """x W^T + b with W's columns (inputs) split (weight [out, in/tp]), x the matching chunk of the
    last dim; the partial products are summed over the group (reduce-scattered along the sequence
    with sequence parallelism), then the replicated bias and the residual are added."""

    splits_input = True

    def __init__(self, linear: Linear, group, sequence_parallel: bool = False):
        tp = dist.get_world_size(group)
        if linear.in_features % tp:
            raise ValueError(f"RowParallelLinear: in_features ({linear.in_features}) is not divisible by {tp} ranks")
        shape = (linear.out_features, linear.in_features // tp)
        super().__init__(linear, group, sequence_parallel, shape, linear.out_features)

    def leave(self, y: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            return reduce_scatter_to_sequence(y, self.group)
        return reduce_from_region(y, self.group)

    def project(self, x, weight, bias, activation=None, residual=None) -> torch.Tensor:
        if activation is not None:
            raise ValueError("RowParallelLinear: no fused activation (its output is a sum over the ranks)")
        y = self.leave(self.ops.linear(x, weight))
        if bias is not None:
            y = y + bias
        return y if residual is None else y + residual

    def adapter_region(self, h: torch.Tensor) -> torch.Tensor:
        return self.leave(h)  # the partial A x summed over the group, as the output is

    def shard_input(self, t: torch.Tensor) -> torch.Tensor:
        return t.chunk(dist.get_world_size(self.group), dim=-1)[dist.get_rank(self.group)].contiguous()


class VocabParallelEmbedding(nn.Module):
    """nn.Embedding with its rows split over the group: rank r holds ids [vocab_start, vocab_end).
    Each rank looks up the ids it owns (zeros elsewhere) and the group sums the lookups: all-reduced
    [B, T, C], or reduce-scattered to [B, T/tp, C] with sequence parallelism."""

    def __init__(self, embedding: nn.Embedding, group, sequence_parallel: bool = False):
        super().__init__()
        tp, rank = dist.get_world_size(group), dist.get_rank(group)
        num_embeddings, dim = embedding.weight.shape
        if num_embeddings % tp:
            raise ValueError(f"VocabParallelEmbedding: {num_embeddings} rows are not divisible by {tp} ranks")
        rows = num_embeddings // tp
        self.group, self.sequence_parallel = group, sequence_parallel
        self.vocab_start, self.vocab_end = rank * rows, (rank + 1) * rows
        w = embedding.weight
        self.weight = nn.Parameter(torch.empty(rows, dim, device=w.device, dtype=w.dtype))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            _check_sequence(idx.shape[1], self.group)
        foreign = (idx < self.vocab_start) | (idx >= self.vocab_end)
        local = F.embedding((idx - self.vocab_start).masked_fill(foreign, 0), self.weight)
        local = local.masked_fill(foreign.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence(local, self.group)
        return reduce_from_region(local, self.group)


class SequenceChunkEmbedding(nn.Embedding):
    """The position embedding under sequence parallelism: positions [T] of the whole sequence ->
    the embeddings of this rank's chunk of them [T/tp, C]."""

    def __init__(self, embedding: nn.Embedding, group):
        super().__init__(*embedding.weight.shape, _weight=embedding.weight.detach())
        self.group = group

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        _check_sequence(positions.shape[-1], self.group)
        tp, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        return super().forward(positions.chunk(tp, dim=-1)[rank])


class OwnRandomStream(nn.Module):
    """Runs `module` (a dropout, the attention kernel with its dropout) on this rank's own random
    stream (mappings.rank_dropout_rng) when it draws: in training, with dropout p > 0."""

    def __init__(self, module: nn.Module, group):
        super().__init__()
        self.module, self.group = module, group

    @property
    def p(self) -> float:
        return self.module.p

    def forward(self, *args):
        with rank_dropout_rng(self.group, self.training and self.module.p > 0):
            return self.module(*args)


class VocabParallelHead(nn.Module):
    """The tied LM head over a VocabParallelEmbedding's real rows: each rank's vocab shard of the
    logits, and the vocab-parallel cross-entropy (mean over the targets that are not -100, the same
    on every rank). forward(x, embedding, targets) -> (logits, loss): without targets the whole
    logits [..., vocab_size] (gathered: generation, scoring), with targets this rank's shard
    [..., vocab_rows] of the columns [vocab_start, vocab_start + vocab_rows) (the loss needs no gather)."""

    def __init__(self, config: GPTConfig, embedding: VocabParallelEmbedding, group, sequence_parallel: bool):
        super().__init__()
        self.group, self.sequence_parallel, self.use_gptcore_ops = group, sequence_parallel, config.use_gptcore_ops
        self.vocab_size, self.padded_vocab_size = config.vocab_size, config.padded_vocab_size
        self.vocab_start = embedding.vocab_start
        self.vocab_rows = min(config.vocab_size, embedding.vocab_end) - embedding.vocab_start  # real rows held

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor | None = None):
        x = gather_from_sequence(x, self.group) if self.sequence_parallel else copy_to_region(x, self.group)
        logits = op_set(self.use_gptcore_ops).linear(x, embedding[: self.vocab_rows])
        if targets is None:
            return self.gather(logits), None
        return logits, vocab_parallel_cross_entropy(logits, targets, self.group, vocab_start=self.vocab_start)

    def gather(self, logits: torch.Tensor) -> torch.Tensor:
        """Every rank's vocab shard of the logits -> GPT's logits [..., vocab_size] (differentiable)."""
        width = self.padded_vocab_size // dist.get_world_size(self.group)
        padded = F.pad(logits, (0, width - logits.shape[-1]))
        return gather_from_region(padded, self.group)[..., : self.vocab_size]


def parallelize(model: GPT, tp_group, sequence_parallel: bool = False) -> GPT:
    """Tensor parallelism applied to a GPT (or a pipeline stage of one) in place: its block linears
    become column/row-parallel, wte vocab-parallel, the head vocab-parallel with the vocab-parallel
    cross-entropy, each holding this rank's shard of the existing weights under the same names.
    Returns the model; model.tensor_parallel records the group. Apply LoRA afterwards."""
    tp, rank = dist.get_world_size(tp_group), dist.get_rank(tp_group)
    check_tensor_parallel(model.config, tp)
    sp = bool(sequence_parallel)
    full_state = model.state_dict()
    t = model.transformer
    for block in t.h.values():
        for parent, name, kind in (
            (block.attn, "c_attn", ColumnParallelLinear),
            (block.attn, "c_proj", RowParallelLinear),
            (block.mlp, "c_fc", ColumnParallelLinear),
            (block.mlp, "c_proj", RowParallelLinear),
        ):
            linear = getattr(parent, name)
            if type(linear) is not Linear:
                raise TypeError(
                    f"parallelize: {name} is a {type(linear).__name__}; parallelize a plain GPT, then adapt it"
                )
            setattr(parent, name, kind(linear, tp_group, sp))
        block.attn.core = OwnRandomStream(block.attn.core, tp_group)  # the local heads: this rank's own masks
        if sp:
            block.dropout = OwnRandomStream(block.dropout, tp_group)  # a sequence chunk: this rank's own mask
    if "wte" in t:
        t.wte = VocabParallelEmbedding(t.wte, tp_group, sp)
    if sp and "wpe" in t:
        t.wpe = SequenceChunkEmbedding(t.wpe, tp_group)
        t.drop = OwnRandomStream(t.drop, tp_group)
    if "ln_f" in t:
        model.lm_head = VocabParallelHead(model.config, t.wte, tp_group, sp)
    model.load_state_dict(shard_state_dict(full_state, rank, tp))
    for name, p in model.named_parameters():
        p.tensor_parallel = _split_of(name) is not None
        p.sequence_parallel = sp and not p.tensor_parallel  # replicated, and seeing this rank's tokens only
    model.tensor_parallel = TensorParallel(tp_group, sp)
    return model


def reduce_sequence_parallel_grads(module: nn.Module, group) -> None:
    """Sum over the tensor-parallel group the gradients (main_grad where a param has one) of
    module's parameters flagged `sequence_parallel`: those sequence parallelism splits by token
    (layer norms, wpe, row-parallel biases), whose grads each rank has from its own tokens only.
    One all-reduce; call after the backward(s), before clipping. Nothing to do when no parameter
    is flagged (no sequence parallelism) or none has a grad."""
    params = [p for p in module.parameters() if getattr(p, "sequence_parallel", False)]
    all_reduce_coalesced([g for g in map(param_grad, params) if g is not None], group)
