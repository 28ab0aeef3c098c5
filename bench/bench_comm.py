"""All-reduce bandwidth: gptcore's NCCL communicator against torch.distributed's NCCL all_reduce.

One process per GPU, launched by torchrun (or one process on one GPU without it):

    torchrun --nproc-per-node=8 bench/bench_comm.py                  # 1 MiB .. 1 GiB, float32
    torchrun --nproc-per-node=8 bench/bench_comm.py --dtype bfloat16 --max-mib 256
    python bench/bench_comm.py                                       # world 1 (busbw is 0 by definition)

Both sides are checked against the exact sum first (rank r contributes r + 1, small integers that
every dtype holds exactly) and against each other. Then, for each message size, each repetition
times `--iters` in-place all-reduces of gptcore and of torch in turn with CUDA events; a
repetition's time is the slowest rank's, and the table shows the medians; ratio is torch's time
over gptcore's (above 1.0x: gptcore is faster). As in nccl-tests,
algbw = bytes / time and busbw = algbw * 2 (n - 1) / n, the rate each link sustains in a ring
all-reduce, comparable across world sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.distributed as dist

from gptcore import _C
from gptcore.parallel.comm import Communicator

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def require_nccl_gpu() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench_comm.py needs a CUDA GPU per process (torch sees none); it measures NCCL all-reduce")
    if _C.build_info()["nccl_version"] == 0:
        sys.exit("bench_comm.py: this gptcore was built without NCCL (rebuild with CUDA and nvidia-nccl-cu13)")
    if not dist.is_nccl_available():
        sys.exit("bench_comm.py: this torch was built without NCCL, so there is no baseline to compare with")


def init_group() -> torch.device:
    """The default process group on NCCL: torchrun's environment, or a world of one."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    if "RANK" in os.environ:
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    return device


def validate(comm: Communicator, n: int, dtype: torch.dtype, device: torch.device) -> None:
    rank, world = comm.rank, comm.world
    want = torch.full((n,), world * (world + 1) // 2, dtype=dtype, device=device)
    ours = comm.all_reduce(torch.full((n,), rank + 1, dtype=dtype, device=device))
    theirs = torch.full((n,), rank + 1, dtype=dtype, device=device)
    dist.all_reduce(theirs)
    if not torch.equal(ours, want) or not torch.equal(theirs, want):
        raise SystemExit(f"rank {rank}: all-reduce of {n} {dtype} elements is wrong; not timing it")


def time_reps(fns, iters: int, warmup: int, reps: int) -> list[float]:
    """Median seconds per call of each fn, over the slowest rank, timed in turn each repetition."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            dist.barrier()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            t = torch.tensor([start.elapsed_time(end) / 1e3 / iters], device="cuda")
            dist.all_reduce(t, dist.ReduceOp.MAX)
            ts.append(t.item())
    return [statistics.median(ts) for ts in times]


def bench_size(comm: Communicator, nbytes: int, dtype: torch.dtype, device: torch.device, args) -> tuple[float, float]:
    """Seconds per all-reduce of nbytes: gptcore's, torch's."""
    n = nbytes // torch.tensor([], dtype=dtype).element_size()
    validate(comm, n, dtype, device)
    x = torch.zeros(n, dtype=dtype, device=device)  # stays finite however often it is summed
    return time_reps([lambda: comm.all_reduce(x), lambda: dist.all_reduce(x)], args.iters, args.warmup, args.reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--min-mib", type=int, default=1)
    ap.add_argument("--max-mib", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20, help="all-reduces per timed repetition")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    require_nccl_gpu()

    device = init_group()
    comm = Communicator.create(device=device)
    dtype, world = DTYPES[args.dtype], comm.world
    factor = 2 * (world - 1) / world
    lead = comm.rank == 0
    if lead:
        nccl = _C.build_info()["nccl_version"]
        print(f"# all-reduce, {world} x {torch.cuda.get_device_name(device)}, {args.dtype}, NCCL {nccl}")
        print("| size | gptcore ms | gptcore algbw GB/s | gptcore busbw GB/s | torch ms | torch busbw GB/s | ratio |")
        print("|---|---|---|---|---|---|---|")
    mib = args.min_mib
    while mib <= args.max_mib:
        nbytes = mib << 20
        t_ours, t_torch = bench_size(comm, nbytes, dtype, device, args)
        if lead:
            alg, torch_alg = nbytes / t_ours / 1e9, nbytes / t_torch / 1e9
            print(
                f"| {mib} MiB | {t_ours * 1e3:.3f} | {alg:.1f} | {alg * factor:.1f} | {t_torch * 1e3:.3f} | "
                f"{torch_alg * factor:.1f} | {t_torch / t_ours:.2f}x |",
                flush=True,
            )
        mib *= 2
    comm.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
