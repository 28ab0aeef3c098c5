"""Tensor parallelism inside pipeline stages: tp x pp (x dp).

A TPPipelineStage is pipeline stage `stage` of `num_stages` (pipeline.split_layers) cut into
tensor-parallel shard `tp_rank` of its group (tensor_parallel.shard_state_dict): the stage's
layers as TPBlocks, the vocab-parallel embedding (wte shard, wpe) on the first stage, ln_f and
the tied vocab-parallel head and cross-entropy on the last. Its state dict is the (tp_rank,
pp_rank) shard of gptcore.parallel.reshard.split, with GPT's parameter names.

It has the interface forward_backward_1f1b uses (stage, num_stages, is_first, is_last, config,
parameters; forward(inputs, targets) returning hidden states [B, T, C], or on the last stage the
float32 cross-entropy summed over the target tokens, the same on every tp rank), so the schedule
runs it unchanged: each tp rank of a stage exchanges activations with the same tp rank of the
neighbouring stages (a pipeline group of build_groups: same dp and tp coordinates). Without
sequence parallelism the residual stream is replicated over the tp group, so every tp rank sends
and receives the whole [B, T, C] activation and its whole gradient.

The tied wte: the first and the last stage of a pipeline hold the same tp shard of it, so
pipeline.broadcast_tied_embedding and all_reduce_tied_embedding_grad work on it as on a
PipelineStage, over build_groups' embedding group (first and last stage of each (dp, tp)
pipeline).

Sequence parallelism is not supported here yet (it would change the activation shape the
schedule sends to [B, T/tp, C] and need reduce_sequence_parallel_grads per stage).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from gptcore.model import GPT, GPTConfig
from gptcore.parallel.pipeline import IGNORE_INDEX, PipelineStage, _check_stage, split_layers, stage_state_dict
from gptcore.parallel.tensor_parallel import (
    TPBlock,
    VocabParallelEmbedding,
    _ops,
    _split_of,
    check_tensor_parallel,
    column_parallel_linear,
    shard_state_dict,
    vocab_parallel_cross_entropy,
)


class TPPipelineStage(PipelineStage):
    """Pipeline stage `stage` of `num_stages`, this rank's shard over the tensor-parallel `group`.

    source: a GPT, or a config (a GPT(config) is built under the current RNG state, so one seed
    gives the same weights whatever the layout). forward(inputs, targets=None): the first stage
    takes token ids [B, T], the others hidden states [B, T, C] (replicated over the group). The last
    stage returns the float32 cross-entropy summed over the target tokens (-100 ignored), the same
    on every rank, or without targets this rank's vocab shard of the logits [B, T, vocab_rows];
    the others return hidden states [B, T, C].
    """

    def __init__(self, source: GPT | GPTConfig, stage: int, num_stages: int, group):
        nn.Module.__init__(self)  # PipelineStage's properties, trunk and schedule interface; own layers
        full = source if isinstance(source, GPT) else GPT(source)
        config = full.config
        _check_stage(stage, num_stages)
        tp_size, tp_rank = dist.get_world_size(group), dist.get_rank(group)
        check_tensor_parallel(config, tp_size)
        self.config, self.stage, self.num_stages = config, stage, num_stages
        self.group, self.tp_size, self.tp_rank = group, tp_size, tp_rank
        self.sequence_parallel = False
        self.layers = split_layers(config.n_layer, num_stages)[stage]
        self.recompute = full.recompute
        C = config.n_embd
        modules: dict[str, nn.Module] = {}
        if self.is_first or self.is_last:
            modules["wte"] = VocabParallelEmbedding(config.padded_vocab_size, C, group)
        if self.is_first:
            modules["wpe"] = nn.Embedding(config.n_positions, C)
        modules["h"] = nn.ModuleDict({str(i): TPBlock(config, group, False) for i in self.layers})
        if self.is_last:
            modules["ln_f"] = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=config.bias)
        self.transformer = nn.ModuleDict(modules)
        for name, p in self.named_parameters():
            p.tensor_parallel = _split_of(name) is not None
            p.sequence_parallel = False
        if "wte" in modules:
            wte = self.transformer.wte
            self.vocab_rows = min(config.vocab_size, wte.vocab_end) - wte.vocab_start  # real rows held
        stage_state = stage_state_dict(full.state_dict(), stage, num_stages, config.n_layer)
        self.load_state_dict(shard_state_dict(stage_state, tp_rank, tp_size))
        self.train(full.training)

    @property
    def ops(self):
        return _ops(self.config.use_gptcore_ops)

    def head(self, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The tied vocab-parallel head: this rank's vocab shard of the logits, or with targets the
        float32 cross-entropy summed over the target tokens (the same on every rank)."""
        cfg, t = self.config, self.transformer
        x = self.ops.layer_norm(x, t.ln_f.weight, t.ln_f.bias, cfg.layer_norm_eps)
        weight = t.wte.weight[: self.vocab_rows]  # the tied head over this rank's real rows
        logits = column_parallel_linear(x, weight, None, self.group, False, self.ops)
        if targets is None:
            return logits
        loss = vocab_parallel_cross_entropy(
            logits, targets, self.group, vocab_start=t.wte.vocab_start, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return loss.float().sum()
