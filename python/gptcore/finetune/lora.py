"""LoRA (Hu et al., 2021): low-rank adapters on the block linears of a frozen GPT.

A target linear W [out, in], b gains lora_A [r, in] and lora_B [out, r] and computes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

without forming W + BA: two thin GEMMs through the rank r. Targets: qkv (attn.c_attn), attn_out
(attn.c_proj), mlp_in (mlp.c_fc), mlp_out (mlp.c_proj). A starts as Hugging Face peft's (Kaiming
uniform, a = sqrt(5)) and B at zero, so a fresh adapter leaves the model's outputs unchanged.

apply_lora wraps each target linear in a LoRALinear (LoRA depends on the model, never the
reverse: litgpt's direction). It holds the base's weight and bias under their names beside lora_A
and lora_B (transformer.h.0.attn.c_attn.lora_A, ...); merged into W, the adapter leaves the base's
fused bias / GELU / residual epilogue.

Tensor parallelism (Megatron's layout, tensor_parallel's module docstring). A column-parallel
target (qkv, mlp_in: W's rows split) keeps A whole and takes B's rows as W's (c_attn's q, k and v
blocks included); the rank-r activation A dropout(x) enters the parallel region as x does
(copy_to_region, or gather_from_sequence from the sequence chunk with sequence parallelism). A
row-parallel target (attn_out, mlp_out: W's columns split) takes A's matching columns and keeps B
whole; the partial A x is summed over the group before B (reduce_from_region, or
reduce_scatter_to_sequence with sequence parallelism), as the base linear's output is. The
replicated factor that then sees only its rank's tokens (A of column-parallel, B of row-parallel
targets, with sequence parallelism) is flagged `sequence_parallel`, so
reduce_sequence_parallel_grads sums its gradient; the split factor is flagged `tensor_parallel`.
The tensor_parallel._SPLITS entries of lora_A / lora_B let shard_state_dict and merge_state_dicts
move adapters between layouts.

Adapter file (`save_adapters` / `load_adapters`; the format is gptcore.checkpoint.adapters'):
safetensors holding lora_state_dict (full GPT names, whole tensors), the LoRAConfig as JSON under the
metadata key "gptcore_lora" and the base model's path under "gptcore_lora_base".
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcore.checkpoint.adapters import read_adapters, save_adapter_file
from gptcore.checkpoint.names import ADAPTER_CONFIG_KEY
from gptcore.model import Linear
from gptcore.parallel.reshard import local_state
from gptcore.parallel.tensor_parallel import ParallelLinear

# Target name -> the linear's path inside a block.
TARGETS = {"qkv": "attn.c_attn", "attn_out": "attn.c_proj", "mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj"}
_FACTORS = (".lora_A", ".lora_B")


@dataclass(frozen=True)
class LoRAConfig:
    """rank r of the adapters; alpha: the term is scaled by alpha / r (None: alpha = r, scale 1);
    dropout on the adapters' input in training; targets: which block linears get one."""

    rank: int
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(TARGETS)

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"LoRAConfig.rank must be a positive integer, got {self.rank!r}")
        alpha = self.alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0):
            raise ValueError(f"LoRAConfig.alpha must be a positive number or None (alpha = rank), got {alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            raise ValueError(
                f"LoRAConfig.targets must be a tuple of names, got the string {self.targets!r};"
                f" choose from {', '.join(TARGETS)}"
            )
        targets = tuple(self.targets)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"LoRAConfig.targets: unknown {unknown}; choose from {', '.join(TARGETS)}")
        if not targets or len(set(targets)) != len(targets):
            raise ValueError(f"LoRAConfig.targets must name each of {', '.join(TARGETS)} at most once, got {targets}")
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        """alpha / rank: the factor on B A x."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoRAConfig:
        fields = json.loads(text)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"LoRAConfig: unknown fields {sorted(unknown)}")
        return cls(**fields)


class LoRALinear(nn.Module):
    """A linear of the model (model.Linear, or a column/row-parallel one from gptcore.parallel) with
    a low-rank adapter: forward(x, activation, residual) = activation(base(x) + scale B A
    dropout(x)) + residual. It holds the base's weight and bias under their names (so a model's
    state dict keeps them, with lora_A and lora_B beside) and computes through the base's own
    GEMM and collectives (base.project). merged: B A is folded into the weight, and the forward is
    the base's, fused epilogue included."""

    def __init__(self, base: Linear | ParallelLinear, A: torch.Tensor, scale: float, dropout: float = 0.0):
        super().__init__()
        # Not a submodule: its parameters are this module's, under the same names in the model.
        self.__dict__["base"] = base
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.lora_A = nn.Parameter(A.to(device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.weight.shape[0], A.shape[0]))
        self.scale, self.dropout, self.merged = scale, dropout, False

    def forward(self, x: torch.Tensor, activation: str | None = None, residual: torch.Tensor | None = None):
        if self.merged:
            return self.base.project(x, self.weight, self.bias, activation, residual)
        y = self.base.project(x, self.weight, self.bias, residual=self.delta(x))  # the term in the GEMM's epilogue
        if activation is not None:  # "gelu", ops.linear's only activation
            y = F.gelu(y, approximate="tanh")
        return y if residual is None else y + residual

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """scale * B A dropout(x), in the base's output layout: on a parallel base the rank-r
        activation passes its region (column parallel: enters as x does; row parallel: the partial
        A x is summed over the group, as the output is)."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        h = F.linear(x, self.lora_A) * self.scale  # scaled here: [.., r] is the smallest tensor on the way
        if isinstance(self.base, ParallelLinear):
            h = self.base.adapter_region(h)
        return F.linear(h, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """scale * B A in float32: what merging adds to the weight."""
        return self.scale * (self.lora_B.float() @ self.lora_A.float())


def _targets(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, str, nn.Module]]:
    """(module name, target name, linear) of the model's block linears that `targets` names (the
    only modules whose names end so)."""
    paths = {"." + TARGETS[t]: t for t in targets}
    found = []
    for name, module in model.named_modules():
        target = next((t for path, t in paths.items() if name.endswith(path)), None)
        if target is not None and isinstance(module, Linear | ParallelLinear | LoRALinear):
            found.append((name, target, module))
    return found


def _adapted(model: nn.Module, caller: str) -> list[LoRALinear]:
    linears = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not linears:
        raise ValueError(f"{caller}: {type(model).__name__} has no LoRA adapters (apply_lora adds them)")
    return linears


def _init_A(rank: int, in_features: int, seed: int, name: str) -> torch.Tensor:
    """peft's init of lora_A [rank, in_features], from a generator seeded by seed and the
    parameter's name: the same whatever the model's layout (tensor parallel, pipeline stage)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    A = torch.empty(rank, in_features)
    return nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)


