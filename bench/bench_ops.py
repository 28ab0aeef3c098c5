"""gptcore's fused ops against the PyTorch ops they replace, at GPT-2 shapes, in one run.

Each case first checks that gptcore and the baseline agree, then times both (warm-up, then the
median of repeated runs; CUDA timings with events) and prints a markdown table of the ratios.

    python bench/bench_ops.py                      # CPU, rows 8x1024, C 768, V 50257, GPT-2 small params,
                                                   # attention 4x12 heads x 1024 tokens x 64, causal
    python bench/bench_ops.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

import gptcore
from gptcore import ops


def median_seconds(fns: list[Callable[[], object]], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Median seconds of each fn, timed in turn within every repetition so that drift in the
    machine's speed (shared hosts, clocks) falls on all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


class Table:
    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps
        self.rows: list[str] = []

    def compare(
        self, op: str, shape: str, ours: Callable, baselines: dict[str, Callable], work: float = 0.0, unit: str = "GB/s"
    ):
        """work: GB moved or TFLOP done per call (unit says which), shown as gptcore's rate."""
        t_ours, *t_bases = median_seconds([ours, *baselines.values()], self.device, self.warmup, self.reps)
        for name, t_base in zip(baselines, t_bases):
            bw = f"{work / t_ours:.1f} {unit}" if work else ""
            self.rows.append(
                f"| {op} | {shape} | {t_ours * 1e3:.3f} | {bw} | {name} | {t_base * 1e3:.3f} | {t_base / t_ours:.2f}x |"
            )
            print(self.rows[-1], flush=True)

    def header(self) -> str:
        return (
            "| op | shape | gptcore ms | gptcore rate | baseline | baseline ms | speedup |\n"
            "|---|---|---|---|---|---|---|"
        )


def bench_layer_norm(t: Table, rows: int, C: int, dtype: torch.dtype):
    dev = t.device
    x, r = torch.randn(rows, C, device=dev, dtype=dtype), torch.randn(rows, C, device=dev, dtype=dtype)
    w, b = torch.randn(C, device=dev, dtype=dtype), torch.randn(C, device=dev, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ops.layer_norm(x, w, b), F.layer_norm(x, (C,), w, b), rtol=tol, atol=tol)
    shape, size = f"{rows}x{C} {str(dtype)[6:]}", x.numel() * x.element_size() / 1e9
    with torch.no_grad():
        t.compare(
            "layer_norm fwd",
            shape,
            lambda: ops.layer_norm(x, w, b),
            {"F.layer_norm": lambda: F.layer_norm(x, (C,), w, b)},
            2 * size,
        )
        t.compare(
            "add + layer_norm fwd",
            shape,
            lambda: ops.fused_add_layer_norm(x, r, w, b),
            {"x + r, F.layer_norm": lambda: F.layer_norm(x + r, (C,), w, b)},
            4 * size,
        )
        if dev.type == "cuda":
            y = torch.empty_like(x)
            t.compare(
                "copy (bandwidth ceiling)", shape, lambda: y.copy_(x), {"y.copy_(x)": lambda: y.copy_(x)}, 2 * size
            )
    xg, wg, bg = (v.clone().requires_grad_() for v in (x, w, b))
    dy = torch.randn_like(x)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(xg, wg, bg), (xg, wg, bg), dy)

    t.compare(
        "layer_norm fwd+bwd",
        shape,
        fwd_bwd(ops.layer_norm),
        {"F.layer_norm": fwd_bwd(lambda x, w, b: F.layer_norm(x, (C,), w, b))},
        5 * size,
    )


def bench_cross_entropy(t: Table, rows: int, V: int, dtype: torch.dtype):
    dev = t.device
    logits = (torch.randn(rows, V, device=dev) * 2).to(dtype).requires_grad_()
    target = torch.randint(0, V, (rows,), device=dev)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    ours, ref = ops.cross_entropy(logits, target), F.cross_entropy(logits.float(), target)
    torch.testing.assert_close(ours.float(), ref, rtol=tol, atol=tol)
    g_ours, g_ref = torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0]
    torch.testing.assert_close(g_ours.float(), g_ref.float(), rtol=tol, atol=tol * 1e-3)
    shape, size = f"{rows}x{V} {str(dtype)[6:]}", logits.numel() * logits.element_size() / 1e9
    with torch.no_grad():
        t.compare(
            "cross_entropy fwd",
            shape,
            lambda: ops.cross_entropy(logits, target),
            {"F.cross_entropy": lambda: F.cross_entropy(logits, target)},
            size,
        )

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(logits, target), logits)

    t.compare(
        "cross_entropy fwd+bwd",
        shape,
        fwd_bwd(ops.cross_entropy),
        {"F.cross_entropy": fwd_bwd(F.cross_entropy)},
        3 * size,
    )


