"""What storing the weights in bf16 or int8 costs in quality: WikiText-2 perplexity and greedy tokens
of a small GPT trained here, through gptcore's core (gptcore.core_decoder) in fp32, bf16 and int8.

The model: a SentencePiece BPE (--vocab pieces) trained on WikiText-2's valid.txt, valid.txt
preprocessed into an indexed dataset (one document, the whole file), and the "mini" GPT shape (4
layers, 4 heads of 64, C 256, 256 positions) trained on it for --steps steps on the CPU with gptcore's
Trainer. All of it is cached under --work (tokenizer, dataset, model file), so a rerun with the same
settings evaluates the same model without training again.

Perplexity: test.txt through gptcore.evaluate.evaluate_file (eod in front, window = n_positions,
stride window / 2), capped at --max-tokens tokens (default 32,768, the first ~110 KB of the file:
the whole file, 365k tokens, takes several minutes per format on a 2-core CPU; --max-tokens 0
for all of it), once with the PyTorch forward and once in the core with the weights in each format.
Reported: token perplexity, bits per byte, word perplexity, and each format's change against the
core's fp32.

Greedy agreement: --prompts prompts of --prompt-len tokens, evenly spaced through test.txt, each
continued by --new-tokens greedy tokens (no stop token) by an Engine in each format. A row equal
to fp32's token for token is counted; for a row that parts from fp32, the step where it does and
the fp32 model's logit gap there (top-1 minus top-2 of the core fp32 logits over the prompt and
fp32's tokens), beside the largest |logit difference| Δ between the format and fp32 at that step:
with the same context, the argmax can change only where the gap is below 2 Δ (a near-tie), so a
divergence anywhere else would be a fault. Also: how many steps are near-ties at all, and the
distinct tokens per fp32 row (a briefly trained model's greedy text soon repeats itself).

Argmax on the text: the same rule without the loops of greedy text. The first --max-tokens test
tokens in non-overlapping windows of n_positions through the core in each format: the positions
where the format's argmax is not fp32's, how many of those are near-ties (fp32 gap < 2 Δ there),
and the largest fp32 gap at which the argmax changed.

Validation, before any result is reported: the core's fp32 perplexity equals the PyTorch forward's
within 1e-4 relative, and every fp32 greedy token is the argmax (within 1e-4) of the core's fp32
logits over prompt + tokens (a prefill, not the decode steps that produced them); otherwise the run
exits naming what differs.

    python bench/bench_weights_quality.py                         # train (cached), evaluate, greedy
    python bench/bench_weights_quality.py --max-tokens 0          # the whole test file
    python bench/bench_weights_quality.py --steps 20 --max-tokens 2048 --prompts 4 --work /tmp/wq  # smoke
    python bench/bench_weights_quality.py --json quality.json     # every number + machine details
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import gptcore
from bench_generate import cpu_model
from bench_ops import pin_threads
from gptcore.checkpoint.model_file import load_model, save_model
from gptcore.core_decoder import WEIGHT_FORMATS, CoreDecoder
from gptcore.data import load_tokenizer, preprocess, train_sentencepiece
from gptcore.evaluate import evaluate_file
from gptcore.generate import Engine, Generator
from gptcore.training import Trainer, load_config

REPO = Path(__file__).resolve().parent.parent
PPL_RTOL = 1e-4  # core fp32 against the PyTorch forward: the same float32 math in another order
TIE_ATOL = 1e-4  # an fp32 greedy token within this of the prefill's argmax logit: a float32 near-tie


def train_config(args, work: Path, tokenizer: Path, data: str) -> dict:
    """The "mini" shape (head dim 64), 2 sequences of 256 tokens a step: about 1 s a step on 2 cores,
    so the default 240 steps (123k tokens, 0.4 epoch of valid.txt) take ~4 minutes."""
    return dict(
        model="mini",
        seq_len=256,
        micro_batch_size=2,
        global_batch_size=2,
        train_steps=args.steps,
        lr=2e-3,
        min_lr=3e-4,
        warmup_steps=max(1, args.steps // 10),
        split="100,0,0",
        eval_interval=0,
        log_interval=max(1, args.steps // 10),
        progress=False,
        device="cpu",
        seed=args.seed,
        data_path=data,
        tokenizer=str(tokenizer),
        data_cache=str(work / "indices"),
    )


def trained_model(args, work: Path, valid: Path) -> tuple[Path, Path, dict]:
    """(model file, tokenizer file, training record), built under `work` unless already there."""
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = work / f"spm{args.vocab}.model"
    if not tokenizer.is_file():
        t0 = time.perf_counter()
        train_sentencepiece([valid], work / f"spm{args.vocab}", vocab_size=args.vocab)
        print(f"trained a {args.vocab}-piece BPE on {valid} in {time.perf_counter() - t0:.1f} s", flush=True)
    prefix = work / f"valid{args.vocab}"
    data = f"{prefix}_text_document"
    if not Path(data + ".idx").is_file():
        stats = preprocess([valid], prefix, tokenizer, text_mode="file", append_eod=True, progress=False)
        print(f"preprocessed {valid}: {stats['tokens']:,} tokens", flush=True)
    model_file = work / f"mini-{args.vocab}-{args.steps}steps-seed{args.seed}.safetensors"
    record_file = model_file.with_suffix(".json")
    if model_file.is_file() and record_file.is_file():
        record = json.loads(record_file.read_text())
        print(f"reusing {model_file} (trained {args.steps} steps, final loss {record['final_loss']:.3f})", flush=True)
        return model_file, tokenizer, record
    cfg = train_config(args, work, tokenizer, data)
    trainer = Trainer(load_config(None, cfg), log=lambda line: print(f"  {line}", flush=True))
    t0 = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in history if "loss" in h]
    save_model(trainer.model, model_file)
    record = dict(config=cfg, steps=args.steps, seconds=seconds, final_loss=losses[-1] if losses else None)
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained {args.steps} steps in {seconds:.0f} s, saved {model_file}", flush=True)
    return model_file, tokenizer, record


def perplexities(model, tokenizer, test: Path, max_tokens: int | None, stride: int | None) -> dict:
    """evaluate_file's result for the PyTorch forward ("torch") and the core in each format."""
    out = {}
    for name, weights in [("torch", None), *((w, w) for w in WEIGHT_FORMATS)]:
        r = evaluate_file(model, tokenizer, test, stride=stride, max_tokens=max_tokens, weights=weights)
        out[name] = r
        print(
            f"perplexity ({'PyTorch forward' if weights is None else 'core ' + weights}): {r['token_perplexity']:.4f}"
            f" over {r['scored_tokens']:,} tokens, {r['bits_per_byte']:.4f} bits/byte, {r['seconds']:.1f} s",
            flush=True,
        )
        if weights == "fp32":
            torch_ppl, core_ppl = out["torch"]["token_perplexity"], r["token_perplexity"]
            rel = abs(core_ppl - torch_ppl) / torch_ppl
            if rel > PPL_RTOL:
                sys.exit(
                    f"validation: the core's fp32 perplexity {core_ppl:.6f} differs from the PyTorch forward's"
                    f" {torch_ppl:.6f} by {rel:.3g} relative, more than {PPL_RTOL:g}"
                )
            print(f"validation: core fp32 perplexity = PyTorch's within {rel:.2g} relative (limit {PPL_RTOL:g})")
    return out


