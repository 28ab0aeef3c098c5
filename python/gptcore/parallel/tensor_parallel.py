"""Tensor parallelism for gptcore's GPT (Megatron's layout), with optional sequence parallelism.

Rank r of a tensor-parallel group of size tp holds (Vp: the padded vocab, H: heads):
- wte: rows [r Vp/tp, (r+1) Vp/tp) (VocabParallelEmbedding). The tied head multiplies by those
  of its rows that are real tokens, so each rank gets a vocab shard of the logits, and
  vocab_parallel_cross_entropy takes the loss without gathering them.
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
`reduce_sequence_parallel_grads(model, group)`, or the method of that name of TPGPT and
tp_pipeline.TPPipelineStage. Every parameter carries two flags: `tensor_parallel` (split over
the ranks; a global grad norm counts the others, replicated, once) and `sequence_parallel` (its
gradient is summed by reduce_sequence_parallel_grads).

Dropout: the tp ranks are seeded alike, so dropout on replicated activations (the hidden dropout
without sequence parallelism) draws the same mask on every rank, as it must. Where the ranks hold
different data, the local heads' attention dropout and, with sequence parallelism, the hidden and
embedding dropout of their sequence chunks, dropout runs under `mappings.rank_dropout_rng`: a
stream per rank, seeded from the shared default stream, so the masks are independent across ranks
and an activation recompute draws them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptcore import ops as gptcore_ops
from gptcore.finetune.lora import lora_delta
from gptcore.model import GPT, REFERENCE_OPS, GPTConfig
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


def _ops(use_gptcore_ops: bool):
    return gptcore_ops if use_gptcore_ops else REFERENCE_OPS


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


def enter_column_parallel(x: torch.Tensor, group, sequence_parallel: bool) -> torch.Tensor:
    """The input of a column-parallel linear: x copied into the region, or with sequence parallelism
    this rank's sequence chunk all-gathered along the sequence."""
    return gather_from_sequence(x, group) if sequence_parallel else copy_to_region(x, group)


def column_parallel_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    group,
    sequence_parallel: bool,
    ops,
    activation: str | None = None,
) -> torch.Tensor:
    """act(x W_r^T + b_r) for this rank's rows W_r of W: x replicated [B, T, in] (or this rank's
    sequence chunk [B, T/tp, in] with sequence parallelism) -> [B, T, out_r]."""
    return ops.linear(enter_column_parallel(x, group, sequence_parallel), weight, bias, activation=activation)


