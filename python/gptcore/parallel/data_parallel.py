"""Data parallelism: gradients reduced over the data-parallel ranks in buckets launched while the
backward is still running, and ZeRO stages 1, 2 and 3 (AdamW's state, then the gradients, then the
parameters too, sharded over those ranks).

Collectives go through `Collectives`, a small interface over one group: `TorchCollectives`
wraps a torch.distributed ProcessGroup (gloo on the CPU, NCCL on CUDA), and any object with the
same methods can stand in for it. Names and argument order follow gptcore.parallel.comm's
Communicator (rank, world, output before input), plus async_op.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn

from gptcore.optim import AdamW

# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single (the old names warn).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_GLOO_HAS_REDUCE_SCATTER = hasattr(dist, "reduce_scatter_single")  # new in torch 2.13

# ZeRO-3 keeps this many buckets' reduce-scatters in flight in the backward before freeing their input.
_IN_FLIGHT = 2

# Every param's grad starts on a multiple of this many elements (256 bytes of float32), and every
# bucket is a multiple of it per rank, so main_grad views and ZeRO shards are aligned for vector loads.
_ALIGN = 64


class Work(Protocol):
    def wait(self) -> Any: ...


class Collectives(Protocol):
    """Sum-collectives over the ranks of one group, on flat contiguous tensors. With async_op=True
    a call returns a handle whose wait() makes the result ready; otherwise it returns None."""

    rank: int  # this process's rank in the group
    world: int  # the group's number of ranks

    def all_reduce(self, tensor: torch.Tensor, async_op: bool = False) -> Work | None:
        """tensor = the sum over the ranks of tensor, in place."""

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, async_op: bool = False) -> Work | None:
        """output = part `rank` (of `world` equal parts) of the sum over the ranks of input."""

    def all_gather(self, output: torch.Tensor, input: torch.Tensor, async_op: bool = False) -> Work | None:
        """output = the ranks' inputs concatenated in rank order."""

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """tensor = group rank src's tensor, in place."""


class _Done:
    def wait(self) -> None:
        pass