def greedy(model, prompts: list[list[int]], new_tokens: int) -> dict[str, list[list[int]]]:
    """Each format's greedy continuation of every prompt (one Engine a format, all prompts batched)."""
    out = {}
    for weights in WEIGHT_FORMATS:
        engine = Engine(model, slots=len(prompts), weights=weights)
        results = Generator(model, engine=engine).generate(
            prompts, max_new_tokens=new_tokens, temperature=0.0, stop_ids=()
        )
        out[weights] = [r.tokens for r in results]
        if any(len(t) != new_tokens for t in out[weights]):
            sys.exit(f"validation: a {weights} row ended before {new_tokens} tokens")
    return out


def position_logits(model, weights: str, prompts: list[list[int]], tokens: list[list[int]]) -> list[torch.Tensor]:
    """Per row, the core's logits [N, vocab] that predict tokens[row][j] from prompt + tokens[:j]."""
    max_len = max(len(p) + len(t) for p, t in zip(prompts, tokens))
    decoder = CoreDecoder(model, slots=1, max_len=max_len, weights=weights)
    out = []
    for p, t in zip(prompts, tokens):
        seq = p + t[:-1]
        out.append(decoder.forward(seq, [0], [0], [len(seq)], every_position=True)[len(p) - 1 :])
    return out


