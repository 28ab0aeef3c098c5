"""Move a GPT checkpoint between (tensor parallel, pipeline parallel) layouts.

A layout's state is a dict keyed by (tp_rank, pp_rank): pipeline stage pp_rank's entries
(pipeline.stage_state_dict, GPT's parameter names) cut into tensor-parallel shard tp_rank
(tensor_parallel.shard_state_dict). `split` makes one from a full GPT state dict, `merge` is its
exact inverse, and `reshard` = split(merge(...)) goes from any layout to any other the config
allows (not only to multiples or divisors of the old sizes). `local_state` cuts a full state to
what one pipeline_stage / parallelize'd model holds.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from gptcore.model import GPT, GPTConfig
from gptcore.parallel.pipeline import merge_stage_state_dicts, split_layers, stage_state_dict
from gptcore.parallel.tensor_parallel import check_tensor_parallel, merge_state_dicts, shard_state_dict

Shards = dict[tuple[int, int], dict[str, torch.Tensor]]


def check_layout(config: GPTConfig, tp: int, pp: int) -> None:
    """Raise ValueError unless a GPT with this config splits over tp tensor-parallel ranks and pp
    pipeline stages (n_head and the padded vocab divisible by tp, n_layer by pp)."""
    check_tensor_parallel(config, tp)
    split_layers(config.n_layer, pp)


def _expected_state(config: GPTConfig) -> dict[str, torch.Tensor]:
    """A GPT state dict with this config's names, order and shapes, on the meta device (no storage)."""
    with torch.device("meta"):
        return GPT(config).state_dict()


def check_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """ValueError naming `what` unless state has exactly expected's names and shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the config's GPT: missing {missing[:4]}{' ...' if len(missing) > 4 else ''},"
            f" unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ValueError(f"{what}: {key!r} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}")


def _check_full_state(full_state: Mapping[str, torch.Tensor], config: GPTConfig, what: str) -> None:
    check_state(full_state, _expected_state(config), f"reshard: {what}")


def split(full_state: Mapping[str, torch.Tensor], config: GPTConfig, tp: int, pp: int) -> Shards:
    """The (tp_rank, pp_rank) -> state dict of a full GPT state dict in a tp x pp layout: the
    pipeline split first, then each stage's tensors sharded over tp (new tensors; both the first and
    the last stage get a copy of the tied wte)."""
    check_layout(config, tp, pp)
    _check_full_state(full_state, config, "the full state")
    full = dict(full_state)
    shards: Shards = {}
    for pp_rank in range(pp):
        stage = stage_state_dict(full, pp_rank, pp, config.n_layer)
        for tp_rank in range(tp):
            shards[(tp_rank, pp_rank)] = shard_state_dict(stage, tp_rank, tp)
    return shards


def layout_of(shards: Mapping[tuple[int, int], Mapping[str, torch.Tensor]]) -> tuple[int, int]:
    """(tp, pp) of a complete set of shards; ValueError if a key is malformed or a shard is missing."""
    if not shards:
        raise ValueError("reshard: no shards given")
    for key in shards:
        if not (
            isinstance(key, tuple)
            and len(key) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in key)
        ):
            raise ValueError(f"reshard: shard keys must be (tp_rank, pp_rank) pairs of non-negative ints, got {key!r}")
    tp = 1 + max(t for t, _ in shards)
    pp = 1 + max(p for _, p in shards)
    missing = [(t, p) for p in range(pp) for t in range(tp) if (t, p) not in shards]
    if missing:
        raise ValueError(
            f"reshard: missing shard(s) {missing} (tp_rank, pp_rank) of a tp={tp} x pp={pp} layout;"
            " every rank's shard is needed"
        )
    return tp, pp


def merge(shards: Mapping[tuple[int, int], Mapping[str, torch.Tensor]], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The full GPT state dict from every (tp_rank, pp_rank) shard: the inverse of split. Each
    stage's tp shards are merged, then the stages; the first and last stage's wte copies must be equal."""
    tp, pp = layout_of(shards)
    check_layout(config, tp, pp)
    stages = []
    for pp_rank in range(pp):
        names = list(shards[(0, pp_rank)])
        for tp_rank in range(1, tp):
            other = list(shards[(tp_rank, pp_rank)])
            if set(other) != set(names):
                raise ValueError(
                    f"reshard: shards (0, {pp_rank}) and ({tp_rank}, {pp_rank}) hold different entries:"
                    f" {sorted(set(names) ^ set(other))[:4]}"
                )
        stages.append(merge_state_dicts([shards[(t, pp_rank)] for t in range(tp)]))
    merged = merge_stage_state_dicts(stages)  # raises if the tied wte copies differ
    _check_full_state(merged, config, f"the merged tp={tp} x pp={pp} state")
    return {key: merged[key] for key in _expected_state(config)}  # GPT's order


def reshard(
    shards: Mapping[tuple[int, int], Mapping[str, torch.Tensor]], config: GPTConfig, tp: int, pp: int
) -> Shards:
    """Shards of any layout -> the same weights in a tp x pp layout (split(merge(shards)))."""
    check_layout(config, tp, pp)  # fail before merging
    return split(merge(shards, config), config, tp, pp)


def local_state(model: nn.Module, full_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of full_state (tensors keyed by GPT names: weights, adapters) that `model` holds:
    its pipeline stage's entries (pipeline_stage), this rank's tensor-parallel shards (parallelize)."""
    state = dict(full_state)
    position = getattr(model, "pipeline", None)
    if position is not None:
        state = stage_state_dict(state, position.stage, position.num_stages, model.config.n_layer)
    tp = getattr(model, "tensor_parallel", None)
    if tp is not None:
        state = shard_state_dict(state, tp.rank, tp.size)
    return state
