"""Scoring throughput of `gptcore serve`: echo + logprobs requests (what lm-evaluation-harness's
loglikelihood tasks send) against the model's own batched forward, in one run.

One random GPT (GPT-2 small's width and vocabulary, 4 layers by default; GPT-2 init), fp32, no
tokenizer. For each prompt length P, B random prompts of P token ids (seeded). Candidates:

- direct (the baseline): one forward of the B x P batch, float32 log_softmax over the vocabulary,
  gather of each next token's log-probability: [B, P - 1] scores, what scoring needs;
- direct, one prompt at a time: B forwards of 1 x P (what the server's engine does: it runs every
  scored request's forward alone), to tell the cost of not batching from the server's own;
- engine (no HTTP): `Generator.generate` of the B prompts with prompt_logprobs=1 on an engine of
  its own (what the server runs, without HTTP, JSON and the scheduler thread);
- server, concurrency c: an in-process `gptcore.serve.Server` on a free port, the B prompts sent as
  B requests `{"prompt": [ids], "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0}` by
  c client threads (standard-library HTTP, a fresh connection per request, as lm-eval's aiohttp
  client without keep-alive), timed from the first request sent to the last answer read;
- server, one request of B prompts (`"prompt": [[ids], ...]`: lm-eval's batch_size > 1 with
  num_concurrent=1).

Validation, before any timing: for every prompt of every length, the server's token_logprobs
(first one null, then P - 1 scores) equal the direct computation within --atol, and the top-1
alternative of each position is the argmax of the direct log-probabilities (or within --atol of it).

Timing: interleaved rounds (direct, then each server mode, in turn within a round), medians; prompt
tokens/s = B * P / median wall time; ratio = the median over rounds of (direct's time / the
candidate's time in the same round), which a shared machine's drift between rounds disturbs less.
The goal stated for the server: concurrency 8 at >= 0.8x direct.

    python bench/bench_serve_scoring.py                         # CPU: C 768, 4 layers, vocab 50257,
                                                                # B 8, P 128 and 256, c 1 and 8, 5 rounds
    python bench/bench_serve_scoring.py --tiny --rounds 1       # smoke test
    python bench/bench_serve_scoring.py --max-tokens 1          # lm-eval's own requests (one token more)
    python bench/bench_serve_scoring.py --json scoring.json     # every number + machine details
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import queue
import statistics
import sys
import threading
import time

import torch

import gptcore
from bench_generate import cpu_model
from bench_ops import _MALLOC_ENV, pin_threads
from gptcore.generate import Generator
from gptcore.model import GPT, GPTConfig
from gptcore.serve import Server

_ENV_KEYS = (*_MALLOC_ENV, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def direct_scores(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """[B, P - 1] float32 log-probabilities of each prompt's tokens after the first, from one
    forward of the batch ids [B, P]."""
    with torch.inference_mode():
        logits, _ = model(ids)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return logprobs.gather(-1, ids[:, 1:, None])[..., 0]


def post(server: Server, body: dict, timeout: float = 600) -> dict:
    """The parsed answer of one POST /v1/completions on a fresh connection; RuntimeError unless 200."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode())
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"server answered {resp.status}: {data[:500]!r}")
    return json.loads(data)


def scoring_body(prompt, max_tokens: int) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "echo": True, "logprobs": 1, "temperature": 0}


def score_concurrently(server: Server, prompts: list[list[int]], concurrency: int, max_tokens: int) -> list[dict]:
    """Each prompt as its own request, sent by `concurrency` client threads; the answers in order."""
    todo: queue.Queue = queue.Queue()
    for i, p in enumerate(prompts):
        todo.put((i, p))
    answers: list[dict | None] = [None] * len(prompts)
    errors: list[BaseException] = []

    def client():
        while True:
            try:
                i, p = todo.get_nowait()
            except queue.Empty:
                return
            try:
                answers[i] = post(server, scoring_body(p, max_tokens))
            except BaseException as e:  # reported by the caller, which owns the exit
                errors.append(e)
                return

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return answers


def served_scores(answer: dict, index: int = 0) -> dict:
    return answer["choices"][index]["logprobs"]


def validate(server: Server, model: GPT, ids: torch.Tensor, max_tokens: int, atol: float) -> dict:
    """The server's echoed prompt scores of every row of ids [B, P] (one request each) against
    direct_scores; exits on a difference."""
    want = direct_scores(model, ids)
    with torch.inference_mode():
        logits, _ = model(ids)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    worst, top_ties = 0.0, 0
    answers = score_concurrently(server, ids.tolist(), 2, max_tokens)
    for row, answer in enumerate(answers):
        scored = served_scores(answer)
        P = ids.shape[1]
        got = scored["token_logprobs"]
        if len(got) != P + max_tokens or got[0] is not None or scored["top_logprobs"][0] is not None:
            sys.exit(f"validation failed: row {row}: {len(got)} token_logprobs for {P} prompt tokens + {max_tokens}")
        diff = (torch.tensor(got[1:P]) - want[row]).abs()
        worst = max(worst, diff.max().item())
        if diff.max().item() > atol:
            step = int(diff.argmax())
            sys.exit(
                f"validation failed: row {row} position {step + 1}: server {got[step + 1]}, direct {want[row, step]}"
            )
        best = logprobs[row].max(-1).values
        for pos, top in enumerate(scored["top_logprobs"][1:P]):
            (token, value), *_ = top.items()
            argmax = f"token_id:{int(logprobs[row, pos].argmax())}"
            if token != argmax:
                top_ties += 1
                if abs(value - best[pos].item()) > atol:
                    sys.exit(f"validation failed: row {row} position {pos + 1}: top-1 {token} {value}, argmax {argmax}")
    return dict(rows=len(answers), max_abs_diff=worst, top1_near_ties=top_ties, atol=atol)