def bench_linear(t: Table, rows: int, C: int, dtype: torch.dtype):
    """linear + tanh GELU (the GPT-2 MLP up-projection, [rows, C] -> [rows, 4C])."""
    dev = t.device
    x = torch.randn(rows, C, device=dev, dtype=dtype)
    w = (torch.randn(4 * C, C, device=dev) / C**0.5).to(dtype)
    b = (torch.randn(4 * C, device=dev) * 0.1).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    unfused = F.gelu(F.linear(x, w, b), approximate="tanh")
    torch.testing.assert_close(ops.linear(x, w, b, "gelu"), unfused, rtol=tol, atol=tol)
    baselines = {"F.gelu(F.linear) tanh": lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh")}
    # torch._addmm_activation fuses the bias and GELU into the product, but its GELU is erf or tanh
    # depending on version and device, and it has no derivative: validated against whichever it
    # computes, timed in the forward only, and named with its kind.
    fused = torch._addmm_activation(b, x, w.t(), use_gelu=True).float()
    for kind, approximate in [("tanh", "tanh"), ("erf", "none")]:
        if torch.allclose(fused, F.gelu(F.linear(x, w, b), approximate=approximate).float(), rtol=tol, atol=tol):
            baselines[f"torch._addmm_activation ({kind} GELU)"] = lambda x, w, b: torch._addmm_activation(
                b, x, w.t(), use_gelu=True
            )
            break
    else:
        print("torch._addmm_activation matches neither GELU: left out as a baseline", flush=True)
    shape = f"{rows}x{C}->{4 * C} {str(dtype)[6:]}"
    with torch.no_grad():
        t.compare(
            "linear+gelu fwd",
            shape,
            lambda: ops.linear(x, w, b, "gelu"),
            {name: (lambda fn=fn: fn(x, w, b)) for name, fn in baselines.items()},
        )
    xg, wg, bg = (v.clone().requires_grad_() for v in (x, w, b))
    dy = torch.randn(rows, 4 * C, device=dev, dtype=dtype)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(xg, wg, bg), (xg, wg, bg), dy)

    t.compare(
        "linear+gelu fwd+bwd",
        shape,
        fwd_bwd(lambda x, w, b: ops.linear(x, w, b, "gelu")),
        {"F.gelu(F.linear) tanh": fwd_bwd(baselines["F.gelu(F.linear) tanh"])},
    )


def gpt2_small_shapes(vocab: int = 50257, C: int = 768, layers: int = 12, ctx: int = 1024) -> list[tuple[int, ...]]:
    block = [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C), (C,)]
    return [(vocab, C), (ctx, C)] + block * layers + [(C,), (C,)]


def bench_adamw(t: Table, dtype: torch.dtype, steps: int = 3):
    dev = t.device
    shapes = gpt2_small_shapes()
    n = sum(torch.Size(s).numel() for s in shapes)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).to(dev) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dev) * 1e-3 for s in shapes]

    def make(kind: str):
        params = [torch.nn.Parameter(p.clone().to(dtype if kind == "gptcore" else torch.float32)) for p in init]
        for p, g in zip(params, grads):
            p.grad = g.clone().to(p.dtype)
        kw = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        if kind == "gptcore":
            return params, gptcore.optim.AdamW(params, **kw)
        return params, torch.optim.AdamW(params, **kw, **{kind: True})

    ours, opt = make("gptcore")
    base, base_opt = make("foreach")
    for _ in range(steps):
        opt.step()
        base_opt.step()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for a, b in zip(ours, base):
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol)
    shape = f"{n / 1e6:.1f}M params {str(dtype)[6:]}"
    # fp32 traffic per element: read p, g, m, v; write p, m, v (a master adds a read and a write).
    gbytes = n * (7 * 4 if dtype == torch.float32 else 2 * 3 + 4 * 5) / 1e9
    baselines = {f"torch AdamW {kind}": make(kind)[1].step for kind in ("foreach", "fused")}
    t.compare("AdamW step", shape, opt.step, baselines, gbytes)


