"""Collectives over a tensor-parallel group, each paired with its adjoint as an autograd function
(Megatron's mappings pattern). The group is always an argument; a group of one rank makes every
function the identity.

| function                     | forward                 | backward                |
| ---------------------------- | ----------------------- | ----------------------- |
| copy_to_region               | identity                | all-reduce              |
| reduce_from_region           | all-reduce              | identity                |
| scatter_to_region            | keep own last-dim chunk | all-gather last dim     |
| gather_from_region           | all-gather last dim     | keep own last-dim chunk |
| scatter_to_sequence          | keep own chunk of dim 1 | all-gather dim 1        |
| gather_from_sequence         | all-gather dim 1        | reduce-scatter dim 1    |
| reduce_scatter_to_sequence   | reduce-scatter dim 1    | all-gather dim 1        |

Activations are [B, T, C], so the sequence dimension is 1. Chunks are equal and in rank order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

SEQUENCE_DIM = 1

# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single (the old names warn);
# gloo in torch before it may lack reduce-scatter.
_RENAMED = hasattr(dist, "reduce_scatter_single")
_all_gather_single = dist.all_gather_single if _RENAMED else dist.all_gather_into_tensor
_reduce_scatter_single = dist.reduce_scatter_single if _RENAMED else dist.reduce_scatter_tensor


def _size(group) -> int:
    return dist.get_world_size(group)


def _check_divisible(x: torch.Tensor, dim: int, size: int, what: str) -> None:
    if x.shape[dim] % size:
        raise ValueError(
            f"{what}: dim {dim} of a tensor shaped {list(x.shape)} has size {x.shape[dim]}, not divisible by the"
            f" tensor-parallel size {size}"
        )


def split_along(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's chunk of x along dim, as a new tensor, without communication."""
    size = _size(group)
    _check_divisible(x, dim, size, "split")
    return x.chunk(size, dim)[dist.get_rank(group)].clone(memory_format=torch.contiguous_format)


def all_gather_along(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """The ranks' x concatenated along dim in rank order (every rank's x has the same shape)."""
    size = _size(group)
    out = x.new_empty((size * x.shape[0], *x.shape[1:]))  # the ranks' x concatenated along dim 0
    _all_gather_single(out, x.contiguous(), group=group)
    return out.unflatten(0, (size, -1)).movedim(0, dim).flatten(dim, dim + 1)


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    """The sum of the ranks' x, as a new tensor (autograd may share x with other consumers)."""
    out = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, group=group)
    return out


def all_reduce_coalesced(tensors: list[torch.Tensor], group) -> None:
    """Each tensor = its sum over the ranks, in place, in one all-reduce of them flattened together
    (every rank passes tensors of the same shapes in the same order). Nothing to do for none."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    for t, summed in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(summed.view_as(t))


def reduce_scatter_along(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's chunk along dim of the sum of the ranks' x."""
    size = _size(group)
    _check_divisible(x, dim, size, "reduce-scatter")
    if not _RENAMED and dist.get_backend(group) == "gloo":  # sum everything, keep own chunk
        return split_along(all_reduce(x, group), dim, group)
    chunks = x.unflatten(dim, (size, -1)).movedim(dim, 0).contiguous()  # [size, ...chunk shape]
    out = x.new_empty(chunks.shape[1:])
    _reduce_scatter_single(out, chunks.flatten(0, 1), group=group)
    return out


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _paired(name: str, forward, backward, doc: str) -> type[torch.autograd.Function]:
    """An autograd function doing forward(x, dim, group) and, on the gradient, its adjoint
    backward(grad, dim, group)."""

    class Mapping(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, dim, group):
            ctx.dim, ctx.group = dim, group
            return forward(x, dim, group)

        @staticmethod
        def backward(ctx, grad):
            return backward(grad, ctx.dim, ctx.group), None, None

    Mapping.__name__ = Mapping.__qualname__ = name
    Mapping.__doc__ = doc
    return Mapping


_Split = _paired("_Split", split_along, all_gather_along, "Forward: own chunk along dim; backward: all-gather.")
_Gather = _paired("_Gather", all_gather_along, split_along, "Forward: all-gather along dim; backward: own chunk.")
# The consumers of the gathered tensor are tensor-parallel, so each rank holds only part of its gradient.
_GatherReduceScatter = _paired(
    "_GatherReduceScatter", all_gather_along, reduce_scatter_along, "Forward: all-gather; backward: reduce-scatter."
)
_ReduceScatter = _paired(
    "_ReduceScatter", reduce_scatter_along, all_gather_along, "Forward: reduce-scatter; backward: all-gather."
)


def copy_to_region(x: torch.Tensor, group) -> torch.Tensor:
    """Enter a tensor-parallel region with a replicated x: identity; the gradient is all-reduced."""
    return x if _size(group) == 1 else _CopyToRegion.apply(x, group)


def reduce_from_region(x: torch.Tensor, group) -> torch.Tensor:
    """Leave a tensor-parallel region: sum the ranks' partial x; the gradient passes unchanged."""
    return x if _size(group) == 1 else _ReduceFromRegion.apply(x, group)


def scatter_to_region(x: torch.Tensor, group) -> torch.Tensor:
    """This rank's chunk of the last dim of a replicated x; the gradient is all-gathered."""
    return x if _size(group) == 1 else _Split.apply(x, x.dim() - 1, group)


def gather_from_region(x: torch.Tensor, group) -> torch.Tensor:
    """The ranks' x concatenated along the last dim; the gradient is split back."""
    return x if _size(group) == 1 else _Gather.apply(x, x.dim() - 1, group)


def scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """This rank's chunk of the sequence (dim 1) of a replicated x; the gradient is all-gathered."""
    return x if _size(group) == 1 else _Split.apply(x, SEQUENCE_DIM, group)


def gather_from_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """The whole sequence from the ranks' sequence chunks, before a tensor-parallel region; the
    gradient (partial on each rank) is reduce-scattered back to sequence chunks."""
    return x if _size(group) == 1 else _GatherReduceScatter.apply(x, SEQUENCE_DIM, group)


def reduce_scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """Leave a tensor-parallel region into sequence chunks: this rank's chunk of the sum of the
    ranks' partial x; the gradient is all-gathered."""
    return x if _size(group) == 1 else _ReduceScatter.apply(x, SEQUENCE_DIM, group)


@contextlib.contextmanager
def rank_dropout_rng(group, enabled: bool = True) -> Iterator[None]:
    """Dropout inside runs on a random stream of this tensor-parallel rank's own (Megatron's
    model-parallel RNG tracker, without its state): for regions whose data differ between the ranks,
    the local attention heads, or a sequence chunk under sequence parallelism.

    The tp ranks are seeded alike, and dropout on replicated activations must stay alike. So one
    draw from the default CPU generator (the same on every rank) plus the rank seeds the region's
    generators (CPU and the current CUDA device), which are restored on exit: the default streams
    advance identically on every rank, and an activation recompute, which restores the default
    generator's state before rerunning, draws the same masks again."""
    if not enabled or _size(group) == 1:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64)) + 1_000_003 * (1 + dist.get_rank(group))
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed % 2**63)
        if cuda:
            torch.cuda.manual_seed(seed % 2**63)
        yield
