"""How the ranks of a job split into data-, tensor- and pipeline-parallel groups.

world = dp x tp x pp. Ranks are numbered in Megatron-LM's default order ("tp-cp-ep-dp-pp" in
`megatron.core.parallel_state.initialize_model_parallel`, without context or expert parallelism):
tp varies fastest, then dp, then pp,

    rank = tp_rank + tp * (dp_rank + dp * pp_rank)

so a tensor-parallel group is tp consecutive ranks (one node's fast links) and a pipeline stage
is a contiguous block of tp * dp ranks. With 8 = dp 2 x tp 2 x pp 2: tp groups [0, 1] [2, 3]
[4, 5] [6, 7]; dp groups [0, 2] [1, 3] [4, 6] [5, 7]; pp groups [0, 4] [1, 5] [2, 6] [3, 7].

The process groups are built by `build_groups` and handed to whatever needs them; nothing here
keeps global state. `check_layout` rejects a layout the model or the batch cannot use before
any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import torch.distributed as dist

from gptcore.model import GPTConfig


def launched_world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 1 when not launched by it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank among those torchrun started (RANK), 0 when not launched by it."""
    return int(os.environ.get("RANK", "0"))


class Coords(NamedTuple):
    """A rank's position in each parallel dimension."""

    dp: int
    tp: int
    pp: int


@dataclass(frozen=True)
class ParallelLayout:
    """world ranks as dp x tp x pp; dp is what world leaves after tp and pp."""

    world: int
    tp: int = 1
    pp: int = 1

    def __post_init__(self):
        for name in ("world", "tp", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"parallel layout: {name} must be a positive integer, got {value!r}")
        if self.world % (self.tp * self.pp):
            fits = [t for t in range(1, self.world + 1) if self.world % (t * self.pp) == 0]
            hint = f"with pp={self.pp}, tp can be {fits}" if fits else f"pp={self.pp} does not divide it either"
            raise ValueError(
                f"parallel layout: world size {self.world} is not divisible by tp x pp = {self.tp} x {self.pp}"
                f" = {self.tp * self.pp}; world must be dp x tp x pp, so tp x pp must divide {self.world} ({hint})"
            )

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp)

    def coords(self, rank: int) -> Coords:
        """(dp_rank, tp_rank, pp_rank) of a global rank."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside a world of {self.world}")
        return Coords(dp=(rank // self.tp) % self.dp, tp=rank % self.tp, pp=rank // (self.tp * self.dp))

    def rank(self, dp: int, tp: int, pp: int) -> int:
        """The global rank at these coordinates."""
        for name, value, size in (("dp", dp, self.dp), ("tp", tp, self.tp), ("pp", pp, self.pp)):
            if not 0 <= value < size:
                raise ValueError(f"{name} rank {value} is outside a {name} size of {size}")
        return tp + self.tp * (dp + self.dp * pp)

    def tp_groups(self) -> list[tuple[int, ...]]:
        """Every tensor-parallel group's ranks: same dp and pp coordinates."""
        return [tuple(self.rank(d, t, p) for t in range(self.tp)) for p in range(self.pp) for d in range(self.dp)]

    def dp_groups(self) -> list[tuple[int, ...]]:
        """Every data-parallel group's ranks: same tp and pp coordinates (they hold the same weights)."""
        return [tuple(self.rank(d, t, p) for d in range(self.dp)) for p in range(self.pp) for t in range(self.tp)]

    def pp_groups(self) -> list[tuple[int, ...]]:
        """Every pipeline's ranks in stage order: same dp and tp coordinates."""
        return [tuple(self.rank(d, t, p) for p in range(self.pp)) for d in range(self.dp) for t in range(self.tp)]

    def embedding_groups(self) -> list[tuple[int, ...]]:
        """The first and last stage of every pipeline: they hold the tied embedding (input table and
        output head) and sum its gradient. With one stage, the rank alone."""
        return [tuple(sorted({ranks[0], ranks[-1]})) for ranks in self.pp_groups()]


@dataclass(frozen=True)
class ParallelGroups:
    """This rank's process groups and the global ranks in each (in group-rank order)."""

    layout: ParallelLayout
    rank: int
    coords: Coords
    tp: dist.ProcessGroup
    dp: dist.ProcessGroup
    pp: dist.ProcessGroup
    embedding: dist.ProcessGroup | None  # None on middle pipeline stages (they hold no embedding)
    tp_ranks: tuple[int, ...]
    dp_ranks: tuple[int, ...]
    pp_ranks: tuple[int, ...]
    embedding_ranks: tuple[int, ...] = ()

    @property
    def is_first_stage(self) -> bool:
        return self.coords.pp == 0

    @property
    def is_last_stage(self) -> bool:
        return self.coords.pp == self.layout.pp - 1


