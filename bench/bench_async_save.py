"""What a checkpoint save costs the training loop: `save_checkpoint()` written on the spot (the
baseline) against async_save (state copied to host memory at the step boundary, written by a
background thread), in one run.

One Trainer per candidate and round, on the built-in default data (the standard library's sources,
built once and cached), saving every --save-every steps. Timed on the training thread: each step
(`train_step`) and each save call at a step boundary; a step that overlaps a background save pays
for the contention, so the loop's total time per step is reported too. Before timing, both
candidates must write the same checkpoint (model and optimizer state equal) for the same step.
Rounds alternate the candidates (A B A B ...); medians over rounds.

    python bench/bench_async_save.py                      # CPU, 6 layers x 512, T 128, B 4
    python bench/bench_async_save.py --n-layer 12 --n-embd 768 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from gptcore.checkpoint import load_trainer_state
from gptcore.training import Trainer, load_config


def config(args, save: Path, async_save: bool) -> dict:
    return dict(
        model="tiny",
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_embd // 64,
        n_positions=args.seq_len,
        seq_len=args.seq_len,
        micro_batch_size=args.batch,
        global_batch_size=args.batch,
        train_steps=args.steps,
        warmup_steps=1,
        eval_interval=0,
        log_interval=10**9,
        save=str(save),
        save_interval=0,  # this script saves, so that it can time each save call
        keep_last=2,
        async_save=async_save,
        progress=False,
        device="cpu",
    )


def run(args, save: Path, async_save: bool) -> dict:
    """Per-step and per-save seconds of one training run that saves every args.save_every steps."""
    trainer = Trainer(load_config(None, config(args, save, async_save)), log=lambda line: None)
    steps, saves = [], []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        trainer.train_step()
        t1 = time.perf_counter()
        steps.append(t1 - t0)
        if step % args.save_every == 0:
            trainer.save_checkpoint()
            saves.append(time.perf_counter() - t1)
    trainer.saves.wait()  # the last background save, before the run counts as done
    total = time.perf_counter() - start
    return {"step_s": steps, "save_s": saves, "loop_s_per_step": total / args.steps, "params": trainer.num_parameters}


def same_checkpoint(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    sa, sb = load_trainer_state(a)["optimizer"]["state"], load_trainer_state(b)["optimizer"]["state"]
    return (
        wa.keys() == wb.keys()
        and all(torch.equal(wa[k], wb[k]) for k in wa)
        and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in ("exp_avg", "exp_avg_sq"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-every", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    candidates = {"on the spot": False, "async_save": True}
    results = {name: [] for name in candidates}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for round_ in range(args.rounds):
            for name, async_save in candidates.items():
                save = root / f"{round_}-{int(async_save)}"
                results[name].append(run(args, save, async_save))
                if round_ == 0:
                    last = save / f"step_{args.steps - args.steps % args.save_every:08d}"
                    results[name][-1]["checkpoint"] = last
        a, b = (results[name][0]["checkpoint"] for name in candidates)
        if not same_checkpoint(a, b):
            raise SystemExit("validation failed: the two candidates wrote different checkpoints")
    params = results["on the spot"][0]["params"]
    print(f"{params / 1e6:.1f}M params, T {args.seq_len}, B {args.batch}, save every {args.save_every} steps,")
    print(f"{args.steps} steps x {args.rounds} rounds; validated: both wrote the same checkpoint\n")
    print("| save | step (median) | save call at the boundary (median) | loop time per step |")
    print("|---|---|---|---|")
    summary = {}
    for name, runs in results.items():
        step = statistics.median(s for r in runs for s in r["step_s"])
        save = statistics.median(s for r in runs for s in r["save_s"])
        loop = statistics.median(r["loop_s_per_step"] for r in runs)
        summary[name] = {"step_s": step, "save_call_s": save, "loop_s_per_step": loop}
        print(f"| {name} | {step * 1e3:.0f} ms | {save * 1e3:.0f} ms | {loop * 1e3:.0f} ms |")
    spot, background = summary["on the spot"], summary["async_save"]
    print(
        f"\nsave call: {spot['save_call_s'] / background['save_call_s']:.1f}x shorter with async_save;"
        f" loop time per step: {spot['loop_s_per_step'] / background['loop_s_per_step']:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "params": params, "results": summary}, indent=2))


if __name__ == "__main__":
    main()