class TorchCollectives:
    """`Collectives` over a torch.distributed process group (None: the default group)."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self._slow_reduce_scatter = not _GLOO_HAS_REDUCE_SCATTER and dist.get_backend(self.group) == "gloo"

    def all_reduce(self, tensor, async_op=False):
        return dist.all_reduce(tensor, group=self.group, async_op=async_op)

    def reduce_scatter(self, output, input, async_op=False):
        if self._slow_reduce_scatter:  # sum everything, keep our part
            total = input.clone()
            dist.all_reduce(total, group=self.group)
            output.copy_(total.view(self.world, -1)[self.rank])
            return _Done() if async_op else None
        return _reduce_scatter_single(output, input, group=self.group, async_op=async_op)

    def all_gather(self, output, input, async_op=False):
        return _all_gather_single(output, input, group=self.group, async_op=async_op)

    def broadcast(self, tensor, src=0):
        dist.broadcast(tensor, src=dist.get_global_rank(self.group, src), group=self.group)


def as_collectives(group) -> Collectives:
    """A ProcessGroup (or None, the default group) wrapped as `Collectives`; anything else as is."""
    return TorchCollectives(group) if group is None or isinstance(group, dist.ProcessGroup) else group


@dataclass(eq=False)
class Bucket:
    """Params whose grads are reduced together, laid out flat: param i's grad is
    grad[offsets[i] : offsets[i] + numel], padding between them stays zero."""

    params: list[nn.Parameter]
    offsets: list[int]
    numel: int  # padded to a multiple of _ALIGN x the group size
    grad: torch.Tensor | None = None  # float32 [numel]; the params' main_grad are views of it
    shard: torch.Tensor | None = None  # ZeRO-2: float32 [numel / world], this rank's part of the reduced grad
    waiting: int = 0  # params whose grad has not arrived in this backward
    work: Work | None = field(default=None, repr=False)
    # ZeRO-3: this rank's part of the flat params (param dtype, [numel / world]); the params' own
    # storage is empty except while gathered
    param_shard: torch.Tensor | None = None
    gathered: bool = False
    gathering: tuple[torch.Tensor, Work] | None = field(default=None, repr=False)  # (flat buffer, its all-gather)
    arriving: int = 0  # ZeRO-3: params whose grad has not arrived in this backward, counted under no_sync too


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _unit_buckets(model: nn.Module, units: Sequence[nn.Module], world: int) -> tuple[list[Bucket], Bucket | None]:
    """ZeRO-3: a bucket per unit (its trainable params), in forward order, and one of the params in
    no unit (None when there are none)."""
    seen: set[int] = set()
    groups = []
    for index, unit in enumerate(units):
        params = [p for p in unit.parameters() if p.requires_grad and id(p) not in seen]
        if not params:
            raise ValueError(f"DataParallel: param unit {index} ({type(unit).__name__}) has no trainable params")
        seen.update(id(p) for p in params)
        groups.append(params)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    buckets = []
    for params in groups + [rest]:
        offsets, end = [], 0
        for p in params:
            offsets.append(end)
            end = _round_up(end + p.numel(), _ALIGN)
        buckets.append(Bucket(params, offsets, _round_up(end, _ALIGN * world), waiting=len(params)))
    return buckets[:-1], (buckets[-1] if rest else None)


def _in_backward() -> bool:
    """Whether the autograd engine is running this code (a recomputed forward, a hook)."""
    return torch._C._current_graph_task_id() != -1


def _make_buckets(params: list[nn.Parameter], bucket_numel: int, world: int, alone: set[int]) -> list[Bucket]:
    buckets, current, offsets, end = [], [], [], 0
    for p in params:
        if id(p) in alone:  # a bucket of its own: close the current one first
            if current:
                buckets.append(Bucket(current, offsets, _round_up(end, _ALIGN * world), waiting=len(current)))
                current, offsets, end = [], [], 0
            buckets.append(Bucket([p], [0], _round_up(p.numel(), _ALIGN * world), waiting=1))
            continue
        current.append(p)
        offsets.append(end)
        end = _round_up(end + p.numel(), _ALIGN)
        if end >= bucket_numel:
            buckets.append(Bucket(current, offsets, _round_up(end, _ALIGN * world), waiting=len(current)))
            current, offsets, end = [], [], 0
    if current:
        buckets.append(Bucket(current, offsets, _round_up(end, _ALIGN * world), waiting=len(current)))
    return buckets


class DataParallel:
    """Keeps `model`'s replicas on the ranks of a data-parallel group in step.

    At construction the params are broadcast from the group's rank 0, and every param gets a
    float32 `main_grad`: a view into a flat bucket buffer. A hook moves each fresh `.grad` into it,
    so `.grad` stays None and micro batches accumulate in float32 whatever the param dtype; the
    optimizer reads main_grad (gptcore.optim.adamw.param_grad). Buckets take the params in reverse
    order (roughly the order the backward produces their grads), about bucket_mb of grads each.
    When a bucket's last grad arrives its all-reduce is launched asynchronously and the backward
    goes on; at the end of the backward the buckets still unlaunched (params without a grad) are
    launched and all are waited for. So when `loss.backward()` returns, every main_grad holds the
    mean over the ranks (average=True) or the sum (average=False: the loss is already normalized
    by the global batch, e.g. by its token count).

    Gradient accumulation: run every micro batch but the last under `no_sync()`; `zero_grad()`
    clears the grads after the optimizer step. `sync_grads()` reduces when no backward outside
    no_sync() ran in a step. The param and grad dtype and device are the model's as it is at
    construction: move and cast the model first.

    own_bucket: params that each get a bucket alone. Two models whose such param has the same
    shape then shard it identically under ZeRO (the pipeline's first and last stage hold the two
    copies of the tied embedding and sum their grads shard by shard).

    param_units (ZeRO-3): modules, in forward order (the blocks), whose params are sharded too. Each
    unit's params form one bucket, and the params in no unit one more (the root). Each rank keeps
    only its 1 / dp part of every bucket (`bucket.param_shard`); a param's own storage is empty
    except while its bucket is gathered: a unit's just before its forward (the next unit's gather
    is launched then, to overlap the compute) and again just before its backward (a hook on its
    output; the previous unit's gather launched then), freed after its forward and once its grads
    have all arrived in the backward. The root is gathered from the model's forward to the end of
    its backward (to the end of a forward without grad). A recomputed forward (recompute full) runs
    inside the backward and keeps the params it gathered. Grads are reduce-scattered as ZeRO-2's; a
    bucket's full grad buffer is freed once its reduce-scatter is done (_IN_FLIGHT of them pending),
    except under no_sync, where the buffers accumulate the micro batches.
    `gathered()` holds every param whole, e.g. to read the model's state_dict (collective).
    """

    def __init__(
        self,
        model: nn.Module,
        group,
        bucket_mb: float = 25.0,
        average: bool = True,
        own_bucket: Iterable[nn.Parameter] = (),
        param_units: Sequence[nn.Module] | None = None,
    ):
        if not bucket_mb > 0:
            raise ValueError(f"DataParallel: bucket_mb must be positive, got {bucket_mb!r}")
        self.module = model
        self.comm = as_collectives(group)
        self.average = average
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("DataParallel: the model has no parameters that require grad")
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) > 1:
            raise ValueError(
                f"DataParallel: all params must share one dtype and device; found {sorted(map(str, kinds))}"
            )
        self.device = params[0].device
        alone = {id(p) for p in own_bucket}
        self.shards_params = param_units is not None
        if self.shards_params:
            if alone:
                raise ValueError("DataParallel: param_units (ZeRO-3) and own_bucket do not combine")
            # Reverse forward order, the root last: the order in which a backward completes them.
            self.unit_buckets, self.root = _unit_buckets(model, param_units, self.comm.world)
            self.buckets = self.unit_buckets[::-1] + ([self.root] if self.root is not None else [])
        else:
            self.buckets = _make_buckets(params[::-1], int(bucket_mb * 2**20) // 4, self.comm.world, alone)
        self._sync = True
        self._finishing = False  # the end-of-backward callback is queued
        self._next = 0  # buckets launch in order, so every rank issues the same collectives
        for index, bucket in enumerate(self.buckets):
            self._broadcast_params(bucket)
            self._allocate(bucket)
            for p in bucket.params:
                p.register_post_accumulate_grad_hook(functools.partial(self._on_grad, index))
        if self.shards_params:
            self.shard_gradients()
            self._shard_params(model, list(param_units))

    @torch.no_grad()
    def _broadcast_params(self, bucket: Bucket) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in bucket.params])
        self.comm.broadcast(flat, src=0)
        for p, chunk in zip(bucket.params, flat.split([p.numel() for p in bucket.params])):
            p.copy_(chunk.view_as(p))

    def _allocate(self, bucket: Bucket) -> None:
        bucket.grad = torch.zeros(bucket.numel, dtype=torch.float32, device=self.device)
        for p, offset in zip(bucket.params, bucket.offsets):
            p.main_grad = bucket.grad[offset : offset + p.numel()].view_as(p)

    def _release(self, bucket: Bucket) -> None:
        bucket.grad = None
        for p in bucket.params:
            p.main_grad = None

    def shard_range(self, bucket: Bucket) -> tuple[int, int]:
        """[start, end) of the bucket's flat layout that this rank owns under ZeRO."""
        part = bucket.numel // self.comm.world
        return self.comm.rank * part, (self.comm.rank + 1) * part

    def shard_gradients(self) -> None:
        """ZeRO-2 (called by ZeroAdamW): each bucket is reduce-scattered instead of all-reduced into
        `bucket.shard`, and its full buffer (the params' main_grad) lives only from the bucket's
        first grad in a backward to the end of the backward that reduces it. Before any backward."""
        for bucket in self.buckets:
            start, end = self.shard_range(bucket)
            bucket.shard = torch.zeros(end - start, dtype=torch.float32, device=self.device)
            self._release(bucket)

    # ---- ZeRO-3: params sharded, gathered around their use ---------------------------------------
    @torch.no_grad()
    def _shard_params(self, model: nn.Module, units: list[nn.Module]) -> None:
        for bucket in self.buckets:
            flat = torch.zeros(bucket.numel, dtype=bucket.params[0].dtype, device=self.device)
            for p, offset in zip(bucket.params, bucket.offsets):
                flat[offset : offset + p.numel()] = p.reshape(-1)
                p.data = p.detach().clone(memory_format=torch.contiguous_format)  # storage of its own to free
            start, end = self.shard_range(bucket)
            bucket.param_shard = flat[start:end].clone()
            bucket.arriving = len(bucket.params)
            self._free(bucket)
        for index, unit in enumerate(units):
            unit.register_forward_pre_hook(functools.partial(self._before_unit, index))
            unit.register_forward_hook(functools.partial(self._after_unit, index))
        model.register_forward_pre_hook(self._before_model)
        model.register_forward_hook(self._after_model)

    def _start_gather(self, bucket: Bucket) -> None:
        if bucket.gathered or bucket.gathering is not None:
            return
        flat = torch.empty(bucket.numel, dtype=bucket.param_shard.dtype, device=self.device)
        bucket.gathering = flat, self.comm.all_gather(flat, bucket.param_shard, async_op=True)

    @torch.no_grad()
    def _gather(self, bucket: Bucket) -> None:
        if bucket.gathered:
            return
        self._start_gather(bucket)
        flat, work = bucket.gathering
        work.wait()
        # Copied through .data: the params' version counters stay as the autograd graph saved them.
        for p in bucket.params:
            p.untyped_storage().resize_(p.numel() * p.element_size())
        views = [flat[offset : offset + p.numel()].view_as(p) for p, offset in zip(bucket.params, bucket.offsets)]
        torch._foreach_copy_([p.data for p in bucket.params], views)
        bucket.gathering, bucket.gathered = None, True

    def _free(self, bucket: Bucket) -> None:
        for p in bucket.params:
            p.untyped_storage().resize_(0)
        bucket.gathered = False

    def _before_model(self, module, args) -> None:
        if self.root is not None:
            self._gather(self.root)

    def _after_model(self, module, args, output) -> None:
        if self.root is not None and not torch.is_grad_enabled():  # no backward follows
            self._free(self.root)

    def _before_unit(self, index: int, module, args) -> None:
        self._gather(self.unit_buckets[index])
        if index + 1 < len(self.unit_buckets) and not _in_backward():
            self._start_gather(self.unit_buckets[index + 1])

    def _after_unit(self, index: int, module, args, output) -> None:
        if _in_backward():  # a recomputed forward: its backward comes next
            return
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(functools.partial(self._before_unit_backward, index))
        self._free(self.unit_buckets[index])

    def _before_unit_backward(self, index: int, grad: torch.Tensor) -> None:
        self._gather(self.unit_buckets[index])
        if index > 0:
            self._start_gather(self.unit_buckets[index - 1])

    @contextlib.contextmanager
    def gathered(self):
        """ZeRO-3: every param whole inside (collective: every rank of the group enters), freed after."""
        for bucket in self.buckets:
            self._gather(bucket)
        try:
            yield
        finally:
            for bucket in self.buckets:
                self._free(bucket)

    def resident_param_bytes(self) -> int:
        """Bytes of parameter storage this rank holds now: the params' own and, under ZeRO-3, its shards."""
        own = sum(p.untyped_storage().nbytes() for bucket in self.buckets for p in bucket.params)
        shards = sum(b.param_shard.nbytes for b in self.buckets if b.param_shard is not None)
        return own + shards

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate into main_grad; the next one outside reduces."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    @torch.no_grad()
    def sync_grads(self) -> None:
        """Reduce the grads accumulated so far now, for a step whose backward passes all ran under
        no_sync() (e.g. every micro batch of this rank had no target token)."""
        self._finish_backward()

    @torch.no_grad()
    def zero_grad(self) -> None:
        for bucket in self.buckets:
            if bucket.shard is not None:
                self._release(bucket)
                bucket.shard.zero_()
            elif bucket.grad is not None:
                bucket.grad.zero_()

    @torch.no_grad()
    def _on_grad(self, index: int, p: nn.Parameter) -> None:
        bucket = self.buckets[index]
        if bucket.grad is None:
            self._allocate(bucket)
        if p.grad is not None:  # None when an earlier hook already moved it into main_grad
            p.main_grad.add_(p.grad)
            p.grad = None
        if self.shards_params:
            self._queue_finish()
            bucket.arriving -= 1
            if bucket.arriving == 0:  # its backward is done
                self._free(bucket)
        if not self._sync:
            return
        if bucket.work is not None:
            raise RuntimeError("DataParallel: a param got its grad after its bucket was reduced in this backward")
        self._queue_finish()
        bucket.waiting -= 1
        while self._next < len(self.buckets) and self.buckets[self._next].waiting == 0:
            self._launch(self.buckets[self._next])
            self._next += 1
            if self.shards_params and self._next > _IN_FLIGHT:  # ZeRO-3: the full grads of a few buckets at a time
                self._retire(self.buckets[self._next - 1 - _IN_FLIGHT])

    def _retire(self, bucket: Bucket) -> None:
        """Wait for a launched reduce-scatter and free the bucket's full grad buffer."""
        bucket.work.wait()
        bucket.work = _Done()
        self._release(bucket)

    def _queue_finish(self) -> None:
        if not self._finishing:
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)
            self._finishing = True

    def _launch(self, bucket: Bucket) -> None:
        if bucket.grad is None:  # none of its params got a grad in this backward
            self._allocate(bucket)
        if self.average and self.comm.world > 1:
            bucket.grad.div_(self.comm.world)
        if bucket.shard is None:
            bucket.work = self.comm.all_reduce(bucket.grad, async_op=True)
        else:
            bucket.work = self.comm.reduce_scatter(bucket.shard, bucket.grad, async_op=True)

    @torch.no_grad()
    def _finish_backward(self) -> None:
        try:
            if self.shards_params:  # the units whose params did not all get a grad
                for bucket in self.buckets:
                    self._free(bucket)
                    bucket.arriving = len(bucket.params)
            if not self._sync:  # ZeRO-3's callback, in a backward under no_sync
                return
            for bucket in self.buckets[self._next :]:
                self._launch(bucket)
            for bucket in self.buckets:
                bucket.work.wait()
                if bucket.shard is not None:
                    self._release(bucket)
        finally:
            if self._sync:
                for bucket in self.buckets:
                    bucket.work, bucket.waiting = None, len(bucket.params)
                self._next = 0
            self._finishing = False


