"""The processes a training run spans, laid out as dp x tp x pp (gptcore.parallel.layout).

`Processes.start(cfg)` is a world of one (no process group: every reduction below returns its
input, nothing waits) unless torchrun launched several processes or the config asks for model
parallelism; then it joins the torch.distributed world (gloo on the CPU, NCCL on CUDA) and builds
the dp, tp, pp and embedding groups.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from gptcore.parallel.layout import Coords, ParallelGroups, ParallelLayout, build_groups, launched_world_size
from gptcore.training.config import ConfigError, TrainConfig, launch_error


def _init_process_group(cfg: TrainConfig) -> None:
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        raise launch_error(cfg)
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


class Processes:
    """This process's place in the run: the layout, its coordinates, its groups (None in a world
    of one) and the few collectives the trainer itself needs."""

    def __init__(self, layout: ParallelLayout, groups: ParallelGroups | None = None):
        self.layout, self.groups = layout, groups
        self.rank = groups.rank if groups is not None else 0
        self.coords = groups.coords if groups is not None else Coords(0, 0, 0)
        self.is_main = self.rank == 0  # the process that logs and writes shared files
        self.device = torch.device("cpu")  # where reductions run (NCCL needs the GPU): the trainer's device

    @classmethod
    def start(cls, cfg: TrainConfig) -> Processes:
        """One process, or the initialized (or torchrun-launched) world laid out as cfg asks."""
        spread = launched_world_size() > 1 or (dist.is_initialized() and dist.get_world_size() > 1)
        if not spread and cfg.tensor_parallel * cfg.pipeline_parallel == 1:
            return cls(ParallelLayout(1))
        _init_process_group(cfg)
        try:
            layout = ParallelLayout(dist.get_world_size(), cfg.tensor_parallel, cfg.pipeline_parallel)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return cls(layout, build_groups(layout))

    @property
    def alone(self) -> bool:
        return self.groups is None

    def group(self, kind: str):
        """This process's group of a kind ("dp", "tp", "pp", "embedding"); None in a world of one."""
        return None if self.alone else getattr(self.groups, kind)

    def all_reduce(self, values: list[float], group=None) -> list[float]:
        """The sums over `group` (default: every process) of `values`, in float64."""
        if self.alone:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=group)
        return t.tolist()

    @contextlib.contextmanager
    def main_first(self):
        """Run a block in the main process before the others (file caches it writes, they read)."""
        if not self.alone and not self.is_main:
            dist.barrier()
        yield
        if not self.alone and self.is_main:
            dist.barrier()

    def barrier(self) -> None:
        if not self.alone:
            dist.barrier()

    def describe(self, device: torch.device) -> str:
        if self.alone:
            return str(device)
        layout = self.layout
        return f"{layout.world} x {device.type} (dp {layout.dp} x tp {layout.tp} x pp {layout.pp})"