def apply_lora(model: nn.Module, config: LoRAConfig, seed: int = 0) -> list[nn.Parameter]:
    """Wrap the target linears of a GPT (whole, a pipeline stage, tensor-parallel or both) in
    LoRALinear and freeze every other parameter (requires_grad False). Returns the adapter
    parameters, the ones to train. seed (with each parameter's name) draws lora_A, so one seed gives
    the same adapters whatever the layout: a tensor-parallel rank draws the whole A and keeps its shard."""
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"apply_lora: config must be a LoRAConfig, got {type(config).__name__}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(f"apply_lora: {type(model).__name__} already has LoRA adapters")
    targets = _targets(model, config.targets)
    if not targets:
        raise ValueError(
            f"apply_lora: {type(model).__name__} has none of the target linears {config.targets}"
            f" ({', '.join(TARGETS[t] for t in config.targets)} inside transformer.h)"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for name, _, base in targets:
        A = _init_A(config.rank, base.in_features, seed, f"{name}.lora_A")
        parallel = isinstance(base, ParallelLinear)
        adapted = LoRALinear(base, base.shard_input(A) if parallel else A, config.scale, config.dropout)
        adapted.train(base.training)
        if parallel:  # A is split as W's input columns, B as W's output rows; the other is replicated
            row = base.splits_input
            adapted.lora_A.tensor_parallel, adapted.lora_B.tensor_parallel = row, not row
            adapted.lora_A.sequence_parallel = base.sequence_parallel and not row
            adapted.lora_B.sequence_parallel = base.sequence_parallel and row
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, adapted)
        params += [adapted.lora_A, adapted.lora_B]
    return params


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """W += scale * B A (in float32, then cast to W's dtype) for every adapter not yet merged; the
    adapters' term is then off, and the forward is the plain model's (fused epilogues)."""
    for linear in _adapted(model, "merge_lora"):
        if not linear.merged:
            linear.weight.copy_(linear.weight.float() + linear.delta_weight())
            linear.merged = True


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> None:
    """merge_lora, then every LoRALinear replaced by its base linear (peft's merge_and_unload): the
    plain model again, with the adapted weights, whose state dict and files are a GPT's."""
    merge_lora(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.base)


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    """The inverse of merge_lora (up to rounding in W's dtype): W -= scale * B A, the term back on."""
    for linear in _adapted(model, "unmerge_lora"):
        if linear.merged:
            linear.weight.copy_(linear.weight.float() - linear.delta_weight())
            linear.merged = False


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (lora_A, lora_B) by their full names, detached, not copied; on a
    tensor-parallel model this rank's shards (tensor_parallel.gather_full_state_dict merges them)."""
    _adapted(model, "lora_state_dict")
    return {name: p.detach() for name, p in model.named_parameters() if name.endswith(_FACTORS)}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the model's adapters: the same names and shapes as lora_state_dict(model)
    (on a tensor-parallel model, this rank's shards), or a ValueError saying what differs. The
    adapters must not be merged (W holds the old B A)."""
    linears = _adapted(model, "load_lora_state_dict")
    params = {name: p for name, p in model.named_parameters() if name.endswith(_FACTORS)}
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(
            f"load_lora_state_dict: the adapter names differ from the model's: missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}"
            " (was it saved with other targets, or for another model?)"
        )
    for name, p in params.items():
        if state[name].shape != p.shape:
            raise ValueError(
                f"load_lora_state_dict: {name} has shape {list(state[name].shape)}; the model's is {list(p.shape)}"
                " (another rank, another model size, or a tensor-parallel shard?)"
            )
    if any(linear.merged for linear in linears):
        raise ValueError("load_lora_state_dict: the adapters are merged into the weights; unmerge_lora first")
    for name, p in params.items():
        p.copy_(state[name])


def save_adapter_state(state: Mapping[str, torch.Tensor], path, config: LoRAConfig, base=None) -> Path:
    """Write an adapter file (gptcore.checkpoint.adapters): `state` (adapter tensors by full GPT
    names: lora_state_dict), `config` and the base model's path in the metadata. Returns the path."""
    bad = [name for name in state if not name.endswith(_FACTORS)]
    if bad:
        raise ValueError(f"save_adapters: {bad[:4]} are not adapter tensors (names ending in .lora_A / .lora_B)")
    ranks = {t.shape[0] if name.endswith(".lora_A") else t.shape[1] for name, t in state.items()}
    if ranks - {config.rank}:
        raise ValueError(f"save_adapters: the adapters have rank {sorted(ranks)}; the config says {config.rank}")
    return save_adapter_file(state, path, config.to_json(), base)


def save_adapters(model: nn.Module, path, config: LoRAConfig, base=None) -> Path:
    """save_adapter_state of lora_state_dict(model). On a tensor-parallel model that is this rank's
    shards (a checkpoint shard: merge_state_dicts joins the ranks' files); apply_adapters and
    load_for_inference take whole tensors (save gather_full_state_dict's with save_adapter_state)."""
    return save_adapter_state(lora_state_dict(model), path, config, base)


def load_adapters(path) -> tuple[dict[str, torch.Tensor], LoRAConfig, dict[str, str]]:
    """(adapter tensors, LoRAConfig, the file's metadata) of a file written by save_adapters, or of a
    LoRA run's checkpoint (a step_N folder or its save folder; the per-(tp, pp) files of a
    model-parallel run are joined into whole tensors)."""
    state, metadata = read_adapters(path)
    return state, LoRAConfig.from_json(metadata[ADAPTER_CONFIG_KEY]), metadata


def apply_adapters(model: nn.Module, path, merge: bool = False) -> LoRAConfig:
    """apply_lora with the file's config, its adapters loaded (a pipeline stage takes its layers',
    a tensor-parallel model its shards: local_state) and, with merge, merged into the weights
    (merge_lora; merge_and_unload then gives the plain model). Returns the config."""
    state, config, _ = load_adapters(path)
    apply_lora(model, config)
    load_lora_state_dict(model, local_state(model, state))
    if merge:
        merge_lora(model)
    return config
