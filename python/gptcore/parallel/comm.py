"""Communicators on gptcore's C core: NCCL between processes, or one process alone.

    comm = Communicator.create(group, device)  # NCCL over a torch.distributed process group
    comm = Communicator.single()               # world 1, CPU or CUDA tensors
    comm.all_reduce(grad)                      # in place, on torch.cuda.current_stream()
    with comm.group():                         # a send and a recv exchanged with one peer
        comm.send(a, dst=peer)
        comm.recv(b, src=peer)

Ranks (`src`, `dst`, `rank`) count within the communicator, i.e. within its group, not globally.
Calls are queued on the current CUDA stream of the tensors' device and return at once, like
torch's collectives; every rank of the communicator must make the same collective calls in the
same order.

How the NCCL unique id travels: rank 0 of the group makes it and writes it into a
torch.distributed store, under a key naming the group's global ranks and how many communicators
this process has made over them; the other ranks read it from there (the read blocks until it is
written, up to the store's timeout). The store is the default one (the store init_process_group
made or was given) unless `store=` names another. A store rather than a collective on the group
(broadcast_object_list) because it needs nothing from the group's backend (gloo and nccl groups
alike, no device tensor, no torch NCCL communicator) and is how torch's own ProcessGroupNCCL
shares its id. It follows that the ranks of a group create their communicators over it in the
same order, as they would for any collective.

`CommCollectives` serves a communicator to gptcore.parallel.data_parallel (DataParallel,
ZeroAdamW) as its `Collectives`, so the gradient reductions run on gptcore's NCCL:

    dp = DataParallel(model, CommCollectives.create(group, device))  # or CommCollectives(comm)
    dp = DataParallel(model, CommCollectives(Communicator.single()))  # one process, CPU or CUDA

On CUDA it issues every collective on a communication stream of its own (one per device) that
first waits for the current stream, so the tensors' producers are done; a call with
async_op=True returns at once with a handle whose wait() makes the then current stream wait for
the collective, without blocking the host, so the reductions overlap the backward that keeps
running on the current stream (as torch's ProcessGroupNCCL and Megatron do). async_op=False is
the same call followed by wait(). The tensors are marked as used on the communication stream
(record_stream), so freeing them before the collective has run is safe. On CPU tensors (the
single backend) every call is done when it returns.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Iterator

import torch
import torch.distributed as dist

from gptcore import _C
from gptcore.ops._views import stream, view

REDUCE_OPS = {
    "sum": _C.reduce_op.sum,
    "avg": _C.reduce_op.avg,
    "max": _C.reduce_op.max,
    "min": _C.reduce_op.min,
    "prod": _C.reduce_op.prod,
}

# Communicators this process has made over each group (keyed by its global ranks): the
# creation count that makes every store key unique and the same on all ranks of the group.
_created: Counter[tuple[int, ...]] = Counter()


def _reduce_op(op: str) -> int:
    code = REDUCE_OPS.get(op)
    if code is None:
        raise ValueError(f"unknown reduce op {op!r}; expected one of {', '.join(REDUCE_OPS)}")
    return code


def _cuda_device(device: torch.device | int | str | None) -> torch.device:
    if device is None:
        if not torch.cuda.is_available():
            raise RuntimeError("an NCCL communicator needs a CUDA device and torch sees none")
        return torch.device("cuda", torch.cuda.current_device())
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"an NCCL communicator runs on a CUDA device, got device={device}; use Communicator.single()")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def _share_unique_id(store: dist.Store, key: str, rank: int) -> bytes:
    """Rank 0 writes a fresh id under `key`; every rank returns it. A failure on rank 0 is
    written as an empty id, so that the other ranks fail too instead of waiting on the store."""
    if rank == 0:
        try:
            uid = _C.comm_unique_id()
        except Exception:
            store.set(key, b"")
            raise
        store.set(key, uid)
        return uid
    uid = store.get(key)
    if not uid:
        raise RuntimeError(f"rank 0 of the group could not make an NCCL unique id (store key {key!r}); see its error")
    return uid


class Communicator:
    """A gptcore communicator; see the module docstring. Make one with create() or single()."""

    def __init__(self, comm: _C.Comm, device: torch.device | None = None):
        self._comm = comm
        self.device = device  # the CUDA device of an NCCL communicator; None for single
        self._depth = 0  # open groups
        self._held: list[torch.Tensor] = []  # tensors of the open group, alive until it is issued

    @classmethod
    def create(
        cls,
        group: dist.ProcessGroup | None = None,
        device: torch.device | int | str | None = None,
        store: dist.Store | None = None,
    ) -> Communicator:
        """An NCCL communicator over the ranks of `group` (default: the world group) on `device`
        (default: the current CUDA device). Collective: every rank of the group calls it."""
        if not dist.is_initialized():
            raise RuntimeError(
                "Communicator.create needs torch.distributed: call torch.distributed.init_process_group first "
                "(or use Communicator.single() for one process)"
            )
        group = group if group is not None else dist.group.WORLD
        device = _cuda_device(device)
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        if rank < 0:
            raise ValueError("this process is not a member of `group`; only its members create the communicator")
        ranks = tuple(dist.get_process_group_ranks(group))
        _created[ranks] += 1
        key = f"gptcore/comm/{'-'.join(map(str, ranks))}/{_created[ranks]}"
        store = store if store is not None else dist.distributed_c10d._get_default_store()
        uid = _share_unique_id(store, key, rank)
        return cls(_C.Comm.nccl(uid, rank, world, device.index), device)

    @classmethod
    def single(cls) -> Communicator:
        """A communicator of one process (world 1, rank 0) for CPU or CUDA tensors."""
        return cls(_C.Comm.single())

    @property
    def rank(self) -> int:
        return self._comm.rank

    @property
    def world(self) -> int:
        return self._comm.world

    @property
    def backend(self) -> str:
        """The backend: "nccl" or "single"."""
        return self._comm.backend

    def __repr__(self) -> str:
        where = f", device={self.device}" if self.device is not None else ""
        return f"Communicator(backend={self.backend!r}, rank={self.rank}, world={self.world}{where})"

    def close(self) -> None:
        """Frees the communicator once its queued work is done; it cannot be used afterwards."""
        self._comm.destroy()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """tensor = op over the ranks of tensor, in place; returns tensor."""
        v = view(tensor, "tensor")
        self._hold(tensor)
        self._comm.all_reduce(v, v, _reduce_op(op), stream(tensor))
        return tensor

    def all_gather(self, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """out = the ranks' inp concatenated along dim 0 (out.numel() == world * inp.numel())."""
        self._hold(out, inp)
        self._comm.all_gather(view(inp, "inp"), view(out, "out"), stream(out))
        return out

    def reduce_scatter(self, out: torch.Tensor, inp: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """out = this rank's part (along dim 0) of op over the ranks of inp
        (inp.numel() == world * out.numel())."""
        self._hold(out, inp)
        self._comm.reduce_scatter(view(inp, "inp"), view(out, "out"), _reduce_op(op), stream(out))
        return out

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """tensor = rank src's tensor, in place on every rank; returns tensor."""
        v = view(tensor, "tensor")
        self._hold(tensor)
        self._comm.broadcast(v if self.rank == src else None, v, src, stream(tensor))
        return tensor

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """tensor to rank dst, which posts the matching recv (same dtype and numel)."""
        self._hold(tensor)
        self._comm.send(view(tensor, "tensor"), dst, stream(tensor))

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """tensor = what rank src sends; returns tensor."""
        self._hold(tensor)
        self._comm.recv(view(tensor, "tensor"), src, stream(tensor))
        return tensor

    @contextlib.contextmanager
    def group(self) -> Iterator[Communicator]:
        """Issues the calls made inside together at the end (needed for a send and a recv
        exchanged with one peer, or with oneself on the single backend). Groups nest."""
        self._comm.group_start()
        self._depth += 1
        try:
            yield self
        except BaseException:
            with contextlib.suppress(_C.Error):  # close the group; the body's error is the one to report
                self._group_end()
            raise
        self._group_end()

    def _group_end(self) -> None:
        self._depth -= 1
        try:
            self._comm.group_end()
        finally:
            if self._depth == 0:
                self._held.clear()

    def _hold(self, *tensors: torch.Tensor) -> None:
        # Calls in a group run at its end: their tensors must outlive temporaries like x.contiguous().
        if self._depth:
            self._held.extend(tensors)


class CommWork:
    """The handle of a CommCollectives call: wait() makes the current CUDA stream wait for the
    collective (no host sync); is_completed() says whether the GPU has run it. Without an event
    (CPU tensors) the call is already done."""

    def __init__(self, event: torch.cuda.Event | None = None, device: torch.device | None = None):
        self._event, self._device = event, device

    def wait(self) -> None:
        if self._event is not None:
            torch.cuda.current_stream(self._device).wait_event(self._event)

    def is_completed(self) -> bool:
        return self._event is None or self._event.query()


class CommCollectives:
    """gptcore.parallel.data_parallel's `Collectives` (sum collectives, async_op) over a
    Communicator; see the module docstring."""

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.rank, self.world = comm.rank, comm.world
        self._streams: dict[torch.device, torch.cuda.Stream] = {}  # the communication stream per device

    @classmethod
    def create(
        cls,
        group: dist.ProcessGroup | None = None,
        device: torch.device | int | str | None = None,
        store: dist.Store | None = None,
    ) -> CommCollectives:
        """Over a new NCCL communicator: Communicator.create(group, device, store). Collective."""
        return cls(Communicator.create(group, device, store))

    def __repr__(self) -> str:
        return f"CommCollectives({self.comm!r})"

    def all_reduce(self, tensor: torch.Tensor, async_op: bool = False) -> CommWork | None:
        return self._issue(self.comm.all_reduce, tensor, async_op=async_op)

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, async_op: bool = False) -> CommWork | None:
        return self._issue(self.comm.reduce_scatter, output, input, async_op=async_op)

    def all_gather(self, output: torch.Tensor, input: torch.Tensor, async_op: bool = False) -> CommWork | None:
        return self._issue(self.comm.all_gather, output, input, async_op=async_op)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        self._issue(functools.partial(self.comm.broadcast, src=src), tensor, async_op=False)

    def stream(self, device: torch.device) -> torch.cuda.Stream:
        """The communication stream on `device` (a CUDA device), made on first use."""
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def _issue(self, call, *tensors: torch.Tensor, async_op: bool) -> CommWork | None:
        device = tensors[0].device
        if device.type != "cuda":
            call(*tensors)
            return CommWork() if async_op else None
        side = self.stream(device)
        side.wait_stream(torch.cuda.current_stream(device))  # the tensors' producers first
        with torch.cuda.stream(side):
            call(*tensors)
            done = torch.cuda.Event()
            done.record(side)
        for t in tensors:  # their memory is not reused before the collective has run
            t.record_stream(side)
        work = CommWork(done, device)
        if async_op:
            return work
        work.wait()
        return None