class ShardPiece(NamedTuple):
    """The part of one param a rank owns under ZeRO: elements [start, start + master.numel()) of
    param.view(-1). master is its float32 master copy (in host memory when offloaded), grad its
    reduced grad on the model's device; master.main_grad is what AdamW reads (grad itself, or its
    host copy when offloaded)."""

    param: nn.Parameter
    start: int
    master: torch.Tensor
    grad: torch.Tensor


class ZeroAdamW:
    """gptcore's AdamW with its state sharded over the ranks of `dp`'s group (ZeRO stage 1, 2 or 3).

    Each rank owns 1 / dp of every bucket of `dp` (a contiguous range of its flat layout) and keeps,
    for that range only, float32 master weights and AdamW's moments. Stage 1: the grads are
    all-reduced whole and each rank reads its range; stage 2: they are reduce-scattered, so each
    rank receives only its range, and the full grad buffers live only during the backward. After
    the update each bucket's params are all-gathered back into the model. Stage 3 (`dp` built with
    param_units): the params are sharded too; the update is written into each bucket's param shard
    (a float32 model's master is that shard), which `dp` gathers when the next forward needs it.

    offload: the masters and moments live in host memory (pinned when the model is on CUDA) and
    the step runs gptcore's CPU AdamW kernel: each step copies this rank's grad shard to the host
    and the updated masters back to the device. On a CPU model it is the same arithmetic.

    params, lr, betas, eps, weight_decay: as gptcore.optim.AdamW over the model's params; each
    group's settings apply to its params' pieces. `param_groups` are the inner AdamW's (set a
    group's lr there), `step(grad_scale=)` and `found_inf` behave as AdamW's, on every rank alike.
    Clip with `grad_norm()`, the norm over all ranks' shards. `state_dict()` is this rank's shard.
    Build it before the first backward.
    """

    def __init__(
        self,
        dp: DataParallel,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        stage: int = 1,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        offload: bool = False,
    ):
        if stage not in (1, 2, 3):
            raise ValueError(
                f"ZeroAdamW: stage must be 1 (optimizer state sharded), 2 (grads too) or 3 (params too), got {stage!r}"
            )
        if (stage == 3) != dp.shards_params:
            raise ValueError("ZeroAdamW: stage 3 needs, and only it takes, a DataParallel built with param_units")
        if stage < 3 and any(bucket.shard is not None for bucket in dp.buckets):
            raise ValueError("ZeroAdamW: this DataParallel already serves a ZeRO-2 optimizer; build one per model")
        self.dp, self.stage, self.offload, self.found_inf = dp, stage, offload, False
        groups = _param_groups(params)
        group_of = _group_index(groups, dp)
        if stage == 2:
            dp.shard_gradients()
        host = torch.device("cpu")
        pin = offload and dp.device.type == "cuda"
        pieces_by_group = [[] for _ in groups]
        self.pieces: list[ShardPiece] = []
        self.masters: list[torch.Tensor] = []  # per bucket: float32 [numel / world]
        self._grads: list[torch.Tensor] = []  # per bucket: this rank's part of the reduced grad
        self._host_grads: list[torch.Tensor] = []  # per bucket, when offloaded: its copy in host memory
        for bucket in dp.buckets:
            start, end = dp.shard_range(bucket)
            if stage == 3:
                shard = bucket.param_shard
                master = shard if shard.dtype == torch.float32 and not offload else shard.float()
            else:
                flat = torch.zeros(bucket.numel, dtype=torch.float32, device=dp.device)
                for p, offset in zip(bucket.params, bucket.offsets):
                    flat[offset : offset + p.numel()] = p.detach().reshape(-1)
                master = flat[start:end].clone()
            grad = bucket.shard if stage >= 2 else bucket.grad[start:end]
            read = grad
            if offload:
                master = master.to(host, copy=True).pin_memory() if pin else master.to(host, copy=True)
                read = torch.zeros(master.shape, dtype=torch.float32, pin_memory=pin)
                self._host_grads.append(read)
            for p, offset in zip(bucket.params, bucket.offsets):
                lo, hi = max(offset, start), min(offset + p.numel(), end)
                if lo < hi:
                    piece = master[lo - start : hi - start]
                    piece.main_grad = read[lo - start : hi - start]
                    pieces_by_group[group_of[id(p)]].append(piece)
                    self.pieces.append(ShardPiece(p, lo - offset, piece, grad[lo - start : hi - start]))
            self.masters.append(master)
            self._grads.append(grad)
        inner = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": ps} for g, ps in zip(groups, pieces_by_group)
        ]
        self.optimizer = AdamW(inner, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def grad_norm(self) -> float:
        """L2 norm of the whole reduced gradient (all ranks' shards): what clipping needs."""
        local = torch.stack(torch._foreach_norm(self._grads, 2, dtype=torch.float32)).square().sum().reshape(1)
        self.dp.comm.all_reduce(local)
        return float(local.sqrt())

    @torch.no_grad()
    def step(self, grad_scale: float | torch.Tensor | None = None) -> None:
        """One AdamW step on this rank's shard, then the params gathered on every rank. grad_scale:
        as AdamW's; an inf/nan grad on any rank skips the step on all (found_inf)."""
        self.found_inf = False
        if grad_scale is not None:
            bad = torch.stack([~torch.isfinite(g).all() for g in self._grads]).any().float().reshape(1)
            self.dp.comm.all_reduce(bad)
            if bad.item():
                self.found_inf = True
                return
        if self.offload:
            for host, grad in zip(self._host_grads, self._grads):
                host.copy_(grad, non_blocking=True)
            if self.dp.device.type == "cuda":
                torch.cuda.current_stream(self.dp.device).synchronize()
        self.optimizer.step(grad_scale=grad_scale)
        self._publish()

    def _publish(self) -> None:
        """The masters into the model: stage 3 into the param shards (gathered where used), else
        all-gathered into the params."""
        if self.stage == 3:
            for bucket, master in zip(self.dp.buckets, self.masters):
                if master is not bucket.param_shard:
                    bucket.param_shard.copy_(master)
            return
        # Gathered into a scratch buffer a bucket at a time, so the model's params keep their own storage.
        comm = self.dp.comm
        for bucket, master in zip(self.dp.buckets, self.masters):
            dtype = bucket.params[0].dtype
            full = torch.empty(bucket.numel, dtype=dtype, device=self.dp.device)
            comm.all_gather(full, master.to(device=self.dp.device, dtype=dtype))
            views = [full[offset : offset + p.numel()].view_as(p) for p, offset in zip(bucket.params, bucket.offsets)]
            torch._foreach_copy_([p.data for p in bucket.params], views)

    def _identity(self) -> dict[str, Any]:
        return {
            "dp_size": self.dp.comm.world,
            "dp_rank": self.dp.comm.rank,
            "bucket_numels": [b.numel for b in self.dp.buckets],
        }

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard: master weights, AdamW's state, and what it was sharded by."""
        return {
            **self._identity(),
            "stage": self.stage,
            "masters": self.masters,
            "optimizer": self.optimizer.state_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's shard, then put the masters into the model (collective below stage 3)."""
        for key, ours in self._identity().items():
            if state[key] != ours:
                raise ValueError(
                    f"ZeroAdamW.load_state_dict: the state was saved with {key} {state[key]} but here {key} is {ours};"
                    " a sharded optimizer state loads only with the same data-parallel size, rank, model and bucket_mb"
                )
        for master, saved in zip(self.masters, state["masters"]):
            master.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self._publish()


def _param_groups(params) -> list[dict[str, Any]]:
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [{"params": params}]
    return [{**g, "params": list(g["params"])} for g in params]


def _group_index(groups: list[dict[str, Any]], dp: DataParallel) -> dict[int, int]:
    """id(param) -> its group; every param dp reduces must be in exactly one group, and nothing else."""
    group_of: dict[int, int] = {}
    for index, group in enumerate(groups):
        for p in group["params"]:
            if id(p) in group_of:
                raise ValueError("ZeroAdamW: a param appears in more than one group")
            group_of[id(p)] = index
    names = {id(p): name for name, p in dp.module.named_parameters()}
    reduced = {id(p) for bucket in dp.buckets for p in bucket.params}
    missing = [names[i] for i in reduced if i not in group_of]
    if missing:
        raise ValueError(f"ZeroAdamW: params that DataParallel reduces are in no group: {sorted(missing)}")
    if any(i not in reduced for i in group_of):
        raise ValueError("ZeroAdamW: a param in the groups is not one DataParallel reduces (another model?)")
    return group_of
