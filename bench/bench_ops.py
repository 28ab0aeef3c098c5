"""gptcore's fused ops against the PyTorch ops they replace, at GPT-2 shapes, in one run.

Each case first checks that gptcore and the baseline agree, then times both (warm-up, then the
median of repeated runs; CUDA timings with events) and prints a markdown table of the ratios.

    python bench/bench_ops.py                      # CPU, rows 8x1024, C 768, V 50257, GPT-2 small params,
                                                   # attention 4x12 heads x 1024 tokens x 64, causal
    python bench/bench_ops.py --device cuda --dtype bfloat16
    python bench/bench_ops.py --ops attention_varlen   # packed documents (cu_seqlens, documents of
                                                       # ~T/8 random lengths) against unmasked causal
"""

from __future__ import annotations

import argparse
import json
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
        self.rows: list[dict] = []  # one per (case, baseline), for --json
        self.failures: list[dict] = []  # cases whose validation or run raised

    def compare(
        self, op: str, shape: str, ours: Callable, baselines: dict[str, Callable], work: float = 0.0, unit: str = "GB/s"
    ):
        """work: GB moved or TFLOP done per call (unit says which), shown as gptcore's rate. A
        baseline that cannot run this case (a backend without a kernel for it) is reported and left out."""
        usable = {}
        for name, fn in baselines.items():
            try:
                fn()
                usable[name] = fn
            except Exception as e:  # noqa: BLE001 - any backend refusal; gptcore is still timed
                self.rows.append(dict(op=op, shape=shape, baseline=name, error=f"{type(e).__name__}: {e}"[:300]))
                print(f"| {op} | {shape} | | | {name} | unavailable: {str(e).splitlines()[0][:80]} | |", flush=True)
        t_ours, *t_bases = median_seconds([ours, *usable.values()], self.device, self.warmup, self.reps)
        rate = work / t_ours if work else None
        for name, t_base in zip(usable, t_bases):
            row = dict(op=op, shape=shape, ours_ms=t_ours * 1e3, rate=rate, unit=unit if work else None)
            row.update(baseline=name, baseline_ms=t_base * 1e3, speedup=t_base / t_ours)
            self.rows.append(row)
            bw = f"{rate:.1f} {unit}" if work else ""
            print(
                f"| {op} | {shape} | {t_ours * 1e3:.3f} | {bw} | {name} | {t_base * 1e3:.3f}"
                f" | {t_base / t_ours:.2f}x |",
                flush=True,
            )

    def run_case(self, name: str, fn: Callable[[], None]) -> None:
        """One benchmark case; a failure (wrong result, kernel error) is recorded and the rest still run."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported in the table and the JSON, exit code 1 at the end
            self.failures.append(dict(case=name, error=f"{type(e).__name__}: {e}"[:2000]))
            print(f"FAILED {name}: {type(e).__name__}: {e}", flush=True)

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


def bench_ceilings(t: Table, copy_mib: int = 2048, n: int = 8192):
    """The device's two ceilings, measured rather than read off a datasheet: a device-to-device copy
    far larger than the L2 (GB/s, bytes read + written) and an n x n x n bf16 product through
    cuBLAS (torch.matmul; TFLOP/s), on random data."""
    if t.device.type != "cuda":
        print("ceilings: CUDA only; skipped", flush=True)
        return
    x = torch.randn(copy_mib * 2**20 // 4, device=t.device)
    y = torch.empty_like(x)
    gbytes = 2 * x.numel() * 4 / 1e9
    t.compare(
        "copy (bandwidth ceiling)", f"{copy_mib} MiB", lambda: y.copy_(x), {"y.copy_(x)": lambda: y.copy_(x)}, gbytes
    )
    a, b = (torch.randn(n, n, device=t.device, dtype=torch.bfloat16) for _ in range(2))
    t.compare(
        "matmul (compute ceiling)",
        f"{n}^3 bf16",
        lambda: a @ b,
        {"torch.matmul": lambda: a @ b},
        2 * n**3 / 1e12,
        "TFLOP/s",
    )


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


def packed_document_bounds(B: int, T: int, mean: int, seed: int = 0) -> torch.Tensor:
    """cu_seqlens [B, S + 1] (int32) of rows packed with documents of random lengths in
    [mean / 2, 3 mean / 2] (the last one cut at T; short rows repeat T)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        bounds = [0]
        while bounds[-1] < T:
            n = int(torch.randint(max(1, mean // 2), 3 * mean // 2 + 1, (1,), generator=g))
            bounds.append(min(T, bounds[-1] + n))
        rows.append(bounds)
    S = max(len(r) for r in rows)
    return torch.tensor([r + [T] * (S - len(r)) for r in rows], dtype=torch.int32)


def bench_attention_varlen(t: Table, B: int, H: int, T: int, D: int, dtype: torch.dtype):
    """Packed documents of ~T/8 tokens: gptcore with cu_seqlens against gptcore's own unmasked causal
    attention at the same T (what packing costs, or saves: the speedup column is unmasked / masked
    time) and against SDPA with the dense document mask."""
    dev = t.device
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=dtype) for _ in range(3))
    cu = packed_document_bounds(B, T, max(1, T // 8)).to(dev)
    mask = ops.reference.document_mask(cu, T)
    tol = 1e-4 if dtype == torch.float32 else 2e-2

    def sdpa_masked(q_, k_, v_):
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)

    want = ops.reference.attention(q.double(), k.double(), v.double(), cu_seqlens=cu)
    torch.testing.assert_close(ops.attention(q, k, v, cu_seqlens=cu).double(), want, rtol=tol, atol=tol)
    lengths = cu.diff(dim=1).double()
    docs = f"{int((lengths > 0).sum())} docs"
    shape = f"{B}x{H}x{T}x{D} {docs} {str(dtype)[6:]}"
    tflop = 4 * H * D * float((lengths * (lengths + 1) / 2).sum()) / 1e12  # the visible pairs only
    baselines = {
        "gptcore causal, no documents": lambda q_, k_, v_: ops.attention(q_, k_, v_),
        "F.sdpa(document mask)": sdpa_masked,
    }
    with torch.no_grad():
        t.compare(
            "attention varlen fwd",
            shape,
            lambda: ops.attention(q, k, v, cu_seqlens=cu),
            {name: (lambda fn=fn: fn(q, k, v)) for name, fn in baselines.items()},
            tflop,
            "TFLOP/s",
        )
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    dout = torch.randn_like(q)
    ours = torch.autograd.grad(ops.attention(qg, kg, vg, cu_seqlens=cu), (qg, kg, vg), dout)
    ref = torch.autograd.grad(sdpa_masked(qg, kg, vg), (qg, kg, vg), dout)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=10 * tol)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(qg, kg, vg), (qg, kg, vg), dout)

    t.compare(
        "attention varlen fwd+bwd",
        shape,
        fwd_bwd(lambda q_, k_, v_: ops.attention(q_, k_, v_, cu_seqlens=cu)),
        {name: fwd_bwd(fn) for name, fn in baselines.items()},
        3.5 * tflop,
        "TFLOP/s",
    )