def agreement(model, prompts: list[list[int]], tokens: dict[str, list[list[int]]]) -> dict:
    """Per format, over the steps of fp32's greedy rows: rows equal to fp32's; each other row's first
    divergence with fp32's logit gap there and the format's largest |logit change| there; the near-tie
    steps (gap < 2 x the change at that step + TIE_ATOL: the only steps where the format's argmax can
    differ from fp32's, fp32's context given); and the largest |logit change| of all."""
    ref = tokens["fp32"]
    fp32 = position_logits(model, "fp32", prompts, ref)
    for r, (logits, row) in enumerate(zip(fp32, ref)):
        chosen = logits.gather(-1, torch.tensor(row)[:, None])[:, 0]
        worst = (logits.max(-1).values - chosen).max().item()
        if worst > TIE_ATOL:
            j = int((logits.max(-1).values - chosen).argmax())
            sys.exit(
                f"validation: fp32 greedy row {r} step {j}: token {row[j]} is {worst:.3g} below the argmax"
                f" {int(logits[j].argmax())} of the core's fp32 prefill logits (tolerance {TIE_ATOL})"
            )
    top2 = [logits.topk(2, dim=-1).values for logits in fp32]
    gaps = [t[:, 0] - t[:, 1] for t in top2]  # fp32's top-1 minus top-2 at every step of every row
    out = {}
    for weights in WEIGHT_FORMATS[1:]:
        quantized = position_logits(model, weights, prompts, ref)
        diff = [(q - f).abs().max(-1).values for q, f in zip(quantized, fp32)]  # per step
        near = [g < 2 * d + TIE_ATOL for g, d in zip(gaps, diff)]
        divergences = []
        for r, (a, b) in enumerate(zip(ref, tokens[weights])):
            j = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
            if j is not None:
                divergences.append(
                    dict(
                        row=r,
                        step=j,
                        fp32_token=a[j],
                        token=b[j],
                        fp32_gap=gaps[r][j].item(),
                        max_abs_logit_diff_there=diff[r][j].item(),
                        near_tie=bool(near[r][j]),
                        earlier_near_ties=int(near[r][:j].sum()),
                    )
                )
        all_gaps = torch.cat(gaps)
        out[weights] = dict(
            rows=len(ref),
            rows_equal_to_fp32=len(ref) - len(divergences),
            divergences=divergences,
            divergences_at_near_ties=sum(d["near_tie"] for d in divergences),
            max_abs_logit_diff=max(d.max().item() for d in diff),
            steps=all_gaps.numel(),
            near_tie_steps=int(torch.cat(near).sum()),
            median_fp32_gap=all_gaps.median().item(),
        )
    return out


