"""Tensor parallelism inside pipeline stages: tp x pp (x dp), with optional sequence parallelism.

A TPPipelineStage is pipeline stage `stage` of `num_stages` (pipeline.split_layers) cut into
tensor-parallel shard `tp_rank` of its group (tensor_parallel.shard_state_dict): the stage's
layers as TPBlocks, the vocab-parallel embedding (wte shard, wpe) on the first stage, ln_f and
the tied vocab-parallel head and cross-entropy on the last. Its state dict is the (tp_rank,
pp_rank) shard of gptcore.parallel.reshard.split, with GPT's parameter names.

It has the interface forward_backward_1f1b uses (stage, num_stages, is_first, is_last, config,
parameters, activation_shape; forward(inputs, targets) returning hidden states, or on the last
stage the float32 cross-entropy summed over the target tokens, the same on every tp rank), so the
schedule runs it unchanged: each tp rank of a stage exchanges activations with the same tp rank
of the neighbouring stages (a pipeline group of build_groups: same dp and tp coordinates).
Without sequence parallelism the residual stream is replicated over the tp group, so every tp
rank sends and receives the whole [B, T, C] activation and its whole gradient.

With `sequence_parallel=True` (tensor_parallel's scheme) the residual stream is this tp rank's
sequence chunk [B, T/tp, C] in the blocks and between the stages too, as in Megatron-LM (whose
p2p shape is [T/tp, B, C] then): the first stage's embedding reduce-scatters to the chunk, each
tp rank sends and receives only its chunk (activation_shape), and the last stage's head gathers
the sequence before the vocab-parallel linear. T must be divisible by tp. The parameters the
chunks split by token (wpe, the layer norms, the row-parallel biases; flagged `sequence_parallel`)
then get partial grads: call `reduce_sequence_parallel_grads()` on every stage once per step,
after forward_backward_1f1b (and its data-parallel reduction) and before clipping and the step.

The tied wte: the first and the last stage of a pipeline hold the same tp shard of it, so
pipeline.broadcast_tied_embedding and all_reduce_tied_embedding_grad work on it as on a
PipelineStage, over build_groups' embedding group (first and last stage of each (dp, tp)
pipeline). Its grads are whole with or without sequence parallelism (not flagged).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from gptcore.model import GPT, GPTConfig
from gptcore.parallel.mappings import rank_dropout_rng
from gptcore.parallel.pipeline import IGNORE_INDEX, PipelineStage, _check_stage, split_layers, stage_state_dict
from gptcore.parallel.tensor_parallel import (
    TPBlock,
    VocabParallelEmbedding,
    _ops,
    _split_of,
    check_tensor_parallel,
    column_parallel_linear,
    reduce_sequence_parallel_grads,
    shard_state_dict,
    vocab_parallel_cross_entropy,
)


class TPPipelineStage(PipelineStage):
    """Pipeline stage `stage` of `num_stages`, this rank's shard over the tensor-parallel `group`.

    source: a GPT, or a config (a GPT(config) is built under the current RNG state, so one seed
    gives the same weights whatever the layout). forward(inputs, targets=None): the first stage
    takes token ids [B, T], the others hidden states of activation_shape(B, T): [B, T, C]
    replicated over the group, or this rank's sequence chunk [B, T/tp, C] with
    sequence_parallel. The last stage returns the float32 cross-entropy summed over the target
    tokens (-100 ignored), the same on every rank, or without targets this rank's vocab shard of
    the logits [B, T, vocab_rows] (the whole sequence); the others return hidden states.

    Every parameter carries `tensor_parallel` (split over the group) and `sequence_parallel`
    (its grad is summed over the group by reduce_sequence_parallel_grads), as TPGPT's do.
    """

    def __init__(self, source: GPT | GPTConfig, stage: int, num_stages: int, group, sequence_parallel: bool = False):
        nn.Module.__init__(self)  # PipelineStage's properties, trunk and schedule interface; own layers
        full = source if isinstance(source, GPT) else GPT(source)
        config = full.config
        _check_stage(stage, num_stages)
        tp_size, tp_rank = dist.get_world_size(group), dist.get_rank(group)
        check_tensor_parallel(config, tp_size)
        self.config, self.stage, self.num_stages = config, stage, num_stages
        self.group, self.tp_size, self.tp_rank = group, tp_size, tp_rank
        self.sequence_parallel = bool(sequence_parallel)
        self.layers = split_layers(config.n_layer, num_stages)[stage]
        self.recompute = full.recompute
        C, sp = config.n_embd, self.sequence_parallel
        modules: dict[str, nn.Module] = {}
        if self.is_first or self.is_last:
            modules["wte"] = VocabParallelEmbedding(config.padded_vocab_size, C, group, sequence_parallel=sp)
        if self.is_first:
            modules["wpe"] = nn.Embedding(config.n_positions, C)
        modules["h"] = nn.ModuleDict({str(i): TPBlock(config, group, sp) for i in self.layers})
        if self.is_last:
            modules["ln_f"] = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=config.bias)
        self.transformer = nn.ModuleDict(modules)
        for name, p in self.named_parameters():
            p.tensor_parallel = _split_of(name) is not None
            # TPBlock flags its layer norms and row-parallel biases; wpe and ln_f are flagged as TPGPT does.
            if name.startswith(("transformer.wpe.", "transformer.ln_f.")):
                p.sequence_parallel = sp
            else:
                p.sequence_parallel = getattr(p, "sequence_parallel", False)
        if "wte" in modules:
            wte = self.transformer.wte
            self.vocab_rows = min(config.vocab_size, wte.vocab_end) - wte.vocab_start  # real rows held
        stage_state = stage_state_dict(full.state_dict(), stage, num_stages, config.n_layer)
        self.load_state_dict(shard_state_dict(stage_state, tp_rank, tp_size))
        self.train(full.training)

    @property
    def ops(self):
        return _ops(self.config.use_gptcore_ops)

    def activation_shape(self, batch: int, seq_len: int) -> tuple[int, ...]:
        """[batch, seq_len, C], or with sequence parallelism this rank's chunk [batch, seq_len/tp, C];
        a ValueError when seq_len does not split over the group."""
        if not self.sequence_parallel:
            return (batch, seq_len, self.config.n_embd)
        if seq_len % self.tp_size:
            raise ValueError(
                f"TPPipelineStage: with sequence parallelism the sequence length ({seq_len}) must be divisible by"
                f" the tensor-parallel size ({self.tp_size}): each tp rank holds and passes on a [B, T/tp, C]"
                " chunk of the residual stream"
            )
        return (batch, seq_len // self.tp_size, self.config.n_embd)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """First stage: token + position embeddings with dropout, [B, T, C] (replicated), or this
        rank's sequence chunk [B, T/tp, C] with sequence parallelism (as TPGPT.embed)."""
        cfg, t = self.config, self.transformer
        seq_len = idx.shape[1]
        if seq_len > cfg.n_positions:
            raise ValueError(f"TPPipelineStage: sequence length {seq_len} exceeds n_positions {cfg.n_positions}")
        self.activation_shape(*idx.shape)  # with sequence parallelism: T must split over the group
        positions = torch.arange(seq_len, device=idx.device)
        if self.sequence_parallel:
            positions = positions.chunk(self.tp_size)[self.tp_rank]
        x = t.wte(idx) + t.wpe(positions)
        with rank_dropout_rng(self.group, self.sequence_parallel and self.training and cfg.dropout > 0):
            return F.dropout(x, cfg.dropout, self.training)

    def head(self, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The tied vocab-parallel head: this rank's vocab shard of the logits, or with targets the
        float32 cross-entropy summed over the target tokens (the same on every rank). With sequence
        parallelism x is this rank's sequence chunk, gathered before the linear."""
        cfg, t = self.config, self.transformer
        x = self.ops.layer_norm(x, t.ln_f.weight, t.ln_f.bias, cfg.layer_norm_eps)
        weight = t.wte.weight[: self.vocab_rows]  # the tied head over this rank's real rows
        logits = column_parallel_linear(x, weight, None, self.group, self.sequence_parallel, self.ops)
        if targets is None:
            return logits
        loss = vocab_parallel_cross_entropy(
            logits, targets, self.group, vocab_start=t.wte.vocab_start, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return loss.float().sum()

    def reduce_sequence_parallel_grads(self) -> None:
        """Sum over the tp group the grads (main_grad where a param has one) of the parameters
        flagged sequence_parallel (tensor_parallel.reduce_sequence_parallel_grads): once per step,
        after forward_backward_1f1b and any data-parallel reduction, before clipping. Nothing to do
        without sequence parallelism."""
        reduce_sequence_parallel_grads(self, self.group)
