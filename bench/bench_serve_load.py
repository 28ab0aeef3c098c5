"""`gptcore serve` under load: N concurrent streaming clients against the same `Engine` driven
directly, on one fixed request mix, in one run.

One random GPT (GPT-2 small's width and vocabulary, --n-layer layers, GPT-2 init), fp32, no tokenizer
(token-id prompts; greedy, so every answer is determined). The mix: --requests requests with prompt
lengths and max_tokens drawn from a seed. Candidates, for each N in --clients:

- engine (the baseline): `Engine` with min(N, --max-batch) slots runs the whole mix (`Engine.run`:
  a request is admitted when a slot frees, as the server's scheduler does), chunk times taken in
  its on_chunk callback;
- server: an in-process `gptcore.serve.Server` (--max-batch slots) on a free port and N client
  threads, each sending the mix's next request as a streaming completion (`"stream": true`,
  standard-library HTTP, a connection per request) until the mix is done.

Reported per candidate: requests/s and generated tokens/s over the whole mix, time to first token
(request sent -> first token; for the engine: run start -> the request's first chunk, since all are
queued at once, so compare its TTFT only with care) and inter-token latency (between a request's
successive tokens), p50 and p99. The HTTP layer's cost: 1 - server tokens/s / engine tokens/s
(goal: <= 10% at N = 8). Validation first: every request's tokens from the server equal the engine's.
Rounds interleave the candidates; medians of the per-round figures.

    python bench/bench_serve_load.py                       # CPU: 4 layers, 48 requests, N 1, 8, 32
    python bench/bench_serve_load.py --tiny --rounds 1     # smoke test
    python bench/bench_serve_load.py --json load.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import random
import statistics
import threading
import time
from pathlib import Path

import torch

from gptcore.generate import Engine, Request, SamplingParams
from gptcore.model import GPT, GPTConfig
from gptcore.serve import Server


def make_mix(args) -> list[tuple[list[int], int]]:
    rng = random.Random(args.seed)
    return [
        ([rng.randrange(args.vocab) for _ in range(rng.randint(*args.prompt_len))], rng.randint(*args.max_tokens))
        for _ in range(args.requests)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(wall: float, ttft: list[float], gaps: list[float], tokens: int, requests: int) -> dict:
    return {
        "requests_per_s": requests / wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": percentile(ttft, 0.5) * 1e3,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1e3,
        "itl_p50_ms": percentile(gaps, 0.5) * 1e3 if gaps else 0.0,
        "itl_p99_ms": percentile(gaps, 0.99) * 1e3 if gaps else 0.0,
    }


def run_engine(model, mix, slots: int) -> tuple[dict, list[list[int]]]:
    """The mix through Engine.run with `slots` slots: its summary and each request's tokens."""
    engine = Engine(model, None, slots=slots, cuda_graph=False)
    times: list[list[float]] = [[] for _ in mix]
    requests = []
    for i, (prompt, n) in enumerate(mix):
        params = SamplingParams(max_new_tokens=n, temperature=0)
        requests.append(Request(prompt, params, on_chunk=lambda chunk, i=i: times[i].append(time.perf_counter())))
    start = time.perf_counter()
    engine.run(requests)
    wall = time.perf_counter() - start
    ttft = [t[0] - start for t in times]
    gaps = [b - a for t in times for a, b in zip(t, t[1:])]
    tokens = [r.result.tokens for r in requests]
    return summary(wall, ttft, gaps, sum(map(len, tokens)), len(mix)), tokens


def stream_one(port: int, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float], float]:
    """One streaming completion: (tokens, each token event's time, send time)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        sent = time.perf_counter()
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
        tokens, times = [], []
        for line in response:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            ids = json.loads(line[6:])["choices"][0].get("token_ids") or []
            if ids:
                tokens += ids
                times += [time.perf_counter()] * len(ids)
        return tokens, times, sent
    finally:
        conn.close()


def run_server(server: Server, mix, clients: int) -> tuple[dict, list[list[int]]]:
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(len(mix)):
        todo.put(i)
    out: list = [None] * len(mix)

    def client() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            out[i] = stream_one(server.port, *mix[i])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [times[0] - sent for _, times, sent in out]
    gaps = [b - a for _, times, _ in out for a, b in zip(times, times[1:])]
    tokens = [t for t, _, _ in out]
    return summary(wall, ttft, gaps, sum(map(len, tokens)), len(mix)), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch", type=int, default=16, help="the server's cache slots")
    parser.add_argument("--prompt-len", type=int, nargs=2, default=[16, 128], metavar=("MIN", "MAX"))
    parser.add_argument("--max-tokens", type=int, nargs=2, default=[16, 64], metavar=("MIN", "MAX"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer 128-wide model, 12 requests (smoke test)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    width, vocab = (128, 512) if args.tiny else (768, 50257)
    if args.tiny:
        args.n_layer, args.requests = 2, 12
    args.vocab = vocab
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(vocab_size=vocab, n_positions=256, n_layer=args.n_layer, n_head=width // 64, n_embd=width))
    model.eval()
    mix = make_mix(args)
    results: dict[int, dict[str, list[dict]]] = {n: {"engine": [], "server": []} for n in args.clients}
    with Server(model, None, port=0, max_batch=args.max_batch, max_queue=max(64, args.requests)) as server:
        for n in args.clients:  # validation: the same tokens, request by request
            _, want = run_engine(model, mix, min(n, args.max_batch))
            _, got = run_server(server, mix, n)
            if got != want:
                bad = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
                raise SystemExit(f"validation failed at N {n}: request {bad}'s tokens differ from the engine's")
        for _ in range(args.rounds):
            for n in args.clients:
                results[n]["engine"].append(run_engine(model, mix, min(n, args.max_batch))[0])
                results[n]["server"].append(run_server(server, mix, n)[0])
    tokens = sum(n for _, n in mix)
    print(f"{model.num_parameters() / 1e6:.1f}M params, fp32 on CPU; {args.requests} requests ({tokens} tokens),")
    print(f"server max batch {args.max_batch}; validated: the server's tokens equal the engine's;", end=" ")
    print(f"{args.rounds} rounds\n")
    print("| N | candidate | requests/s | tokens/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | HTTP cost |")
    print("|---|---|---|---|---|---|---|")
    table = {}
    for n, by in results.items():
        med = {c: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for c, runs in by.items()}
        cost = 1 - med["server"]["tokens_per_s"] / med["engine"]["tokens_per_s"]
        table[n] = {**med, "http_cost": cost}
        for c, m in med.items():
            print(
                f"| {n} | {c} | {m['requests_per_s']:.2f} | {m['tokens_per_s']:.0f} |"
                f" {m['ttft_p50_ms']:.0f} / {m['ttft_p99_ms']:.0f} | {m['itl_p50_ms']:.1f} / {m['itl_p99_ms']:.1f} |"
                f" {f'{cost:.1%}' if c == 'server' else ''} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": table}, indent=2))


if __name__ == "__main__":
    main()