def argmax_agreement(model, ids: list[int], window: int) -> dict:
    """Per format, over the text in non-overlapping windows (teacher forcing, fp32's context being
    the text's): positions whose argmax differs from fp32's, and how many of those are near-ties
    (fp32 gap < 2 x the format's largest |logit change| there + TIE_ATOL)."""
    decoders = {w: CoreDecoder(model, slots=1, max_len=window, weights=w) for w in WEIGHT_FORMATS}
    counts = {w: dict(positions=0, differ=0, differ_at_near_ties=0, near_ties=0, max_gap_differ=0.0) for w in decoders}
    for begin in range(0, len(ids), window):
        chunk = ids[begin : begin + window]
        logits = {w: d.forward(chunk, [0], [0], [len(chunk)], every_position=True) for w, d in decoders.items()}
        top2 = logits["fp32"].topk(2, dim=-1)
        gap = top2.values[:, 0] - top2.values[:, 1]
        for w in WEIGHT_FORMATS[1:]:
            near = gap < 2 * (logits[w] - logits["fp32"]).abs().max(-1).values + TIE_ATOL
            differ = logits[w].argmax(-1) != top2.indices[:, 0]
            c = counts[w]
            c["positions"] += len(chunk)
            c["differ"] += int(differ.sum())
            c["differ_at_near_ties"] += int((differ & near).sum())
            c["near_ties"] += int(near.sum())
            if differ.any():
                c["max_gap_differ"] = max(c["max_gap_differ"], gap[differ].max().item())
    del counts["fp32"]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "wikitext-2"), help="WikiText-2 folder")
    parser.add_argument("--work", default=str(REPO / "runs" / "weights-quality"), help="tokenizer, data, model cache")
    parser.add_argument("--vocab", type=int, default=8192, help="SentencePiece BPE pieces")
    parser.add_argument("--steps", type=int, default=240, help="training steps (2 x 256 tokens each)")
    parser.add_argument("--seed", type=int, default=1234, help="training seed")
    parser.add_argument("--max-tokens", type=int, default=32768, help="test tokens to evaluate (0: the whole file)")
    parser.add_argument("--stride", type=int, help="perplexity stride (default: window / 2)")
    parser.add_argument("--prompts", type=int, default=16, help="greedy prompts from test.txt")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="write every number and the machine's details to this file")
    args = parser.parse_args()

    data = Path(args.data)
    valid, test = data / "valid.txt", data / "test.txt"
    missing = [str(p) for p in (valid, test) if not p.is_file()]
    if missing:
        sys.exit(f"no WikiText-2 here: {', '.join(missing)} missing (--data names the folder)")
    if args.steps < 1 or args.max_tokens < 0 or args.prompts < 1 or args.prompt_len < 1 or args.new_tokens < 1:
        parser.error("--steps, --prompts, --prompt-len and --new-tokens must be >= 1 and --max-tokens >= 0")
    pin_threads(args.threads)

    machine = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        gptcore=gptcore.__version__,
        gptcore_build=gptcore._build_info(),
        threads=torch.get_num_threads(),
        python=platform.python_version(),
    )
    print(f"gptcore {gptcore.__version__}, torch {torch.__version__}, {machine['threads']} threads ({machine['cpu']})")

    model_file, tokenizer_file, training = trained_model(args, Path(args.work), valid)
    model = load_model(model_file).eval()
    tokenizer = load_tokenizer(tokenizer_file)
    c = model.config
    if args.prompt_len + args.new_tokens > c.n_positions:
        parser.error(f"--prompt-len + --new-tokens exceeds the model's {c.n_positions} positions")
    print(
        f"model: {c.n_layer} layers, {c.n_head} heads of {c.head_dim}, C {c.n_embd}, vocab {c.vocab_size},"
        f" {c.n_positions} positions, {model.num_parameters() / 1e6:.2f}M params",
        flush=True,
    )

    max_tokens = args.max_tokens or None
    ppl = perplexities(model, tokenizer, test, max_tokens, args.stride)

    ids = tokenizer.encode(test.read_text(encoding="utf-8"))
    span = len(ids) - args.prompt_len
    starts = [i * span // args.prompts for i in range(args.prompts)]
    prompts = [ids[s : s + args.prompt_len] for s in starts]
    tokens = greedy(model, prompts, args.new_tokens)
    agree = agreement(model, prompts, tokens)
    argmax = argmax_agreement(model, ids[: max_tokens or len(ids)], c.n_positions)

    base = ppl["fp32"]
    print(
        f"\n`python bench/bench_weights_quality.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" ({machine['date'][:10]}; {machine['cpu']}, {machine['threads']} threads; torch {torch.__version__}):"
        f" {model.num_parameters() / 1e6:.2f}M-param GPT ({c.n_layer} layers, {c.n_head} heads of {c.head_dim},"
        f" C {c.n_embd}), {args.vocab}-piece BPE, trained {training['steps']} steps on WikiText-2 valid"
        f" (final train loss {training['final_loss']:.3f}); test.txt, {base['scored_tokens']:,} tokens"
        f" ({'whole file' if max_tokens is None else f'first {max_tokens:,}'}), window {base['window']},"
        f" stride {base['stride']}; changes against the core's fp32\n"
    )
    print(
        "| forward | weights | token ppl | change | bits/byte | change | word ppl | seconds |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for name, r in ppl.items():
        forward, weights = ("PyTorch", "fp32") if name == "torch" else ("core", name)
        d_ppl = r["token_perplexity"] - base["token_perplexity"]
        d_bpb = r["bits_per_byte"] - base["bits_per_byte"]
        r["change_vs_core_fp32"] = dict(
            token_perplexity=d_ppl,
            token_perplexity_percent=100 * d_ppl / base["token_perplexity"],
            bits_per_byte=d_bpb,
            bits_per_byte_percent=100 * d_bpb / base["bits_per_byte"],
        )
        ch = r["change_vs_core_fp32"]
        print(
            f"| {forward} | {weights} | {r['token_perplexity']:.4f}"
            f" | {d_ppl:+.4f} ({ch['token_perplexity_percent']:+.3f}%)"
            f" | {r['bits_per_byte']:.5f} | {d_bpb:+.5f} ({ch['bits_per_byte_percent']:+.3f}%)"
            f" | {r['word_perplexity']:.3f} | {r['seconds']:.1f} |"
        )
    distinct = sum(len(set(row)) for row in tokens["fp32"]) / len(prompts)
    print(
        f"\nGreedy: {args.prompts} prompts of {args.prompt_len} test tokens, {args.new_tokens} new tokens each"
        f" ({distinct:.1f} distinct tokens per fp32 row). Δ = the format's largest |logit - fp32 logit| at a"
        " step (fp32's context), gap = fp32's top-1 minus top-2 logit there; a near-tie step has gap < 2 Δ,"
        " the only kind where the argmax can change\n"
    )
    print(
        "| weights | rows equal to fp32 | first divergences (row: step, fp32 gap, 2 Δ there) | at near-ties"
        " | near-tie steps | max Δ | median fp32 gap |\n|---|---|---|---|---|---|---|"
    )
    for weights, a in agree.items():
        div = "; ".join(
            f"{d['row']}: {d['step']}, {d['fp32_gap']:.3g}, {2 * d['max_abs_logit_diff_there']:.3g}"
            for d in a["divergences"]
        )
        print(
            f"| {weights} | {a['rows_equal_to_fp32']}/{a['rows']} | {div or 'none'}"
            f" | {a['divergences_at_near_ties']}/{len(a['divergences'])} | {a['near_tie_steps']}/{a['steps']}"
            f" | {a['max_abs_logit_diff']:.3g} | {a['median_fp32_gap']:.3g} |"
        )
    print(
        f"\nArgmax on the text (teacher forcing): the first {len(ids[: max_tokens or len(ids)]):,} test"
        f" tokens in windows of {c.n_positions}; positions where the format's argmax is not fp32's\n"
    )
    print(
        "| weights | positions | argmax differs | of them near-ties | near-tie positions"
        " | largest fp32 gap where it differs |\n|---|---|---|---|---|---|"
    )
    for weights, m in argmax.items():
        print(
            f"| {weights} | {m['positions']:,} | {m['differ']} | {m['differ_at_near_ties']}/{m['differ']}"
            f" | {m['near_ties']} | {m['max_gap_differ']:.3g} |"
        )
    parts = []
    for weights, a in agree.items():
        ch = ppl[weights]["change_vs_core_fp32"]
        gaps = [d["fp32_gap"] for d in a["divergences"]]
        where = (
            f", divergences at fp32 gaps <= {max(gaps):.3g}, {a['divergences_at_near_ties']}/{len(gaps)} at near-ties"
            if gaps
            else ""
        )
        parts.append(
            f"{weights} {ch['token_perplexity_percent']:+.3f}% token perplexity ({ch['bits_per_byte']:+.5f} bits/byte),"
            f" {a['rows_equal_to_fp32']}/{a['rows']} greedy rows equal to fp32{where}"
            f" (max |Δlogit| {a['max_abs_logit_diff']:.3g}); argmax on the text differs at"
            f" {argmax[weights]['differ']}/{argmax[weights]['positions']:,} positions,"
            f" {argmax[weights]['differ_at_near_ties']} of them near-ties"
        )
    print("\nsummary: " + "; ".join(parts))

    if args.json:
        report = dict(
            command="python bench/bench_weights_quality.py " + " ".join(sys.argv[1:]),
            machine=machine,
            model=dict(**c.to_dict(), num_parameters=model.num_parameters(), file=str(model_file)),
            training=training,
            settings=dict(
                data=str(data),
                vocab=args.vocab,
                max_tokens=max_tokens,
                prompts=args.prompts,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
                prompt_starts=starts,
                ppl_rtol=PPL_RTOL,
                tie_atol=TIE_ATOL,
            ),
            perplexity=ppl,
            greedy=dict(agreement=agree, distinct_tokens_per_fp32_row=distinct, tokens=tokens),
            argmax_on_text=argmax,
        )
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
