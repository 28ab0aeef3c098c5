"""CPU AdamW step on GPT-2-small-sized float32 params: gptcore.optim.AdamW vs torch.optim.AdamW.

Run with PYTHONPATH=python after copying the built _C*.so into python/gptcore/:
    python bench/bench_adamw_torch.py [reps] [gptcore|foreach|fused ...]
Prints the median step time of each and, when all three ran, ours relative to torch's.
The optimizers step in turn, so a noisy neighbour slows all alike; but gptcore's OpenMP runtime
and torch's are separate thread pools that spin after each region and compete for the cores,
so on a small machine also time each in its own process (name one per run).
"""

import statistics
import sys
import time

import torch

from gptcore.optim import AdamW

C = 768
SIZES = [50257 * C, 1024 * C] + [C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C] * 12 + [C, C]


def make_params():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen).requires_grad_() for n in SIZES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return params


def median_ms(optimizers, reps):
    """Steps the optimizers in turn (so a noisy neighbour slows all alike); median ms of each."""
    for opt in optimizers.values():
        opt.step()  # warm-up: creates the state
    times = {name: [] for name in optimizers}
    for _ in range(reps):
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    kw = {"lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}
    print(f"{sum(SIZES) / 1e6:.1f}M float32 params in {len(SIZES)} tensors, {torch.get_num_threads()} threads")
    makers = {
        "gptcore": lambda: AdamW(make_params(), **kw),
        "foreach": lambda: torch.optim.AdamW(make_params(), foreach=True, **kw),
        "fused": lambda: torch.optim.AdamW(make_params(), fused=True, **kw),
    }
    names = sys.argv[2:] or list(makers)
    results = median_ms({name: makers[name]() for name in names}, reps)
    for name, ms in results.items():
        print(f"{name:14s} median {ms:9.1f} ms  {sum(SIZES) * 28 / ms / 1e6:6.2f} GB/s")
    if len(results) == len(makers):
        for name in ("foreach", "fused"):
            print(f"gptcore speedup vs torch {name}: {results[name] / results['gptcore']:.2f}x")


if __name__ == "__main__":
    main()
