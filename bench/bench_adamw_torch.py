"""CPU AdamW step on GPT-2-small-sized float32 params: gptcore.optim.AdamW vs torch.optim.AdamW.

Run with PYTHONPATH=python after copying the built _C*.so into python/gptcore/. Prints the
median step time of each and the speed of ours relative to torch's foreach and fused steps.
"""

import gc
import statistics
import sys
import time

import torch

from gptcore.optim import AdamW

C = 768
SIZES = [50257 * C, 1024 * C] + [C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C] * 12 + [C, C]


def median_ms(make_optimizer, reps):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen).requires_grad_() for n in SIZES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    opt = make_optimizer(params)
    opt.step()  # warm-up: creates the state
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    del opt, params
    gc.collect()
    return statistics.median(times) * 1e3


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    kw = {"lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}
    print(f"{sum(SIZES) / 1e6:.1f}M float32 params in {len(SIZES)} tensors, {torch.get_num_threads()} threads")
    results = {
        "gptcore": median_ms(lambda ps: AdamW(ps, **kw), reps),
        "torch foreach": median_ms(lambda ps: torch.optim.AdamW(ps, foreach=True, **kw), reps),
        "torch fused": median_ms(lambda ps: torch.optim.AdamW(ps, fused=True, **kw), reps),
    }
    for name, ms in results.items():
        print(f"{name:14s} median {ms:9.1f} ms  {sum(SIZES) * 28 / ms / 1e6:6.2f} GB/s")
    for name in ("torch foreach", "torch fused"):
        print(f"gptcore speedup vs {name}: {results[name] / results['gptcore']:.2f}x")


if __name__ == "__main__":
    main()