def build_groups(layout: ParallelLayout, backend: str | None = None) -> ParallelGroups:
    """This rank's tp, dp, pp and embedding groups under the initialized default group.

    Collective: every rank calls it with the same layout, and every group of every kind is created
    on every rank in one fixed order (dist.new_group's rule). backend: None takes the default
    group's."""
    if not dist.is_initialized():
        raise RuntimeError("build_groups: torch.distributed is not initialized; call init_process_group first")
    if dist.get_world_size() != layout.world:
        raise ValueError(
            f"build_groups: the layout is for a world of {layout.world} but torch.distributed has"
            f" {dist.get_world_size()} ranks"
        )
    rank = dist.get_rank()
    mine = {"embedding": (None, ())}
    for kind, all_ranks in (
        ("tp", layout.tp_groups()),
        ("dp", layout.dp_groups()),
        ("pp", layout.pp_groups()),
        ("embedding", layout.embedding_groups()),
    ):
        for ranks in all_ranks:
            group = dist.new_group(list(ranks), backend=backend)
            if rank in ranks:
                mine[kind] = (group, ranks)
    return ParallelGroups(
        layout=layout,
        rank=rank,
        coords=layout.coords(rank),
        **{kind: group for kind, (group, _) in mine.items()},
        **{f"{kind}_ranks": ranks for kind, (_, ranks) in mine.items()},
    )


def check_layout(layout: ParallelLayout, model_config: GPTConfig, global_batch_size: int, micro_batch_size: int) -> int:
    """Stop before any work when the model or the batch cannot be split this way: a ValueError
    listing every problem with its fix. Returns the micro batches each rank runs per step,
    global_batch_size / (micro_batch_size x dp).

    Rules: every tensor-parallel rank holds n_head / tp whole heads and padded_vocab / tp
    embedding rows; every pipeline stage holds n_layer / pp layers (equal stages, so n_layer must
    be a multiple of pp, which also rules out n_layer < pp)."""
    cfg, tp, pp, dp = model_config, layout.tp, layout.pp, layout.dp
    problems = []
    if cfg.n_head % tp:
        fits = [t for t in range(1, cfg.n_head + 1) if cfg.n_head % t == 0]
        problems.append(
            f"n_head ({cfg.n_head}) is not divisible by tp ({tp}): each tensor-parallel rank holds n_head / tp"
            f" whole attention heads; use a tp in {fits}"
        )
    if cfg.padded_vocab_size % tp:
        problems.append(
            f"the padded vocabulary ({cfg.padded_vocab_size} rows: vocab_size {cfg.vocab_size} rounded up to a"
            f" multiple of pad_vocab_multiple {cfg.pad_vocab_multiple}) is not divisible by tp ({tp}): each"
            f" tensor-parallel rank holds padded_vocab / tp embedding rows; set pad_vocab_multiple to"
            f" {cfg.pad_vocab_multiple * tp} (pad_vocab_multiple x tp, so every rank's rows stay a multiple of"
            f" {cfg.pad_vocab_multiple})"
        )
    if cfg.n_layer % pp:
        fewer = "fewer layers than stages; " if cfg.n_layer < pp else ""
        fits = [p for p in range(1, cfg.n_layer + 1) if cfg.n_layer % p == 0]
        problems.append(
            f"n_layer ({cfg.n_layer}) is not divisible by pp ({pp}): {fewer}each pipeline stage holds n_layer / pp"
            f" layers; use a pp in {fits}"
        )
    for name, value in (("global_batch_size", global_batch_size), ("micro_batch_size", micro_batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if not problems and global_batch_size % (micro_batch_size * dp):
        step = micro_batch_size * dp
        below, above = global_batch_size // step * step, (global_batch_size // step + 1) * step
        near = f"{below} or {above}" if below else f"{above}"
        problems.append(
            f"global_batch_size ({global_batch_size}) is not divisible by micro_batch_size x dp = {micro_batch_size}"
            f" x {dp} = {step}: every data-parallel rank runs the same number of whole micro batches per step;"
            f" use global_batch_size {near}, or change micro_batch_size"
        )
    if problems:
        where = f"world {layout.world} = dp {dp} x tp {tp} x pp {pp}"
        raise ValueError(f"parallel layout ({where}):\n  " + "\n  ".join(problems))
    return global_batch_size // (micro_batch_size * dp)
