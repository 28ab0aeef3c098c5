"""Training throughput: the gptcore model against the same model on plain PyTorch ops, in one run.

Both candidates are `gptcore.model.GPT` built from one config and one seed; the baseline has
`use_gptcore_ops=False` (F.linear, F.layer_norm, SDPA, F.cross_entropy) and steps with
torch.optim.AdamW (foreach, or fused), gptcore with gptcore.optim.AdamW. One training step is
forward + backward + optimizer step + zero_grad on a micro batch of B x T random tokens (a fixed
set of batches, made once from a seed). Before timing, the two must agree in fp32: the loss on
one batch, and every param after one step. Then warm-up steps, then rounds of k steps per
candidate, interleaved (A B A B ...), and the median tokens/s of each.

    python bench/bench_train.py                    # CPU: preset "mini", T 256, B 8, fp32, eager
    python bench/bench_train.py --preset tiny --seq-len 128
    python bench/bench_train.py --device cuda      # GPT-2 124M, bf16, T 1024; baseline under
                                                   # torch.compile; tokens/s and MFU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import torch

import gptcore
from bench_ops import median_seconds, pin_threads
from gptcore.model import GPT, GPTConfig

LR, BETAS, EPS, WEIGHT_DECAY = 6e-4, (0.9, 0.95), 1e-8, 0.1


def param_groups(model: GPT) -> list[dict]:
    """Weight decay on matrices (linear weights, embeddings), none on biases and layer norm weights."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build(cfg: GPTConfig, use_gptcore: bool, device: torch.device, dtype: torch.dtype, baseline_opt: str, seed: int):
    """(model, optimizer) for one candidate; the same seed gives both candidates the same weights."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**(cfg.to_dict() | {"use_gptcore_ops": use_gptcore}))).to(device=device, dtype=dtype)
    model.train()
    kw = dict(lr=LR, betas=BETAS, eps=EPS)
    if use_gptcore:
        opt = gptcore.optim.AdamW(param_groups(model), **kw)
    else:
        opt = torch.optim.AdamW(param_groups(model), **kw, **{baseline_opt: True})
    return model, opt


def train_step(forward: Callable, opt: torch.optim.Optimizer, idx: torch.Tensor, targets: torch.Tensor):
    _, loss = forward(idx, targets)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def validate(cfg, device, batch, baseline_opt, seed, loss_rtol, grad_rtol, param_atol) -> str:
    """Both models in fp32 on `device`: same weights, same loss, same grads, and the same params
    after one optimizer step from the same grads; exits if not.

    The step is taken from the baseline's grads on both sides: Adam's first step moves each
    element by about lr * g / (|g| + eps), so an element whose grad is near zero turns a 1e-7
    difference in g into one of order lr, which would say nothing about either side."""
    (ours, opt), (base, base_opt) = (build(cfg, g, device, torch.float32, baseline_opt, seed) for g in (True, False))
    for (name, a), b in zip(ours.state_dict().items(), base.state_dict().values()):
        if not torch.equal(a, b):
            sys.exit(f"validation: the two models start from different weights ({name})")
    idx, targets = batch
    _, loss = ours(idx, targets)
    _, base_loss = base(idx, targets)
    loss.backward()
    base_loss.backward()
    loss, base_loss = loss.item(), base_loss.item()
    if not abs(loss - base_loss) <= loss_rtol * abs(base_loss):
        sys.exit(f"validation: losses differ, gptcore {loss!r} vs PyTorch {base_loss!r} (rtol {loss_rtol})")
    worst_grad, worst_param = (0.0, ""), (0.0, "")
    for (name, a), b in zip(ours.named_parameters(), base.parameters()):
        rel = ((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-30)).item()
        worst_grad = max(worst_grad, (rel, name))
        a.grad.copy_(b.grad)
    if not worst_grad[0] <= grad_rtol:
        sys.exit(
            f"validation: grads differ by {worst_grad[0]:.3g} of their largest in {worst_grad[1]} (rtol {grad_rtol})"
        )
    opt.step()
    base_opt.step()
    for (name, a), b in zip(ours.named_parameters(), base.parameters()):
        worst_param = max(worst_param, ((a - b).abs().max().item(), name))
    if not worst_param[0] <= param_atol:
        sys.exit(
            f"validation: after one step params differ by {worst_param[0]:.3g} in {worst_param[1]} (atol {param_atol})"
        )
    return (
        f"loss {loss:.6f} vs {base_loss:.6f} (rel {abs(loss - base_loss) / abs(base_loss):.1e}); "
        f"grads within {worst_grad[0]:.1e} of each tensor's largest; "
        f"params after one AdamW step (lr {LR}) within {worst_param[0]:.1e}"
    )


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """6 N + 6 L C T: N the params that take part in products (the position table and the
    embedding's padding rows do not), 6 L C T the causal attention's scores and values (PaLM's
    12 L C T, halved because a causal row sees half the keys on average)."""
    n = cfg.num_parameters - cfg.n_positions * cfg.n_embd - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
    return 6 * n + 6 * cfg.n_layer * cfg.n_embd * seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available() and gptcore._build_info()["cuda"]
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--preset", help='GPTConfig preset (default: "mini" on CPU, "gpt2" on CUDA)')
    parser.add_argument("--seq-len", type=int, help="T (default: 256 on CPU, 1024 on CUDA)")
    parser.add_argument("--batch", type=int, help="micro batch B (default: 8 on CPU, 16 on CUDA)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="params (default: fp32 CPU, bf16 CUDA)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for both")
    parser.add_argument("--baseline-optimizer", default="foreach", choices=["foreach", "fused"])
    parser.add_argument(
        "--compile-baseline",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the PyTorch model (default: on for CUDA, off for CPU)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="steps per candidate before timing")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round (k)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per candidate")
    parser.add_argument("--batches", type=int, default=4, help="distinct random batches, cycled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="for MFU (H100 SXM dense bf16: 989.4)")
    parser.add_argument("--loss-rtol", type=float, default=1e-4)
    parser.add_argument("--grad-rtol", type=float, default=1e-4, help="of each grad tensor's largest element")
    parser.add_argument("--param-atol", type=float, default=1e-6, help="after one step from the same grads")
    parser.add_argument("--json", help="write the validation and every candidate's numbers to this file")
    args = parser.parse_args()

    pin_threads(args.threads)  # the same threads for both

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    preset = args.preset or ("gpt2" if on_cuda else "mini")
    seq_len = args.seq_len or (1024 if on_cuda else 256)
    B = args.batch or (16 if on_cuda else 8)
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    if dtype != torch.float32 and not on_cuda:
        parser.error("gptcore's CPU kernels take float32 only; --dtype bfloat16 is for CUDA")
    compile_baseline = on_cuda if args.compile_baseline is None else args.compile_baseline
    cfg = GPTConfig.preset(preset)
    cfg = GPTConfig.preset(preset, n_positions=max(cfg.n_positions, seq_len))

    gen = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.batches):
        tokens = torch.randint(0, cfg.vocab_size, (B, seq_len + 1), generator=gen).to(device)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))

    print(f"gptcore {gptcore.__version__}, torch {torch.__version__}, {device}, {args.threads} threads")
    tuning = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND") if k in os.environ]
    if tuning:
        print("environment: " + ", ".join(tuning))
    if on_cuda:
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(
        f"model: preset {preset!r}, {cfg.n_layer} layers, {cfg.n_head} heads, C {cfg.n_embd}, vocab {cfg.vocab_size}"
        f" (padded {cfg.padded_vocab_size}), {cfg.num_parameters / 1e6:.2f}M params"
    )
    print(
        f"step: B {B} x T {seq_len} = {B * seq_len} tokens, {str(dtype)[6:]} params, AdamW lr {LR} betas {BETAS}"
        f" wd {WEIGHT_DECAY}; gptcore.optim.AdamW vs torch.optim.AdamW({args.baseline_optimizer}=True)"
    )
    print(f"baseline: PyTorch ops{', torch.compile(model)' if compile_baseline else ', eager'}", flush=True)
    if dtype != torch.float32:
        print(
            "note: gptcore.optim.AdamW keeps fp32 moments and an fp32 master of each half param; "
            "torch.optim.AdamW keeps its state in the param dtype"
        )

    check = validate(
        cfg, device, batches[0], args.baseline_optimizer, args.seed, args.loss_rtol, args.grad_rtol, args.param_atol
    )
    print(f"validation (fp32): {check}", flush=True)

    candidates = {}
    for name, use_gptcore in (("gptcore", True), ("PyTorch", False)):
        model, opt = build(cfg, use_gptcore, device, dtype, args.baseline_optimizer, args.seed)
        forward = torch.compile(model) if compile_baseline and not use_gptcore else model
        candidates[name] = (forward, opt)

    done = dict.fromkeys(candidates, 0)  # steps taken: each candidate walks the batches in the same order

    def run(name: str, steps: int) -> Callable[[], None]:
        forward, opt = candidates[name]

        def steps_fn():
            for _ in range(steps):
                train_step(forward, opt, *batches[done[name] % len(batches)])
                done[name] += 1

        return steps_fn

    for name in candidates:  # warm-up (and, for a compiled baseline, compilation)
        run(name, args.warmup)()
    if on_cuda:
        torch.cuda.synchronize(device)
    seconds = median_seconds([run(n, args.steps) for n in candidates], device, 0, args.rounds)

    tokens = args.steps * B * seq_len
    fpt = flops_per_token(cfg, seq_len)
    rate = {name: tokens / s for name, s in zip(candidates, seconds)}
    print(f"\n{args.rounds} interleaved rounds of {args.steps} steps each, after {args.warmup} warm-up steps; medians")
    mfu_head = " MFU |" if on_cuda else ""
    print(f"| candidate | ms/step | tokens/s |{mfu_head}\n|---|---|---|{'---|' if on_cuda else ''}")
    for name, s in zip(candidates, seconds):
        mfu = f" {100 * rate[name] * fpt / (args.peak_tflops * 1e12):.1f}% |" if on_cuda else ""
        print(f"| {name} | {s / args.steps * 1e3:.1f} | {rate[name]:,.0f} |{mfu}")
    print(f"\ngptcore / PyTorch tokens/s: {rate['gptcore'] / rate['PyTorch']:.2f}x")
    if on_cuda:
        print(f"MFU: {fpt / 1e9:.3f} GFLOP/token (6N + 6LCT), peak {args.peak_tflops} TFLOP/s")
    if args.json:
        result = dict(
            device=str(device),
            gpu=torch.cuda.get_device_name(device) if on_cuda else None,
            preset=preset,
            batch=B,
            seq_len=seq_len,
            dtype=str(dtype)[6:],
            baseline="PyTorch ops" + (" + torch.compile" if compile_baseline else " eager"),
            validation=check,
            flops_per_token=fpt,
            peak_tflops=args.peak_tflops,
            candidates={
                name: dict(
                    ms_per_step=s / args.steps * 1e3,
                    tokens_per_s=rate[name],
                    mfu=rate[name] * fpt / (args.peak_tflops * 1e12),
                )
                for name, s in zip(candidates, seconds)
            },
            ratio=rate["gptcore"] / rate["PyTorch"],
        )
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
