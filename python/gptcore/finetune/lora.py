"""LoRA (Hu et al., 2021): low-rank adapters on the block linears of a frozen GPT.

A target linear W [out, in], b gains lora_A [r, in] and lora_B [out, r] and computes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

without forming W + BA: two thin GEMMs through the rank r. Targets: qkv (attn.c_attn), attn_out
(attn.c_proj), mlp_in (mlp.c_fc), mlp_out (mlp.c_proj). A starts as Hugging Face peft's (Kaiming
uniform, a = sqrt(5)) and B at zero, so a fresh adapter leaves the model's outputs unchanged.

The adapter lives on the linear module itself: parameters lora_A and lora_B (so named
transformer.h.0.attn.c_attn.lora_A, ...) and plain attributes lora_scale, lora_dropout and
lora_merged. model.Block and the tensor-parallel linears add `lora_delta`'s term; a linear without
an adapter, or with its adapter merged into W, keeps its fused bias / GELU / residual epilogue.

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

Adapter file (`save_adapters` / `load_adapters`): safetensors holding lora_state_dict (full GPT
names, whole tensors), the LoRAConfig as JSON under the metadata key "gptcore_lora" and the base
model's path under "gptcore_lora_base".
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# Target name -> the linear's path inside a block.
TARGETS = {"qkv": "attn.c_attn", "attn_out": "attn.c_proj", "mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj"}
_ROW_PARALLEL = ("attn_out", "mlp_out")  # tensor parallel: W's input columns split; the others split its rows
_FACTORS = (".lora_A", ".lora_B")
CONFIG_KEY = "gptcore_lora"  # adapter file metadata: the LoRAConfig as JSON
BASE_KEY = "gptcore_lora_base"  # adapter file metadata: the base model's path


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


def lora_delta(linear: nn.Module, x: torch.Tensor, enter: Callable | None = None) -> torch.Tensor | None:
    """scale * B A dropout(x) of the adapter on `linear`, or None when it has none or has it merged.
    enter(h) maps the rank-r activation h = A dropout(x) before B: a tensor-parallel collective."""
    A = getattr(linear, "lora_A", None)
    if A is None or linear.lora_merged:
        return None
    if linear.lora_dropout and linear.training:
        x = F.dropout(x, linear.lora_dropout, True)
    h = F.linear(x, A) * linear.lora_scale  # scaled here: [.., r] is the smallest tensor on the way
    if enter is not None:
        h = enter(h)
    return F.linear(h, linear.lora_B)


def _targets(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, str, nn.Module]]:
    """(module name, target name, linear) of the model's block linears that `targets` names (the
    only modules whose names end so)."""
    paths = {"." + TARGETS[t]: t for t in targets}
    found = []
    for name, module in model.named_modules():
        target = next((t for path, t in paths.items() if name.endswith(path)), None)
        if target is not None:
            found.append((name, target, module))
    return found


def _adapted(model: nn.Module, caller: str) -> list[nn.Module]:
    linears = [m for m in model.modules() if getattr(m, "lora_A", None) is not None]
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
    """Add adapters to the target linears of a GPT, TPGPT, PipelineStage or TPPipelineStage and
    freeze every other parameter (requires_grad False). Returns the adapter parameters, the ones
    to train. seed (with each parameter's name) draws lora_A, so one seed gives the same adapters
    whatever the layout: a tensor-parallel rank draws the whole A and keeps its shard."""
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"apply_lora: config must be a LoRAConfig, got {type(config).__name__}")
    if any(getattr(m, "lora_A", None) is not None for m in model.modules()):
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
    for name, target, linear in targets:
        weight = linear.weight
        group = getattr(linear, "group", None)  # Column/RowParallelLinear: a shard over a tp group
        row_split = group is not None and target in _ROW_PARALLEL
        tp = dist.get_world_size(group) if row_split else 1
        A = _init_A(config.rank, weight.shape[1] * tp, seed, f"{name}.lora_A")
        if row_split:
            A = A.chunk(tp, dim=1)[dist.get_rank(group)].contiguous()
        linear.lora_A = nn.Parameter(A.to(device=weight.device, dtype=weight.dtype))
        linear.lora_B = nn.Parameter(weight.new_zeros(weight.shape[0], config.rank))
        linear.lora_scale, linear.lora_dropout, linear.lora_merged = config.scale, config.dropout, False
        if group is not None:
            sequence_parallel = linear.sequence_parallel
            linear.lora_A.tensor_parallel, linear.lora_B.tensor_parallel = row_split, not row_split
            linear.lora_A.sequence_parallel = sequence_parallel and not row_split
            linear.lora_B.sequence_parallel = sequence_parallel and row_split
        params += [linear.lora_A, linear.lora_B]
    return params


def _delta_weight(linear: nn.Module) -> torch.Tensor:
    return linear.lora_scale * (linear.lora_B.float() @ linear.lora_A.float())


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """W += scale * B A (in float32, then cast to W's dtype) for every adapter not yet merged; the
    adapters' term is then off, and the forward is the plain model's (fused epilogues)."""
    for linear in _adapted(model, "merge_lora"):
        if not linear.lora_merged:
            linear.weight.copy_(linear.weight.float() + _delta_weight(linear))
            linear.lora_merged = True


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    """The inverse of merge_lora (up to rounding in W's dtype): W -= scale * B A, the term back on."""
    for linear in _adapted(model, "unmerge_lora"):
        if linear.lora_merged:
            linear.weight.copy_(linear.weight.float() - _delta_weight(linear))
            linear.lora_merged = False


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
    if any(linear.lora_merged for linear in linears):
        raise ValueError("load_lora_state_dict: the adapters are merged into the weights; unmerge_lora first")
    for name, p in params.items():
        p.copy_(state[name])


def save_adapter_state(state: Mapping[str, torch.Tensor], path, config: LoRAConfig, base=None) -> Path:
    """Write an adapter file: `state` (adapter tensors by full GPT names: lora_state_dict), `config`
    and the base model's path in the metadata. Returns the path."""
    bad = [name for name in state if not name.endswith(_FACTORS)]
    if bad:
        raise ValueError(f"save_adapters: {bad[:4]} are not adapter tensors (names ending in .lora_A / .lora_B)")
    ranks = {t.shape[0] if name.endswith(".lora_A") else t.shape[1] for name, t in state.items()}
    if ranks - {config.rank}:
        raise ValueError(f"save_adapters: the adapters have rank {sorted(ranks)}; the config says {config.rank}")
    metadata = {CONFIG_KEY: config.to_json(), "format": "pt"}
    if base is not None:
        metadata[BASE_KEY] = str(base)
    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path, metadata=metadata)
    return path


def save_adapters(model: nn.Module, path, config: LoRAConfig, base=None) -> Path:
    """save_adapter_state of lora_state_dict(model). On a tensor-parallel model that is this rank's
    shards (a checkpoint shard: merge_state_dicts joins the ranks' files); apply_adapters and
    load_for_inference take whole tensors (save gather_full_state_dict's with save_adapter_state)."""
    return save_adapter_state(lora_state_dict(model), path, config, base)


def load_adapters(path) -> tuple[dict[str, torch.Tensor], LoRAConfig, dict[str, str]]:
    """(adapter tensors, LoRAConfig, the file's metadata) of a file written by save_adapters, or of a
    LoRA run's checkpoint (a step_N folder or its save folder; the per-(tp, pp) files of a
    model-parallel run are joined into whole tensors)."""
    if Path(path).is_dir():
        return _load_adapter_checkpoint(Path(path))
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for missing, truncated or foreign files
        raise ValueError(f"{path}: not a LoRA adapter file ({e})") from None
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: not a gptcore LoRA adapter file (no {CONFIG_KEY!r} metadata)")
    return load_file(path), LoRAConfig.from_json(metadata[CONFIG_KEY]), metadata


def _load_adapter_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], LoRAConfig, dict[str, str]]:
    # Imported here: gptcore.parallel and gptcore.training import gptcore.model, which imports this module.
    from gptcore.parallel.checkpoint import read_layout
    from gptcore.parallel.tensor_parallel import merge_state_dicts
    from gptcore.training.checkpoint import find_checkpoint
    from gptcore.training.trainer import adapter_file_name

    step = find_checkpoint(folder)
    if step is None:
        raise ValueError(f"{folder}: no checkpoint here (expected a LoRA run's step_N folder or save folder)")
    layout = read_layout(step)
    tp, pp = layout["tensor_parallel"], layout["pipeline_parallel"]
    names = [[adapter_file_name(t, p, tp, pp) for t in range(tp)] for p in range(pp)]
    missing = [name for stage in names for name in stage if not (step / name).is_file()]
    if missing:
        raise ValueError(f"{step}: no LoRA adapters ({', '.join(missing[:4])} missing); is it a LoRA run's checkpoint?")
    state: dict[str, torch.Tensor] = {}
    for stage in names:
        shards = [load_adapters(step / name) for name in stage]
        state.update(merge_state_dicts([shard for shard, _, _ in shards]))
    _, config, metadata = shards[0]
    return state, config, metadata


def apply_adapters(model: nn.Module, path, merge: bool = False) -> LoRAConfig:
    """apply_lora with the file's config, its adapters loaded (a pipeline stage takes its layers',
    a tensor-parallel model its shards) and, with merge, merged into the weights (inference).
    Returns the config."""
    state, config, _ = load_adapters(path)
    apply_lora(model, config)
    if hasattr(model, "num_stages"):
        # Imported here: gptcore.parallel imports gptcore.model, which imports this module.
        from gptcore.parallel.pipeline import stage_state_dict

        state = stage_state_dict(state, model.stage, model.num_stages, model.config.n_layer)
    group = next((m.group for m in _adapted(model, "apply_adapters") if hasattr(m, "group")), None)
    if group is not None:
        from gptcore.parallel.tensor_parallel import shard_state_dict

        state = shard_state_dict(state, dist.get_rank(group), dist.get_world_size(group))
    load_lora_state_dict(model, state)
    if merge:
        merge_lora(model)
    return config