def round_times(fns: dict, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each fn in every round, taken in turn within a round so that drift in
    the machine's speed falls on all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="n_layer (default 4: GPT-2 small's width, fewer layers)")
    parser.add_argument("--embd", type=int, default=768, help="n_embd")
    parser.add_argument("--heads", type=int, default=12, help="n_head")
    parser.add_argument("--vocab", type=int, default=50257, help="vocabulary size")
    parser.add_argument("--tiny", action="store_true", help="2 layers, C 64, vocab 512: a smoke test")
    parser.add_argument("--batch", type=int, default=8, help="B: prompts per round (the direct forward's batch)")
    parser.add_argument("--prompt-len", type=int, nargs="+", default=[128, 256], help="P, one table row each")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads")
    parser.add_argument("--max-tokens", type=int, default=0, choices=[0, 1], help="0: the prompt alone; 1: as lm-eval")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per candidate")
    parser.add_argument("--warmup", type=int, default=1, help="calls per candidate before timing (after validation)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (model and server)")
    parser.add_argument("--atol", type=float, default=1e-4, help="server vs direct log-probability tolerance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate-only", action="store_true", help="check the outputs, time nothing")
    parser.add_argument("--json", help="write every number and the machine's details to this file")
    args = parser.parse_args()
    pin_threads(args.threads)
    command = " ".join(["python", *sys.argv])

    shape = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=512) if args.tiny else {}
    shape = shape or dict(n_layer=args.layers, n_embd=args.embd, n_head=args.heads, vocab_size=args.vocab)
    cfg = GPTConfig(n_positions=max(args.prompt_len) + args.max_tokens, dropout=0.0, **shape)
    torch.manual_seed(args.seed)
    model = GPT(cfg).eval()
    B = args.batch
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = {P: torch.randint(0, cfg.vocab_size, (B, P), generator=gen) for P in args.prompt_len}
    machine = dict(
        cpu=cpu_model(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        gptcore=getattr(gptcore, "__version__", "?"),
    )
    print(f"{command}\nmachine: {machine}")
    print(f"model: {shape}, {cfg.num_parameters / 1e6:.1f}M params, fp32; B {B}, max_tokens {args.max_tokens}")

    rows, validations = [], {}
    generator = Generator(model, max_batch=B)  # its own engine: the server's runs on the server's thread
    engine_kwargs = dict(max_new_tokens=args.max_tokens, temperature=0, prompt_logprobs=1)
    engine_kwargs["logprobs"] = 1 if args.max_tokens else None
    with Server(model, None, port=0, max_batch=max(args.concurrency + [B]), max_queue=4 * B) as server:
        for P, ids in batches.items():
            validations[P] = validate(server, model, ids, args.max_tokens, args.atol)
            print(f"P {P}: validated {validations[P]}")
        if args.validate_only:
            return
        for P, ids in batches.items():
            prompts = ids.tolist()
            fns = {
                "direct": lambda ids=ids: direct_scores(model, ids),
                "direct 1 prompt each": lambda ids=ids: [direct_scores(model, row[None]) for row in ids],
                "engine (no HTTP)": lambda p=prompts: generator.generate(p, **engine_kwargs),
            }
            for c in args.concurrency:
                fns[f"server c{c}"] = lambda c=c, p=prompts: score_concurrently(server, p, c, args.max_tokens)
            fns[f"server 1 request x {B}"] = lambda p=prompts: post(server, scoring_body(p, args.max_tokens))
            times = round_times(fns, args.warmup, args.rounds)
            medians = {name: statistics.median(ts) for name, ts in times.items()}
            rate = {name: B * P / t for name, t in medians.items()}
            # each round's direct time over the candidate's in that round: robust to the machine's
            # speed drifting between rounds (a shared host), as the candidates run side by side
            ratios = {name: statistics.median(d / t for d, t in zip(times["direct"], ts)) for name, ts in times.items()}
            rows.append(
                dict(prompt_len=P, seconds=times, median_seconds=medians, tokens_per_s=rate, ratio_to_direct=ratios)
            )

    names = list(rows[0]["tokens_per_s"])
    print(f"\nprompt tokens/s, median of {args.rounds} rounds (ratio: median over rounds of direct time / candidate's)")
    print("| P | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for r in rows:
        cells = [
            f"{r['tokens_per_s'][n]:,.0f}" + ("" if n == "direct" else f" ({r['ratio_to_direct'][n]:.2f}x)")
            for n in names
        ]
        print(f"| {r['prompt_len']} | " + " | ".join(cells) + " |")

    if args.json:
        report = dict(
            command=command,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            machine=machine,
            environment={k: os.environ.get(k) for k in _ENV_KEYS},
            model=dict(**cfg.to_dict(), num_parameters=cfg.num_parameters),
            settings=dict(batch=B, max_tokens=args.max_tokens, rounds=args.rounds, warmup=args.warmup, seed=args.seed),
            validation=validations,
            results=rows,
        )
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
