"""Packed SFT with the document mask against one example per row with padding, on the same examples:
useful (example, not padding) tokens per second of training steps.

Both modes train one epoch of the same synthetic SFT examples (random lengths, the prompt half
without loss) through the trainer's batch building (gptcore.training.batches.make_batch): `packed`
puts whole examples into rows of seq_len tokens (SFTDataset pack=True) and keeps them apart with
cu_seqlens and positions restarting per example; `padded` puts one example in a row (pack=False)
under the plain causal mask. A training step is the forward, the backward and gptcore's fused AdamW
over a micro batch of `--batch` rows; the useful tokens of an epoch are the same in both modes, so
the ratio of the rates is the ratio of the epoch times.

Validation, before timing: each example's summed loss over its targets is the same packed and padded
(rel 1e-4), on a fresh model. Timing is interleaved: the modes alternate epoch by epoch, `--rounds`
times after one warmup epoch each, and the medians are reported.

    python bench/bench_packed_sft.py                    # CPU, gptcore's ops
    python bench/bench_packed_sft.py --ops pytorch      # the model's PyTorch path (SDPA with the document mask)
    python bench/bench_packed_sft.py --json packed.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptcore.data import IndexedDataset, IndexedDatasetBuilder, SFTDataset, loss_mask_prefix
from gptcore.model import GPT, IGNORE_INDEX, GPTConfig
from gptcore.optim import AdamW
from gptcore.training.batches import DocumentReset, make_batch, model_inputs

PAD = 0


def write_examples(prefix: Path, args) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.min_len, args.max_len + 1, args.examples)
    with (
        IndexedDatasetBuilder(prefix, np.int32) as tokens,
        IndexedDatasetBuilder(loss_mask_prefix(prefix), np.uint8) as mask,
    ):
        for n in lengths:
            tokens.add_document(rng.integers(1, args.vocab, n))
            mask.add_document((np.arange(n) >= n // 2).astype(np.uint8))  # the second half is the target


def epoch_batches(dataset: SFTDataset, packed: bool, batch: int) -> tuple[list[dict], list[list[int]], int]:
    """(micro batches, each row's example ids, useful tokens) of one epoch."""
    items = [dataset[i] for i in range(len(dataset))]
    examples = [dataset.sample_examples(i).tolist() for i in range(len(dataset))]
    segments = [item["segment_ids"] for item in items]
    useful = sum(int((s > 0).sum()) for s in segments)
    if not packed:  # one example a row: the plain causal mask
        items = [{k: v for k, v in item.items() if k != "segment_ids"} for item in items]
    batches = []
    for i in range(0, len(items), batch):
        batches.append(make_batch(items[i : i + batch], DocumentReset(), torch.device("cpu")))
        batches[-1]["segments"] = torch.stack(segments[i : i + batch])  # for the validation, not the model
    return batches, examples, useful


@torch.no_grad()
def example_losses(model: GPT, batches: list[dict], examples: list[list[int]]) -> dict[int, float]:
    """Each example's summed cross-entropy over its targets (a label belongs to its input token's example)."""
    losses, row = {}, 0
    for b in batches:
        logits = model(b["tokens"], **model_inputs(b))[0].float()
        ce = F.cross_entropy(logits.transpose(1, 2), b["labels"], ignore_index=IGNORE_INDEX, reduction="none")
        for r in range(len(b["tokens"])):
            for s, example in enumerate(examples[row], 1):
                losses[example] = float(ce[r][b["segments"][r] == s].sum())
            row += 1
    return losses


def train_epoch(model: GPT, optimizer: AdamW, batches: list[dict]) -> float:
    t0 = time.perf_counter()
    for b in batches:
        _, loss = model(b["tokens"], b["labels"], **model_inputs(b))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", choices=("gptcore", "pytorch"), default="gptcore")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    use_gptcore_ops = args.ops == "gptcore"
    config = GPTConfig(
        vocab_size=args.vocab, n_positions=args.seq, n_layer=args.n_layer, n_head=args.n_head,
        n_embd=args.n_embd, use_gptcore_ops=use_gptcore_ops,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "sft"
        write_examples(prefix, args)
        tokens, mask = IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix))
        data = (tokens, mask, np.arange(tokens.num_documents), None, args.seq, 1, PAD)
        modes = {}
        for name, pack in (("packed", True), ("padded", False)):
            modes[name] = epoch_batches(SFTDataset(*data, pack=pack, return_segments=True), pack, args.batch)

    torch.manual_seed(0)
    models = {name: GPT(config) for name in modes}
    models["padded"].load_state_dict(models["packed"].state_dict())
    packed_losses, padded_losses = (example_losses(models[n].eval(), *modes[n][:2]) for n in ("packed", "padded"))
    assert packed_losses.keys() == padded_losses.keys() == set(range(args.examples))
    for example, loss in packed_losses.items():
        if abs(loss - padded_losses[example]) > 1e-4 * abs(loss) + 1e-4:
            sys.exit(f"validation failed: example {example} loss {loss} packed, {padded_losses[example]} padded")
    print(f"validated: {args.examples} examples, each one's loss packed == padded (rel 1e-4)")

    optimizers = {name: AdamW(models[name].train().parameters(), lr=1e-4) for name in modes}
    times = {name: [] for name in modes}
    for name in modes:  # warmup
        train_epoch(models[name], optimizers[name], modes[name][0])
    for _ in range(args.rounds):
        for name in modes:
            times[name].append(train_epoch(models[name], optimizers[name], modes[name][0]))

    path = "gptcore ops" if use_gptcore_ops else "PyTorch ops (SDPA with the document mask)"
    print(
        f"model {args.n_layer} layers x {args.n_embd} ({args.n_head} heads), seq {args.seq}, micro batch"
        f" {args.batch}, {args.examples} examples of {args.min_len}..{args.max_len} tokens, {path},"
        f" {torch.get_num_threads()} threads"
    )
    results = {}
    for name, (batches, _, useful) in modes.items():
        rows = sum(len(b["tokens"]) for b in batches)
        epoch = statistics.median(times[name])
        results[name] = {
            "rows": rows,
            "steps": len(batches),
            "fill": useful / (rows * args.seq),
            "epoch_ms_median": 1e3 * epoch,
            "epoch_ms_all": [1e3 * t for t in times[name]],
            "useful_tokens_per_s": useful / epoch,
        }
        r = results[name]
        print(
            f"{name:7s} {rows:4d} rows {r['steps']:4d} steps  fill {r['fill']:.0%}"
            f"  epoch {r['epoch_ms_median']:8.1f} ms  {r['useful_tokens_per_s']:10.0f} useful tokens/s"
        )
    speedup = results["packed"]["useful_tokens_per_s"] / results["padded"]["useful_tokens_per_s"]
    print(f"packed / padded: {speedup:.2f}x useful tokens/s")
    if args.json:
        record = {
            "date": datetime.date.today().isoformat(),
            "machine": platform.processor() or platform.machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "ops": path,
            "results": results,
            "speedup": speedup,
        }
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
