"""LoRA against full finetuning on the same model: step time, peak memory, and the bytes of the
trainable state (params that get grads, their grads, AdamW's state).

Each mode runs in a fresh process (so its peak memory is its own): the same seeded GPT (GPT-2 124M
shape by default, random weights standing in for a pretrained model), the same batches, gptcore's
fused AdamW. `full` trains every parameter; `lora` freezes them and trains rank-r adapters on the
targets (gptcore.finetune.lora). Peak memory: torch.cuda.max_memory_allocated on a GPU; on the CPU
the process's peak RSS above its RSS after building the model and the batches (what training adds).

Validation, before timing, in the lora process: with B = 0 the adapted model's logits equal the base
model's (within 1e-5: with mlp_in adapted the GELU runs unfused); after the timed steps, only adapter
params have changed, and in both modes the loss on the one repeated batch is finite and falling.

    python bench/bench_lora.py                      # CPU, GPT-2 124M shape, batch 4 x 256, rank 8
    python bench/bench_lora.py --tiny --steps 3     # smoke test
    python bench/bench_lora.py --device cuda --dtype bf16 --batch 8 --seq 1024
    python bench/bench_lora.py --json lora.json     # the numbers + machine details to a file
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from gptcore.model import DTYPES, GPT, GPTConfig


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _config(args) -> GPTConfig:
    if args.tiny:
        return GPTConfig(vocab_size=512, n_positions=max(args.seq, 128), n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    return GPTConfig.preset("gpt2", n_positions=max(args.seq, 1024), dropout=0.0, attn_dropout=0.0)


def run_mode(args) -> dict:
    """One mode in this process: validate, time args.steps steps, report."""
    from gptcore.finetune.lora import LoRAConfig, apply_lora
    from gptcore.optim import AdamW

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    config = _config(args)
    model = GPT(config).to(device=device, dtype=dtype).train()
    g = torch.Generator().manual_seed(1)
    # One batch, every step: the loss must then fall (memorization), a check that training happens.
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), generator=g).to(device)
    batches = [batch] * (args.steps + args.warmup)
    if args.mode == "lora":
        probe = batches[0][:1, : args.seq]
        with torch.no_grad():
            before = model.eval()(probe)[0]
        apply_lora(model, LoRAConfig(args.rank, alpha=2 * args.rank, targets=tuple(args.targets)))
        model.to(device=device, dtype=dtype)
        with torch.no_grad():
            after = model(probe)[0]
        model.train()
        if not torch.allclose(before, after, rtol=1e-5, atol=1e-5):
            sys.exit("validation failed: the LoRA model with B = 0 differs from the base model")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(trainable, lr=1e-3, weight_decay=0.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_memory = torch.cuda.memory_allocated()
    else:
        base_memory = _current_rss_bytes()
    losses, times = [], []
    for step, batch in enumerate(batches):
        t0 = time.perf_counter()
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss_bytes()
    for name, p in model.named_parameters():
        if name in frozen and not torch.equal(p, frozen[name]):
            sys.exit(f"validation failed: frozen parameter {name} changed")
    if not all(map(lambda x: x == x and abs(x) != float("inf"), losses)) or losses[-1] >= losses[0]:
        sys.exit(f"validation failed: {args.mode} losses {losses} are not finite and falling")
    state_bytes = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return {
        "mode": args.mode,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "trainable_state_bytes": sum(p.numel() * p.element_size() * 2 for p in trainable) + state_bytes,
        "step_ms_median": 1e3 * statistics.median(times),
        "step_ms_all": [1e3 * t for t in times],
        "peak_memory_bytes": peak - base_memory,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["qkv", "attn_out", "mlp_in", "mlp_out"])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer 64-wide model (smoke test)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # one mode, in a child
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("full", "lora"):
        command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{mode}: {out.stderr.strip() or out.stdout.strip()}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    shape = "tiny" if args.tiny else "GPT-2 124M shape"
    print(
        f"{shape}, {args.device} {args.dtype}, batch {args.batch} x {args.seq}, LoRA rank {args.rank} on {args.targets}"
    )
    print(f"{'':>6} {'trainable':>12} {'grads+state MiB':>16} {'peak MiB':>10} {'step ms':>9} {'loss':>14}")
    for r in (full, lora):
        print(
            f"{r['mode']:>6} {r['trainable']:>12,} {r['trainable_state_bytes'] / 2**20:>16.1f}"
            f" {r['peak_memory_bytes'] / 2**20:>10.1f} {r['step_ms_median']:>9.1f}"
            f" {r['loss_first']:>6.3f}->{r['loss_last']:<6.3f}"
        )
    print(
        f"LoRA / full: step time {lora['step_ms_median'] / full['step_ms_median']:.2f}x, peak memory"
        f" {lora['peak_memory_bytes'] / max(full['peak_memory_bytes'], 1):.2f}x, trainable state"
        f" {lora['trainable_state_bytes'] / full['trainable_state_bytes']:.4f}x"
    )
    if args.json:
        machine = {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count()}
        if args.device.startswith("cuda"):
            machine["gpu"] = torch.cuda.get_device_name()
        record = {"date": datetime.date.today().isoformat(), "args": vars(args), "machine": machine, **results}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
