"""Run a function in N processes joined by a gloo default group: multi-rank tests on one CPU.

    results = run_distributed(worker, 2, arg)   # worker(rank, world_size, arg) on each rank

`worker` must be importable by name (a module-level function) since the ranks are separate
processes. Each rank's return value comes back pickled, in rank order. When a rank raises, the
others are stopped (they may be blocked in a collective waiting for it) and `DistributedError`
carries the failing ranks' tracebacks, so a test failure shows where it happened.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import tempfile
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """A rank of run_distributed raised, died or did not finish in time."""


def run_distributed(fn, world_size: int, *args, timeout: float = 120.0) -> list:
    """[fn(rank, world_size, *args) for each rank], each rank in its own single-threaded process
    with a gloo default group of world_size ranks."""
    ctx = multiprocessing.get_context("forkserver")
    # Ranks fork from one server that imported torch once (a spawned process takes seconds to import
    # it, and torch._dynamo, which the first optimizer imports, as long) and never ran an OpenMP
    # region, unlike this process, so the forks may use OpenMP.
    ctx.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "gptcore.model"])
    results: dict[int, object] = {}
    with tempfile.TemporaryDirectory() as tmp, _environ(OMP_NUM_THREADS="1"):
        channel = ctx.Queue()
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_main, args=(fn, rank, world_size, store, channel, timeout, args))
            for rank in range(world_size)
        ]
        for proc in procs:
            proc.start()
        try:
            deadline = time.monotonic() + timeout
            errors: list[str] = []
            while len(results) + len(errors) < world_size:
                try:
                    rank, ok, payload = channel.get(timeout=1.0)
                except queue.Empty:
                    if errors:  # the others are likely blocked on a failed rank: report what we have
                        break
                    dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
                    if dead:
                        codes = ", ".join(f"rank {r} exit code {procs[r].exitcode}" for r in dead)
                        raise DistributedError(f"{fn.__name__}: a rank died without reporting ({codes})") from None
                    if time.monotonic() > deadline:
                        waiting = sorted(set(range(world_size)) - set(results))
                        raise DistributedError(
                            f"{fn.__name__}: ranks {waiting} did not finish in {timeout:g} s"
                        ) from None
                    continue
                if ok:
                    results[rank] = pickle.loads(payload)
                else:
                    errors.append(f"{fn.__name__} failed on rank {rank} of {world_size}:\n{payload}")
            if errors:  # in the order they arrived: the first is usually the cause of the others
                raise DistributedError("\n".join(errors))
            for proc in procs:
                proc.join(timeout=max(deadline - time.monotonic(), 1.0))
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                proc.join()
            channel.close()
    return [results[rank] for rank in range(world_size)]


@contextlib.contextmanager
def _environ(**values):
    """os.environ with these values while the ranks start (the fork server takes its environment
    when it starts), restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _rank_main(fn, rank, world_size, store, channel, timeout, args) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        # Plain pickle: the result travels as bytes, not as shared memory tied to this process.
        report = (rank, True, pickle.dumps(fn(rank, world_size, *args)))
    except BaseException:
        report = (rank, False, traceback.format_exc())
    # Delivered before tearing down, which fails the other ranks' pending collectives: a rank's
    # own error reaches the parent before the errors it causes elsewhere.
    channel.put(report)
    channel.close()
    channel.join_thread()
    if dist.is_initialized():
        if report[1]:  # wait for the others: tearing down while a peer still connects fails it
            with contextlib.suppress(Exception):
                dist.barrier()
        dist.destroy_process_group()