class ColumnParallelLinear(nn.Module):
    """F.linear(x, W, b) with W's rows (outputs) split over the group: weight [out/tp, in].
    The parameters are allocated, not initialized: TPGPT loads them from a shard."""

    def __init__(self, in_features, out_features, group, *, bias=True, sequence_parallel=False, use_gptcore_ops=True):
        super().__init__()
        tp = dist.get_world_size(group)
        if out_features % tp:
            raise ValueError(f"ColumnParallelLinear: out_features ({out_features}) is not divisible by {tp} ranks")
        self.group, self.sequence_parallel, self.use_gptcore_ops = group, sequence_parallel, use_gptcore_ops
        self.weight = nn.Parameter(torch.empty(out_features // tp, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features // tp)) if bias else None

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        ops, sp = _ops(self.use_gptcore_ops), self.sequence_parallel
        delta = lora_delta(self, x, self._enter_region)  # a LoRA adapter's rank-r activation enters as x does
        if delta is None:
            return column_parallel_linear(x, self.weight, self.bias, self.group, sp, ops, activation)
        y = ops.linear(self._enter_region(x), self.weight, self.bias, residual=delta)
        return y if activation is None else F.gelu(y, approximate="tanh")  # "gelu", ops.linear's only one

    def _enter_region(self, t: torch.Tensor) -> torch.Tensor:
        return enter_column_parallel(t, self.group, self.sequence_parallel)


class RowParallelLinear(nn.Module):
    """F.linear(x, W, b) with W's columns (inputs) split over the group: weight [out, in/tp], x the
    matching chunk of the last dim; the partial products are summed over the group (reduce-
    scattered along the sequence with sequence parallelism), then the replicated bias is added.
    The parameters are allocated, not initialized: TPGPT loads them from a shard."""

    def __init__(self, in_features, out_features, group, *, bias=True, sequence_parallel=False, use_gptcore_ops=True):
        super().__init__()
        tp = dist.get_world_size(group)
        if in_features % tp:
            raise ValueError(f"RowParallelLinear: in_features ({in_features}) is not divisible by {tp} ranks")
        self.group, self.sequence_parallel, self.use_gptcore_ops = group, sequence_parallel, use_gptcore_ops
        self.weight = nn.Parameter(torch.empty(out_features, in_features // tp))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if bias:
            self.bias.sequence_parallel = sequence_parallel

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, in/tp] -> [B, T, out] (or [B, T/tp, out] with sequence parallelism) + residual."""
        y = self._leave_region(_ops(self.use_gptcore_ops).linear(x, self.weight))
        delta = lora_delta(self, x, self._leave_region)  # a LoRA adapter's partial A x is summed as y is
        if delta is not None:
            y = y + delta
        if self.bias is not None:
            y = y + self.bias
        return y if residual is None else y + residual

    def _leave_region(self, t: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            return reduce_scatter_to_sequence(t, self.group)
        return reduce_from_region(t, self.group)


class VocabParallelEmbedding(nn.Module):
    """nn.Embedding with its rows split over the group: rank r holds ids [vocab_start, vocab_end).
    Each rank looks up the ids it owns (zeros elsewhere) and the group sums the lookups: all-reduced
    [B, T, C], or reduce-scattered to [B, T/tp, C] with sequence parallelism."""

    def __init__(self, num_embeddings, embedding_dim, group, *, sequence_parallel=False):
        super().__init__()
        tp, rank = dist.get_world_size(group), dist.get_rank(group)
        if num_embeddings % tp:
            raise ValueError(f"VocabParallelEmbedding: {num_embeddings} rows are not divisible by {tp} ranks")
        rows = num_embeddings // tp
        self.group, self.sequence_parallel = group, sequence_parallel
        self.vocab_start, self.vocab_end = rank * rows, (rank + 1) * rows
        self.weight = nn.Parameter(torch.empty(rows, embedding_dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        foreign = (idx < self.vocab_start) | (idx >= self.vocab_end)
        local = F.embedding((idx - self.vocab_start).masked_fill(foreign, 0), self.weight)
        local = local.masked_fill(foreign.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence(local, self.group)
        return reduce_from_region(local, self.group)


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


class TPBlock(nn.Module):
    """model.Block over this rank's heads and MLP columns."""

    def __init__(self, config: GPTConfig, group, sequence_parallel: bool):
        super().__init__()
        C, bias = config.n_embd, config.bias
        self.config, self.group, self.sequence_parallel = config, group, sequence_parallel
        self.n_local_head = config.n_head // dist.get_world_size(group)
        parallel = dict(bias=bias, sequence_parallel=sequence_parallel, use_gptcore_ops=config.use_gptcore_ops)
        self.ln_1 = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn = ColumnParallelLinear(C, 3 * C, group, **parallel)
        self.attn.c_proj = RowParallelLinear(C, C, group, **parallel)
        self.ln_2 = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = ColumnParallelLinear(C, 4 * C, group, **parallel)
        self.mlp.c_proj = RowParallelLinear(4 * C, C, group, **parallel)
        for ln in (self.ln_1, self.ln_2):
            for p in ln.parameters():
                p.sequence_parallel = sequence_parallel

    @property
    def ops(self):
        return _ops(self.config.use_gptcore_ops)

    def _project_add(self, x: torch.Tensor, proj: RowParallelLinear, residual: torch.Tensor) -> torch.Tensor:
        if self.training and self.config.dropout > 0:
            y = proj(x)
            with rank_dropout_rng(self.group, self.sequence_parallel):  # a sequence chunk: this rank's own mask
                return residual + F.dropout(y, self.config.dropout, True)
        return proj(x, residual=residual)

    def attention_sublayer(self, x: torch.Tensor) -> torch.Tensor:
        """Causal attention of ln_1(x) over the local heads, merged: [B, T, C/tp] (the whole sequence)."""
        H, D = self.n_local_head, self.config.head_dim
        h = self.ops.layer_norm(x, self.ln_1.weight, self.ln_1.bias, self.config.layer_norm_eps)
        qkv = self.attn.c_attn(h)
        B, T = qkv.shape[:2]
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=-1))
        dropout_p = self.config.attn_dropout if self.training else 0.0
        with rank_dropout_rng(self.group, dropout_p > 0):  # the local heads: this rank's own masks
            y = self.ops.attention(q, k, v, causal=True, dropout_p=dropout_p)
        return y.transpose(1, 2).contiguous().view(B, T, H * D)

    def forward(self, x: torch.Tensor, recompute_attention: bool = False) -> torch.Tensor:
        if recompute_attention:
            y = checkpoint(self.attention_sublayer, x, use_reentrant=False)
        else:
            y = self.attention_sublayer(x)
        x = self._project_add(y, self.attn.c_proj, x)
        h = self.ops.layer_norm(x, self.ln_2.weight, self.ln_2.bias, self.config.layer_norm_eps)
        return self._project_add(self.mlp.c_fc(h, activation="gelu"), self.mlp.c_proj, x)


class TPGPT(nn.Module):
    """This rank's part of a GPT split over a tensor-parallel group (see the module docstring).

    Weights: the shard of full_state (a GPT state dict), or of a fresh GPT(config), so one seed
    gives the same model whatever the tensor-parallel size. forward(idx, targets) returns this
    rank's vocab shard of the logits (gather_logits assembles them) and the loss, the same on
    every rank. `recompute` works as GPT's.
    """

    def __init__(
        self,
        config: GPTConfig,
        group,
        *,
        sequence_parallel: bool = False,
        full_state: Mapping[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        tp_size, tp_rank = dist.get_world_size(group), dist.get_rank(group)
        check_tensor_parallel(config, tp_size)
        if full_state is None:  # drawn first: building the modules below consumes random numbers
            full_state = GPT(config).state_dict()
        self.config, self.group, self.sequence_parallel = config, group, sequence_parallel
        self.tp_size, self.tp_rank = tp_size, tp_rank
        self.transformer = nn.ModuleDict(
            dict(
                wte=VocabParallelEmbedding(
                    config.padded_vocab_size, config.n_embd, group, sequence_parallel=sequence_parallel
                ),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                h=nn.ModuleList(TPBlock(config, group, sequence_parallel) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        for p in (self.transformer.wpe.weight, *self.transformer.ln_f.parameters()):
            p.sequence_parallel = sequence_parallel
        for name, p in self.named_parameters():
            p.tensor_parallel = _split_of(name) is not None
        wte = self.transformer.wte
        self.vocab_rows = min(config.vocab_size, wte.vocab_end) - wte.vocab_start  # real (unpadded) rows held
        self.recompute = "none"
        self.load_state_dict(shard_state_dict(full_state, tp_rank, tp_size))

    @property
    def ops(self):
        return _ops(self.config.use_gptcore_ops)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx [B, T] -> (logits [B, T, vocab_rows]: the columns [wte.vocab_start, + vocab_rows) of
        GPT's logits, mean cross-entropy against targets [B, T] or None; -100 is ignored)."""
        x = self.embed(idx)
        recompute = self.recompute if self.training and torch.is_grad_enabled() else "none"
        if recompute not in ("none", "full", "selective"):
            raise ValueError(f"TPGPT.recompute must be 'none', 'full' or 'selective', got {recompute!r}")
        for block in self.transformer.h:
            if recompute == "full":
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, recompute_attention=recompute == "selective")
        return self.head(x, targets)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings with dropout: [B, T, C], or this rank's [B, T/tp, C] sequence
        chunk with sequence parallelism."""
        seq_len = idx.shape[1]
        if seq_len > self.config.n_positions:
            raise ValueError(f"TPGPT: sequence length {seq_len} exceeds n_positions {self.config.n_positions}")
        if self.sequence_parallel and seq_len % self.tp_size:
            raise ValueError(
                f"TPGPT: with sequence parallelism the sequence length ({seq_len}) must be divisible by the"
                f" tensor-parallel size ({self.tp_size})"
            )
        t = self.transformer
        positions = torch.arange(seq_len, device=idx.device)
        if self.sequence_parallel:
            positions = positions.chunk(self.tp_size)[self.tp_rank]
        x = t.wte(idx) + t.wpe(positions)
        with rank_dropout_rng(self.group, self.sequence_parallel and self.training and self.config.dropout > 0):
            return F.dropout(x, self.config.dropout, self.training)

    def head(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final layer norm, tied vocab-parallel head over the real rows, vocab-parallel loss."""
        t, cfg = self.transformer, self.config
        x = self.ops.layer_norm(x, t.ln_f.weight, t.ln_f.bias, cfg.layer_norm_eps)
        weight = t.wte.weight[: self.vocab_rows]
        logits = column_parallel_linear(x, weight, None, self.group, self.sequence_parallel, self.ops)
        if targets is None:
            return logits, None
        return logits, vocab_parallel_cross_entropy(logits, targets, self.group, vocab_start=t.wte.vocab_start)

    def gather_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Every rank's vocab shard of the logits -> GPT's logits [..., vocab_size] (differentiable)."""
        width = self.config.padded_vocab_size // self.tp_size
        padded = F.pad(logits, (0, width - logits.shape[-1]))
        return gather_from_region(padded, self.group)[..., : self.config.vocab_size]

    def reduce_sequence_parallel_grads(self) -> None:
        """reduce_sequence_parallel_grads(self, self.group): call after the backward(s), before
        clipping. Nothing to do without sequence parallelism."""
        reduce_sequence_parallel_grads(self, self.group)


def reduce_sequence_parallel_grads(module: nn.Module, group) -> None:
    """Sum over the tensor-parallel group the gradients (main_grad where a param has one) of
    module's parameters flagged `sequence_parallel`: those sequence parallelism splits by token
    (layer norms, wpe, row-parallel biases), whose grads each rank has from its own tokens only.
    One all-reduce; call after the backward(s), before clipping. Nothing to do when no parameter
    is flagged (no sequence parallelism) or none has a grad."""
    params = [p for p in module.parameters() if getattr(p, "sequence_parallel", False)]
    all_reduce_coalesced([g for g in map(param_grad, params) if g is not None], group)


def tensor_parallel_model(model: GPT, group, sequence_parallel: bool = False) -> TPGPT:
    """This rank's TPGPT holding its shard of model's weights (same config, same train/eval mode)."""
    tp_model = TPGPT(model.config, group, sequence_parallel=sequence_parallel, full_state=model.state_dict())
    tp_model.recompute = model.recompute
    return tp_model.train(model.training)
