"""Every gptcore op once, forward and backward, at small odd shapes: the program that
compute-sanitizer (memcheck, racecheck) watches in bench/gpu/check.sh. Small, so that the
sanitizer's slowdown still fits the slot; odd, so that tails and partial tiles run. Each result is
checked against gptcore.ops.reference in float32, so a wrong kernel fails here too.

    compute-sanitizer --tool memcheck python bench/gpu/ops_smoke.py
    python bench/gpu/ops_smoke.py --device cpu        # the same calls on the CPU kernels
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import gptcore
from gptcore import ops
from gptcore.ops import reference


def close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float, failures: list[str]) -> None:
    err = ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
    ok = bool(torch.isfinite(got).all()) and err <= tol
    print(f"{name:<28} rel err {err:.2e} (tol {tol:g}) {'ok' if ok else 'WRONG'}", flush=True)
    if not ok:
        failures.append(name)


def grads(fn, inputs: list[torch.Tensor], dout: torch.Tensor) -> list[torch.Tensor]:
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    return list(torch.autograd.grad(fn(*leaves), leaves, dout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    # References through PyTorch's math attention: its fused SDPA kernels (cutlass fmha) draw
    # racecheck reports of their own, which would bury any in gptcore's kernels.
    with sdpa_kernel(SDPBackend.MATH):
        run(torch.device(args.device))


def run(dev: torch.device) -> None:
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.manual_seed(0)
    failures: list[str] = []

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev) * scale).to(dtype)

    x, w, b = rand(37, 771), rand(771), rand(771)
    dy = rand(37, 771)
    close(
        "layer_norm fwd", ops.layer_norm(x, w, b), reference.layer_norm(x.float(), w.float(), b.float()), tol, failures
    )
    for i, (g, r) in enumerate(
        zip(
            grads(ops.layer_norm, [x, w, b], dy),
            grads(lambda *a: reference.layer_norm(*a), [x.float(), w.float(), b.float()], dy.float()),
        )
    ):
        close(f"layer_norm bwd {'xwb'[i]}", g, r, 5 * tol, failures)

    logits, target = rand(29, 50257, scale=2.0), torch.randint(0, 50257, (29,), device=dev)
    target[3] = -100
    close(
        "cross_entropy fwd",
        ops.cross_entropy(logits, target),
        reference.cross_entropy(logits.float(), target),
        tol,
        failures,
    )
    g = grads(lambda z: ops.cross_entropy(z, target), [logits], torch.ones((), device=dev, dtype=dtype))[0]
    r = grads(lambda z: reference.cross_entropy(z, target), [logits.float()], torch.ones((), device=dev))[0]
    close("cross_entropy bwd", g, r, tol, failures)

    buf = rand(33 * 97 + 1, scale=1.0)
    xm = buf[1:].view(33, 97)  # one element off the allocation's alignment
    wl, bl = rand(203, 97, scale=0.1), rand(203, scale=0.1)
    want = reference.linear(xm.float(), wl.float(), bl.float(), activation="gelu")
    close("linear+gelu (misaligned x)", ops.linear(xm, wl, bl, activation="gelu"), want, tol, failures)
    dyl = rand(33, 203)
    for i, (g, r) in enumerate(
        zip(
            grads(lambda *a: ops.linear(*a, activation="gelu"), [xm, wl, bl], dyl),
            grads(
                lambda *a: reference.linear(*a, activation="gelu"), [xm.float(), wl.float(), bl.float()], dyl.float()
            ),
        )
    ):
        close(f"linear+gelu bwd {'xwb'[i]}", g, r, 5 * tol, failures)

    q, k, v = rand(2, 3, 65, 72), rand(2, 3, 129, 72), rand(2, 3, 129, 72)
    want = reference.attention(q.float(), k.float(), v.float(), causal=True)
    close("attention fwd (T_q < T_k)", ops.attention(q, k, v, causal=True), want, tol, failures)
    do = rand(2, 3, 65, 72)
    ref_fn = reference.attention
    for i, (g, r) in enumerate(
        zip(grads(ops.attention, [q, k, v], do), grads(ref_fn, [q.float(), k.float(), v.float()], do.float()))
    ):
        close(f"attention bwd d{'qkv'[i]}", g, r, 5 * tol, failures)
    kc, vc = rand(3, 4, 300, 64), rand(3, 4, 300, 64)
    qd, lens = rand(3, 4, 1, 64), torch.tensor([1, 150, 300], device=dev, dtype=torch.int32)
    close(
        "attention_decode",
        ops.attention_decode(qd, kc, vc, lens),
        reference.attention_decode(qd.float(), kc.float(), vc.float(), lens),
        tol,
        failures,
    )

    params = [torch.nn.Parameter(rand(1000, 7, scale=0.02)), torch.nn.Parameter(rand(13, scale=0.02))]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = gptcore.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    before = [p.detach().float().clone() for p in params]
    opt.step()
    moved = all(bool(torch.isfinite(p).all()) and not torch.equal(p.float(), q) for p, q in zip(params, before))
    print(f"{'adamw step':<28} {'ok' if moved else 'WRONG'}")
    if not moved:
        failures.append("adamw")

    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"{len(failures)} wrong: {', '.join(failures)}" if failures else "all ops ok")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