def sdpa_baselines(device: torch.device) -> dict[str, Callable]:
    """Causal SDPA as the baseline: on CUDA once per fast backend (flash, cuDNN), else the default."""

    def sdpa(backend=None):
        def run(q, k, v):
            if backend is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return run

    if device.type != "cuda":
        return {"F.sdpa(is_causal=True)": sdpa()}
    from torch.nn.attention import SDPBackend

    return {"sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION), "sdpa cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}


def bench_attention(t: Table, B: int, H: int, T: int, D: int, dtype: torch.dtype):
    dev = t.device
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=dtype) for _ in range(3))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    baselines = sdpa_baselines(dev)
    want = next(iter(baselines.values()))(q, k, v)
    torch.testing.assert_close(ops.attention(q, k, v), want, rtol=tol, atol=tol)
    shape = f"{B}x{H}x{T}x{D} causal {str(dtype)[6:]}"
    tflop = 4 * B * H * T * T * D / 2 / 1e12  # causal forward; the backward is 2.5x (flash-attention's count)
    with torch.no_grad():
        t.compare(
            "attention fwd",
            shape,
            lambda: ops.attention(q, k, v),
            {name: (lambda fn=fn: fn(q, k, v)) for name, fn in baselines.items()},
            tflop,
            "TFLOP/s",
        )
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    dout = torch.randn_like(q)
    g_ours = torch.autograd.grad(ops.attention(qg, kg, vg), (qg, kg, vg), dout)
    g_ref = torch.autograd.grad(next(iter(baselines.values()))(qg, kg, vg), (qg, kg, vg), dout)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=10 * tol)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(qg, kg, vg), (qg, kg, vg), dout)

    t.compare(
        "attention fwd+bwd",
        shape,
        fwd_bwd(ops.attention),
        {name: fwd_bwd(fn) for name, fn in baselines.items()},
        3.5 * tflop,
        "TFLOP/s",
    )


def bench_attention_sweep(t: Table, dtype: torch.dtype):
    """The GPU comparison of the issue: 16k tokens per batch, T from 512 to 8192, D 64 and 128,
    model width 2048 (H = 2048 / D), causal."""
    for D in (64, 128):
        for T in (512, 1024, 2048, 4096, 8192):
            bench_attention(t, 16384 // T, 2048 // D, T, D, dtype)


# glibc returns large freed blocks to the OS, so each new CPU output tensor page-faults on
# first touch and timings swing with malloc's state. Keeping freed memory (as a caching
# allocator does) puts gptcore and PyTorch on the same footing: both reuse their buffers.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36)}


def pin_threads(threads: int) -> None:
    """The same thread count for torch's pool and the OpenMP and OpenBLAS pools gptcore runs on, and
    the malloc settings above: re-executes the script once with the environment set."""
    env = {**_MALLOC_ENV, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})
    torch.set_num_threads(threads)


def main() -> None:
    if any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--rows", type=int, default=8 * 1024)
    parser.add_argument("--C", type=int, default=768)
    parser.add_argument("--V", type=int, default=50257)
    parser.add_argument("--attn", default="4,12,1024,64", help="attention B,H,T,D")
    parser.add_argument("--attn-sweep", action="store_true", help="attention at T 512..8192, D 64/128 (for GPUs)")
    parser.add_argument("--ops", default="layer_norm,cross_entropy,adamw,linear,attention")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    table = Table(torch.device(args.device), args.warmup, args.reps)
    print(f"gptcore {gptcore.__version__}, torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads")
    print(table.header())
    selected = args.ops.split(",")
    if "layer_norm" in selected:
        bench_layer_norm(table, args.rows, args.C, dtype)
    if "cross_entropy" in selected:
        bench_cross_entropy(table, args.rows, args.V, dtype)
    if "adamw" in selected:
        bench_adamw(table, dtype)
    if "linear" in selected:
        bench_linear(table, args.rows, args.C, dtype)
    if "attention" in selected:
        if args.attn_sweep:
            bench_attention_sweep(table, dtype)
        else:
            bench_attention(table, *(int(x) for x in args.attn.split(",")), dtype)


if __name__ == "__main__":
    main()
