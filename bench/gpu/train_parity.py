"""Training on the GPU against training on the CPU: the same data, config and seed, 50 steps.

The data: a fixed part of the running Python's standard library (email, json, http, logging,
urllib: ~950 KB of text that no edit of this repository changes), tokenized with a 512-piece
SentencePiece BPE trained on it, so the check needs no download and no built-in corpus build. The
model: the tiny-cpu config (4 layers, C 192, T 128, 2 micro batches of 8), dropout off so that
no random stream differs between devices.

Runs (gptcore.training.Trainer, one loss per step):
  reference        CPU, float32, gptcore's CPU kernels
  cuda fp32        gptcore's CUDA kernels in float32 (attention in float32 goes through PyTorch's SDPA)
  cuda bf16        gptcore's CUDA kernels, bf16 params and activations, fp32 master weights
  cuda bf16 torch  the same model on PyTorch's ops (use_gptcore_ops=false): the bf16 baseline
Two runs of one model on different hardware part slowly (summation order), and faster at a loss
spike, so the bounds compare deviations with the bf16 baseline's rather than fix a per-step
epsilon (an earlier per-step 2e-3 bound for fp32 failed at a spike on an H200 while the mean
deviation stayed a fifth of bf16's):
  cuda fp32   mean |deviation| <= 0.25 x the PyTorch bf16 run's, final loss within 1%
  cuda bf16   mean |deviation| <= max(2 x the PyTorch bf16 run's, 0.02), final loss within 2%
Every loss finite; the reference's loss must fall by more than 0.5.

    python bench/gpu/train_parity.py                              # CPU reference + 3 CUDA runs
    python bench/gpu/train_parity.py --devices cpu --steps 5      # the CPU run alone (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from gptcore.data import preprocess
from gptcore.data.tokenizer import train_sentencepiece
from gptcore.training import Trainer, load_config

RUNS = {
    "cuda fp32": dict(device="cuda", precision="fp32"),
    "cuda bf16": dict(device="cuda", precision="bf16"),
    "cuda bf16 torch": dict(device="cuda", precision="bf16", use_gptcore_ops=False),
}


STDLIB_PACKAGES = ("email", "json", "http", "logging", "urllib")


def build_data(work: Path) -> tuple[str, str]:
    """(dataset prefix, tokenizer model) from a fixed part of the standard library, a file a document."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = [f for pkg in STDLIB_PACKAGES for f in sorted((root / pkg).rglob("*.py"))]
    corpus = work / "corpus.jsonl"
    with corpus.open("w") as f:
        for path in sources:
            f.write(json.dumps({"text": path.read_text(encoding="utf-8", errors="replace")}) + "\n")
    model = train_sentencepiece([corpus], work / "spm", vocab_size=512)
    stats = preprocess(corpus, work / "data", model, append_eod=True, workers=4, progress=False)
    return stats["outputs"]["text"], str(model)


def train(name: str, overrides: dict, data: str, tokenizer: str, steps: int) -> list[float]:
    settings = dict(
        data_path=data,
        tokenizer=tokenizer,
        train_steps=steps,
        warmup_steps=min(5, steps),
        log_interval=1,
        eval_interval=0,
        save=None,
        sample_tokens=0,
        progress=False,
        split="98,2,0",
        dropout=0.0,
        attn_dropout=0.0,
        seed=1234,
    )
    t0 = time.perf_counter()
    records = Trainer(load_config("tiny-cpu", settings | overrides)).train()
    losses = [r["loss"] for r in records if "loss" in r and "val_loss" not in r]
    print(f"{name}: {len(losses)} steps in {time.perf_counter() - t0:.1f} s, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


def compare(runs: dict[str, list[float]]) -> dict:
    ref = runs["reference"]
    out = {"steps": len(ref), "reference_first": ref[0], "reference_last": ref[-1], "reference": ref, "runs": {}}
    ok = ref[-1] < ref[0] - 0.5 and all(math.isfinite(x) for x in ref)
    mean_dev = {
        name: sum(abs(a - b) for a, b in zip(losses, ref)) / len(ref)
        for name, losses in runs.items()
        if name != "reference"
    }
    baseline = mean_dev.get("cuda bf16 torch", math.nan)
    for name, losses in runs.items():
        if name == "reference":
            continue
        finite = all(math.isfinite(x) for x in losses) and len(losses) == len(ref)
        max_rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
        final_rel = abs(losses[-1] - ref[-1]) / abs(ref[-1])
        if name == "cuda fp32":
            bound = f"mean |deviation| <= {0.25 * baseline:.4f} (0.25 x bf16 PyTorch's) and final within 1%"
            passed = mean_dev[name] <= 0.25 * baseline and final_rel <= 0.01
        elif name == "cuda bf16":
            limit = max(2 * baseline, 0.02)
            bound = f"mean |deviation| <= {limit:.4f} and final within 2%"
            passed = mean_dev[name] <= limit and final_rel <= 0.02
        else:
            bound, passed = "baseline (reported, not judged)", True
        passed = passed and finite
        ok = ok and passed
        out["runs"][name] = dict(
            losses=losses,
            mean_abs_dev=mean_dev[name],
            max_rel_dev=max_rel,
            final_rel_dev=final_rel,
            bound=bound,
            ok=passed,
        )
        print(
            f"{name:>16}: mean |dev| {mean_dev[name]:.2e}, max rel {max_rel:.2e}, final rel {final_rel:.2e}"
            f" ({bound}): {'PASS' if passed else 'FAIL'}"
        )
    out["ok"] = ok
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--devices", default="cpu,cuda", help="cpu: the reference alone; cpu,cuda: all runs")
    parser.add_argument("--json", help="write every loss and the verdicts to this file")
    args = parser.parse_args()
    torch.set_num_threads(min(8, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        data, tokenizer = build_data(Path(tmp))
        runs = {"reference": train("reference (cpu fp32)", dict(device="cpu"), data, tokenizer, args.steps)}
        if "cuda" in args.devices.split(","):
            for name, overrides in RUNS.items():
                try:
                    runs[name] = train(name, overrides, data, tokenizer, args.steps)
                except Exception as e:  # noqa: BLE001 - a failing run is reported as such; the others still run
                    print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
                    runs[name] = [math.nan] * args.steps
    result = compare(runs)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    falls = result["reference_last"] < result["reference_first"] - 0.5
    print(f"reference loss falls by > 0.5: {'yes' if falls else 'NO'}; verdict: {'PASS' if result['ok'] else 'FAIL'}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