def bench_attention_sweep(t: Table, dtype: torch.dtype):
    """The GPU comparison of the issue: 16k tokens per batch, T from 512 to 8192, D 64 and 128,
    model width 2048 (H = 2048 / D), causal."""
    for D in (64, 128):
        for T in (512, 1024, 2048, 4096, 8192):
            t.run_case(
                f"attention T {T} D {D}", lambda T=T, D=D: bench_attention(t, 16384 // T, 2048 // D, T, D, dtype)
            )


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
    parser.add_argument(
        "--ops",
        default="layer_norm,cross_entropy,adamw,linear,attention",
        help="also: attention_varlen (packed documents, at --attn), ceilings (CUDA)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", help="write every row (and every failed case) to this file")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    table = Table(torch.device(args.device), args.warmup, args.reps)
    print(f"gptcore {gptcore.__version__}, torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads")
    print(table.header())
    selected = args.ops.split(",")
    cases = {
        "ceilings": lambda: bench_ceilings(table),
        "layer_norm": lambda: bench_layer_norm(table, args.rows, args.C, dtype),
        "cross_entropy": lambda: bench_cross_entropy(table, args.rows, args.V, dtype),
        "adamw": lambda: bench_adamw(table, dtype),
        "linear": lambda: bench_linear(table, args.rows, args.C, dtype),
        "attention": (
            (lambda: bench_attention_sweep(table, dtype))
            if args.attn_sweep
            else (lambda: bench_attention(table, *(int(x) for x in args.attn.split(",")), dtype))
        ),
        "attention_varlen": lambda: bench_attention_varlen(table, *(int(x) for x in args.attn.split(",")), dtype),
    }
    unknown = [name for name in selected if name not in cases]
    if unknown:
        parser.error(f"--ops: unknown {', '.join(unknown)}; choose from {', '.join(cases)}")
    for name in selected:
        table.run_case(name, cases[name])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(table.device), dtype=args.dtype, rows=table.rows, failures=table.failures), f)
    if table.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
