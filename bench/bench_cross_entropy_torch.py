"""gptcore.ops.cross_entropy vs F.cross_entropy on the CPU: forward + backward, same inputs, runs interleaved.

    PYTHONPATH=python python3 bench/bench_cross_entropy_torch.py [rows=2048] [V=50257] [reps=5]

Both sides include autograd and the allocation of a fresh [rows, V] gradient each step (for big
shapes the first-touch page faults of that allocation are a large share of the time).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

import gptcore


def step(fn, logits, target):
    x = logits.detach().requires_grad_()
    start = time.perf_counter()
    loss = fn(x, target, ignore_index=-100)
    loss.backward()
    return time.perf_counter() - start, loss.detach(), x.grad


def main() -> None:
    args = [int(a) for a in sys.argv[1:4]]
    rows, V, reps = args + [2048, 50257, 5][len(args) :]
    torch.manual_seed(0)
    logits = 3 * torch.randn(rows, V)
    target = torch.randint(0, V, (rows,))
    target[3::7] = -100
    fns = {"torch": F.cross_entropy, "gptcore": gptcore.ops.cross_entropy}

    _, want, want_grad = step(F.cross_entropy, logits, target)
    _, got, got_grad = step(gptcore.ops.cross_entropy, logits, target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-7)
    del want_grad, got_grad

    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(step(fn, logits, target)[0])
    print(f"cross_entropy CPU float32 forward + backward, rows = {rows}, V = {V}, threads = {torch.get_num_threads()}")
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in median.items():
        print(f"{name:8s} median {t * 1e3:10.2f} ms  {3 * rows * V * 4 / t / 1e9:6.2f} GB/s (3 passes over [rows, V])")
    print(f"gptcore / torch speed: {median['torch'] / median['gptcore']:.2f}x")


if __name__ == "__main__":
    main()
