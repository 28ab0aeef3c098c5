"""Where a gptcore training step spends its device time: torch.profiler over a few steps of the
GPT-2 124M model (bf16, B 16 x T 1024 on CUDA), kernels grouped by name, the largest first.
The table says which op to speed up next; bench_train.py gives the step's speed against PyTorch.

    python bench/gpu/profile_step.py                                   # CUDA
    python bench/gpu/profile_step.py --device cpu --preset tiny --batch 2 --seq-len 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import gptcore
from gptcore.model import GPT, GPTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after 3 warm-up steps)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", help="write the table to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(args.preset)).to(device=device, dtype=dtype)
    opt = gptcore.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq_len + 1), device=device)
    idx, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if on_cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if on_cuda:
            torch.cuda.synchronize()

    attr = "device_time_total" if on_cuda else "cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    if on_cuda:  # kernels only: the device's own time, not the host ops that launched them
        events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    rows = [
        dict(
            name=e.key[:90],
            ms_per_step=getattr(e, attr) / 1e3 / args.steps,
            share=getattr(e, attr) / total,
            calls=e.count,
        )
        for e in events[: args.top]
    ]
    shape = f"{args.preset}, B {args.batch} x T {args.seq_len}, {str(dtype)[6:]}, {device}"
    print(f"{shape}: {total / 1e3 / args.steps:.2f} ms of {'kernels' if on_cuda else 'host ops'} per step")
    print("| kernel | ms/step | share | calls |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['ms_per_step']:.3f} | {100 * r['share']:.1f}% | {r['calls']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(total_ms_per_step=total / 1e3 / args.steps, rows=rows), indent=1))


if __name__ == "__main__":
    main()
