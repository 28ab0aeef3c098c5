"""Decode throughput: gptcore's `Generator` against Hugging Face `generate` on the same weights, in one run.

The models: one random GPT-2 (GPT-2 124M shape by default): a transformers GPT2LMHeadModel built
from a seed, and `gptcore.convert.from_hf` of it. The weights are HF's GPT-2 init (N(0, 0.02)) with
every layer norm weight then drawn from N(0, 1) and every bias from N(0, 0.02); with HF's unit
layer norm weights a random GPT-2 repeats one token forever, which would validate little. Prompts
are random token ids (seeded), all P long (so HF needs no padding); each prompt gets exactly N
greedy tokens (no stop token on either side).

The candidates: on CUDA gptcore's Generator (CUDA graphs). On the CPU gptcore's core
(gc_gpt_decode) with the weights in each --weights format (fp32, bf16, int8), and gptcore's
PyTorch forward (Engine(core=False), the path before the core; --no-pytorch-path drops it);
with --small-pages also the core's fp32 with its memory in 4 KiB pages instead of 2 MiB ones; with
--rows also the core's bf16 and int8 with their matrices in rows (F.linear's layout) instead of packed.

Validation, before any timing, for every candidate and batch size: its greedy tokens against a
reference forward over the prompt + its tokens: each token must be the reference's argmax or
within --tie-atol of it (a near-tie that rounding decides); otherwise the run exits naming the row
and step. The reference of fp32 (and of CUDA's dtype) is HF's fp32 forward, and its rows are
compared with HF's `generate`; the reference of bf16 / int8 is the float64 PyTorch model with the
weights the format stores, and their rows are compared with gptcore fp32's.

Timing: whole `generate` calls, wall clock (CUDA synchronized), N new tokens and 1 new token
(= prefill + first token), in interleaved rounds (every candidate and HF with N, then with 1, ...);
medians. tok/s = B * N / t_N (prefill included); decode tok/s = B * (N - 1) / (t_N - t_1).

The batch-1 row also gets the memory-bandwidth bound: the bytes of the weights one decode step
reads (on the CPU what the core streams: its stored matrices, scales, biases and layer norms; else
all but the position table and the embedding's padding rows) over the memory rate probed in the
same rounds as the candidates (bandwidth_probes): on a GPU the copy rate (y.copy_(x) of --copy-mib
MiB, bytes read + written), on a CPU the read rate (the fastest of x.sum() and dot(x, x) over
--copy-mib MiB of float32, in plain memory and in 2 MiB pages: a decode step streams its weights
in, it writes little). Each round's bound is its fastest probe; the fraction reported is the median
over rounds of that round's bound over that round's decode step (the machine's rate drifts). On the
CPU a prefill of one --prefill-len prompt in the core is also set against the machine's fp32 GEMM
rate.

    python bench/bench_generate.py                          # CPU, GPT-2 124M shape, batch 1 4 16 64,
                                                            # P 32, N 64, fp32/bf16/int8, 3 rounds
    python bench/bench_generate.py --tiny --batch 1 2 --new-tokens 8 --rounds 1   # smoke test
    python bench/bench_generate.py --validate-only          # the checks alone
    python bench/bench_generate.py --json generate.json     # every number + machine details to a file
    python bench/bench_generate.py --device cuda            # bf16, gptcore with CUDA graphs; HF eager
                                                            # (no torch.compile)
    python bench/bench_generate.py --device cuda --bandwidth  # gpt2-xl shape (1.5B), batch 1,
                                                            # gptcore only: ms/token against the bound
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from unittest import mock

import torch

import gptcore
from bench_ops import _MALLOC_ENV, pin_threads
from gptcore import convert
from gptcore.core_decoder import WEIGHT_FORMATS, CoreDecoder, dequantize, huge_page_buffer, quantize
from gptcore.generate import Engine, Generator
from gptcore.model import GPT, PRESETS, GPTConfig

_ENV_KEYS = (
    *_MALLOC_ENV,
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "GPTCORE_CPU_KERNELS",
    "GPTCORE_HUGE_PAGES",
)
DEFAULT_TIE_ATOL = {torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.05}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_times(fns: list[Callable[[], object]], device: torch.device, warmup: int, rounds: int) -> list[list[float]]:
    """Wall-clock seconds of each fn in every round, the fns taken in turn within a round so that
    drift in the machine's speed (shared hosts, clocks) falls on all of them alike. A whole
    generate is host work and device work, so wall clock with the device synchronized around it."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
    return times


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_models(cfg: GPTConfig, device: torch.device, dtype: torch.dtype, seed: int):
    """(HF fp32 reference on device, HF model to time in dtype, gptcore model in dtype): one set of weights."""
    import transformers

    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()  # HF's init, on the CPU
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name and name.endswith(".weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    hf.generation_config.bos_token_id = hf.generation_config.eos_token_id = None
    hf_ref = hf.to(device)
    with torch.device(device):
        ours = convert.from_hf(hf_ref, use_gptcore_ops=True)
    ours = ours.to(device=device, dtype=dtype).eval()
    hf_timed = hf_ref if dtype == torch.float32 else copy.deepcopy(hf_ref).to(dtype)
    return hf_ref, hf_timed, ours


def hf_config(new_tokens: int):
    """Greedy, exactly new_tokens (no end-of-sequence id), KV cache on."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None, use_cache=True
    )


def hf_generate(hf, ids: torch.Tensor, config) -> torch.Tensor:
    """New tokens [B, config.max_new_tokens] of HF generate on unpadded prompts ids [B, P]."""
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[:, ids.shape[1] :]


def validate(
    ours_gen,
    reference,
    theirs: torch.Tensor,
    theirs_name: str,
    prompts: list[list[int]],
    device,
    N: int,
    tie_atol: float,
) -> tuple[dict, torch.Tensor]:
    """gptcore's greedy rows against `theirs` [B, N] (HF generate's, or gptcore fp32's) and against the
    argmax of reference(seq) -> logits [B, T, V] at every position; exits on a difference that is not a
    near-tie. Returns the report and gptcore's tokens."""
    B, P = len(prompts), len(prompts[0])
    results = ours_gen.generate(prompts, max_new_tokens=N, temperature=0.0, stop_ids=())
    for r, res in enumerate(results):
        if len(res.tokens) != N or res.finish_reason != "length":
            sys.exit(f"validation (batch {B}): gptcore row {r} ended after {len(res.tokens)} tokens, not {N}")
    ours = torch.tensor([res.tokens for res in results], device=device)
    ids = torch.tensor(prompts, device=device)
    if theirs.shape != (B, N):
        sys.exit(f"validation (batch {B}): {theirs_name} gave {tuple(theirs.shape)} new tokens, expected {(B, N)}")

    # The reference over prompt + gptcore's tokens: position P - 1 + j predicts gptcore's token j.
    seq = torch.cat([ids, ours], dim=1)
    with torch.no_grad():
        ref = reference(seq[:, :-1])[:, P - 1 :].float()
    gaps = ref.max(-1).values - ref.gather(-1, ours[..., None])[..., 0]  # 0 where gptcore took the argmax
    worst = gaps.max().item()
    if worst > tie_atol:
        r, j = divmod(int(gaps.argmax()), N)
        sys.exit(
            f"validation (batch {B}): row {r} step {j}: gptcore took token {int(ours[r, j])}, whose reference logit"
            f" is {worst:.3g} below the reference's argmax {int(ref[r, j].argmax())} (tie tolerance {tie_atol};"
            " --tie-atol sets it)"
        )
    ties = []  # rows that part from `theirs`: where, and how far gptcore's token is from the reference argmax there
    for r in range(B):
        differ = (ours[r] != theirs[r]).nonzero()
        if len(differ):
            j = int(differ[0])
            ties.append(dict(row=r, step=j, gap=gaps[r, j].item()))
    distinct = sum(len(set(row)) for row in ours.tolist()) / B
    report = dict(
        batch=B,
        compared_with=theirs_name,
        rows_equal=B - len(ties),
        near_tie_divergences=ties,
        max_gap_to_reference_argmax=worst,
        mean_distinct_tokens_per_row=distinct,
    )
    return report, ours


def quantized_reference(model, weights: str):
    """seq [B, T] -> float64 logits of the model whose matrices are what the `weights` format stores
    (PyTorch's own ops): the reference a core run in that format must match."""
    c = model.config
    ref = GPT(GPTConfig(**(c.to_dict() | {"use_gptcore_ops": False}))).double().eval()
    ref.load_state_dict(model.state_dict())

    def stored(w: torch.Tensor) -> torch.Tensor:
        return dequantize(*quantize(w.float(), weights))

    with torch.no_grad():
        for block in ref.transformer.h.values():
            for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                linear.weight.copy_(stored(linear.weight))
        head = stored(ref.transformer.wte.weight[: c.vocab_size])

    def reference(seq: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = ref.transformer
            x = t.wte(seq.cpu()) + t.wpe(torch.arange(seq.shape[1]))
            return ref.final_norm(ref.blocks(x)) @ head.T

    return reference


def bandwidth_probes(device: torch.device, mib: int, copies: int = 10) -> list[tuple[str, Callable[[], object], int]]:
    """(name, fn, bytes it moves) of the memory-rate probes timed in the batch-1 rounds. On a GPU
    `copies` back-to-back y.copy_(x) of mib MiB (bytes read + written; one synchronize is small
    beside them). On a CPU x.sum() and dot(x, x) of mib MiB of float32 (bytes read), in plain
    memory and in 2 MiB pages (core_decoder.huge_page_buffer, where the core keeps its weights):
    a decode step streams its weights in and writes little, and the bound must not be a slower
    kind of memory than the one the core reads."""
    if device.type == "cuda":
        x = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).fill_(1)
        y = torch.empty_like(x)

        def run():
            for _ in range(copies):
                y.copy_(x)

        return [("copy", run, 2 * x.numel() * copies)]
    plain = torch.ones(mib * 2**18, dtype=torch.float32)
    huge = huge_page_buffer(mib * 2**20).view(torch.float32).fill_(1)
    return [
        (f"{fn} {kind}", (lambda x=x, fn=fn: x.sum() if fn == "sum" else torch.dot(x, x)), mib * 2**20)
        for kind, x in (("plain", plain), ("huge pages", huge))
        for fn in ("sum", "dot")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: fp32 CPU, bf16 CUDA")
    parser.add_argument("--model", choices=list(PRESETS), help="shape (default: gpt2; gpt2-xl with --bandwidth)")
    parser.add_argument("--tiny", action="store_true", help='the "tiny" preset, for smoke tests')
    parser.add_argument("--layers", type=int, help="override the preset's n_layer")
    parser.add_argument("--heads", type=int, help="override the preset's n_head")
    parser.add_argument("--embd", type=int, help="override the preset's n_embd")
    parser.add_argument(
        "--batch", type=int, nargs="+", help="batch sizes (default: CPU 1 4 16 64, CUDA 1 16; 1 with --bandwidth)"
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        choices=WEIGHT_FORMATS,
        help="CPU: the weight formats of gptcore's core to time (default: all three)",
    )
    parser.add_argument(
        "--pytorch-path",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU: also time gptcore's PyTorch forward (Engine(core=False), fp32), the path before the core",
    )
    parser.add_argument(
        "--small-pages",
        action="store_true",
        help="CPU: also time the core's fp32 with its weights and cache in 4 KiB pages (GPTCORE_HUGE_PAGES=0)",
    )
    parser.add_argument(
        "--rows",
        action="store_true",
        help="CPU: also time the core's bf16 and int8 with their matrices in rows instead of packed",
    )
    parser.add_argument(
        "--prefill-len",
        type=int,
        default=512,
        help="CPU: one prompt this long (at most the model's positions) prefilled in the core, against GEMM",
    )
    parser.add_argument("--prompt-len", type=int, default=32, help="P")
    parser.add_argument("--new-tokens", type=int, default=64, help="N")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per candidate")
    parser.add_argument("--warmup", type=int, default=1, help="calls per candidate before timing (after validation)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="HF attn_implementation")
    parser.add_argument("--hf", action=argparse.BooleanOptionalAction, help="time HF (default: on, off in --bandwidth)")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, help="gptcore decode in CUDA graphs")
    parser.add_argument(
        "--bandwidth", action="store_true", help="gpt2-xl shape, batch 1, gptcore only, against the bandwidth bound"
    )
    parser.add_argument("--copy-mib", type=int, default=1024, help="size of the bandwidth-measuring copy")
    parser.add_argument("--tie-atol", type=float, help="fp32 HF logit gap accepted as a near-tie (default by dtype)")
    parser.add_argument("--validate-only", action="store_true", help="check the outputs, time nothing")
    parser.add_argument("--json", help="write every number and the machine's details to this file")
    args = parser.parse_args()

    pin_threads(args.threads)  # the same threads for both
    import transformers

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    if dtype != torch.float32 and not on_cuda:
        parser.error("gptcore's CPU kernels take float32 only; --dtype bfloat16/float16 is for CUDA")
    if on_cuda and dtype == torch.float32:
        parser.error("gptcore's CUDA attention takes float16 or bfloat16; pick --dtype bfloat16 or float16")
    if args.tiny and args.model:
        parser.error("--tiny and --model name two shapes; give one")
    preset = "tiny" if args.tiny else args.model or ("gpt2-xl" if args.bandwidth else "gpt2")
    overrides = {k: v for k, v in (("n_layer", args.layers), ("n_head", args.heads), ("n_embd", args.embd)) if v}
    cfg = GPTConfig.preset(preset, **overrides)
    batches = args.batch or ([1] if args.bandwidth else [1, 16] if on_cuda else [1, 4, 16, 64])
    if on_cuda and args.weights:
        parser.error("--weights picks formats of the CPU core; on CUDA gptcore runs the model's --dtype")
    P, N = args.prompt_len, args.new_tokens
    if P < 1 or N < 2:
        parser.error("--prompt-len must be >= 1 and --new-tokens >= 2 (decode time is t_N - t_1)")
    if cfg.n_positions < P + N:
        parser.error(f"--prompt-len + --new-tokens = {P + N} exceeds the model's {cfg.n_positions} positions")
    time_hf = not args.bandwidth if args.hf is None else args.hf
    cuda_graph = on_cuda if args.cuda_graph is None else args.cuda_graph
    tie_atol = DEFAULT_TIE_ATOL[dtype] if args.tie_atol is None else args.tie_atol

    gpu = torch.cuda.get_device_name(device) if on_cuda else None
    machine = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        gpu=gpu,
        torch=torch.__version__,
        transformers=transformers.__version__,
        gptcore=gptcore.__version__,
        gptcore_build=gptcore._build_info(),
        threads=torch.get_num_threads(),
        python=platform.python_version(),
    )
    tuning = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND") if k in os.environ]
    print(
        f"gptcore {gptcore.__version__}, torch {torch.__version__}, transformers {transformers.__version__},"
        f" {device}, {machine['threads']} threads ({machine['cpu']})"
    )
    if tuning:
        print("environment: " + ", ".join(tuning))
    if gpu:
        print(f"GPU: {gpu}")
    shape = f"{cfg.n_layer} layers, {cfg.n_head} heads, C {cfg.n_embd}, vocab {cfg.vocab_size}"
    params = f"{cfg.num_parameters / 1e6:.1f}M params"
    print(f"model: {preset!r} shape ({shape}), {params}, random weights, {str(dtype)[6:]}")
    print(
        f"generate: batch {', '.join(map(str, batches))}; P {P} random prompt tokens, N {N} greedy new tokens;"
        f" gptcore Generator{' (CUDA graphs)' if cuda_graph else ''}"
        + (f" vs HF generate (attn_implementation={args.hf_attn}, no torch.compile)" if time_hf else ", alone"),
        flush=True,
    )

    t0 = time.perf_counter()
    hf_ref, hf_timed, model = build_models(cfg, device, dtype, args.seed)
    for hf in {id(hf_ref): hf_ref, id(hf_timed): hf_timed}.values():
        hf.set_attn_implementation(args.hf_attn)
    slots = max(batches)
    # The candidates: on CUDA the Generator (CUDA graphs); on the CPU the core in each weight format,
    # and gptcore's PyTorch forward (the path before the core) as a second baseline.
    if on_cuda:
        candidates = {"gptcore": Generator(model, max_batch=slots, cuda_graph=cuda_graph)}
    else:
        formats = args.weights or list(WEIGHT_FORMATS)
        # Caches of P + N positions: four engines of 64 slots x 1024 positions would need ~19 GB.
        candidates = {
            f"gptcore {w}": Generator(model, engine=Engine(model, slots=slots, max_len=P + N, weights=w))
            for w in formats
        }
        if args.small_pages:  # the same core with its weights and cache in 4 KiB pages
            with mock.patch.dict(os.environ, GPTCORE_HUGE_PAGES="0"):  # restored after, whatever it was
                engine = Engine(model, slots=slots, max_len=P + N, weights="fp32")
            candidates["gptcore fp32 4k pages"] = Generator(model, engine=engine)
        for w in [w for w in formats if w != "fp32" and args.rows]:  # the same formats unpacked
            engine = Engine(model, slots=slots, max_len=P + N, weights=w)
            engine.core = CoreDecoder(model, slots, P + N, w, packed=False)
            candidates[f"gptcore {w} rows"] = Generator(model, engine=engine)
        if args.pytorch_path:
            engine = Engine(model, slots=slots, max_len=P + N, core=False)
            candidates["gptcore pytorch"] = Generator(model, engine=engine)
    print(f"built in {time.perf_counter() - t0:.1f} s", flush=True)

    gen = torch.Generator().manual_seed(args.seed + 2)
    all_prompts = torch.randint(0, cfg.vocab_size, (slots, P), generator=gen).tolist()

    def hf_reference(seq):
        return hf_ref(seq).logits

    validations, references = [], {}
    for B in batches:  # every candidate at every batch size checked before any timing
        prompts = all_prompts[:B]
        hf_tokens = hf_generate(hf_timed, torch.tensor(prompts, device=device), hf_config(N))
        fp32_tokens = None
        for name, candidate in candidates.items():
            weights = name.split()[1]  # "gptcore int8 rows" -> int8
            if weights in ("bf16", "int8"):  # against the float64 model of what the format stores
                if weights not in references:
                    references[weights] = quantized_reference(model, weights)
                reference, theirs, theirs_name = references[weights], fp32_tokens, "gptcore fp32"
                if theirs is None:
                    theirs, theirs_name = hf_tokens, "HF generate"
            else:
                reference, theirs, theirs_name = hf_reference, hf_tokens, "HF generate"
            v, tokens = validate(candidate, reference, theirs, theirs_name, prompts, device, N, tie_atol)
            if name == "gptcore fp32":
                fp32_tokens = tokens
            v["candidate"] = name
            validations.append(v)
            parts = v["near_tie_divergences"]
            if theirs_name == "gptcore fp32":  # another model (the format's weights): not near-ties of one model
                steps = ", ".join(f"row {t['row']} at step {t['step']}" for t in parts)
                ties = (
                    f"the others part from it ({steps}) where the format's weights move the argmax; " if parts else ""
                )
            else:
                ties = "".join(
                    f"row {t['row']} parts at step {t['step']} on a near-tie (reference logit gap {t['gap']:.2g}); "
                    for t in parts
                )
            print(
                f"validation ({name}, batch {B}): {v['rows_equal']}/{B} rows equal to {theirs_name} token for token;"
                f" {ties}every token within {v['max_gap_to_reference_argmax']:.2g} of the reference argmax logit"
                f" (tie tolerance {tie_atol}); {v['mean_distinct_tokens_per_row']:.1f} distinct tokens per row",
                flush=True,
            )

    if args.validate_only:
        return
    bandwidth_kind = "copy" if on_cuda else "read"
    probes = bandwidth_probes(device, args.copy_mib) if 1 in batches else []  # the bound is batch 1's
    # One decode step reads every weight except the position table (one row) and the embedding's padding rows.
    unread = cfg.n_positions + cfg.padded_vocab_size - cfg.vocab_size
    weight_elems = cfg.num_parameters - unread * cfg.n_embd
    step_bytes = {name: weight_elems * dtype.itemsize for name in candidates}
    for name, candidate in candidates.items():
        if candidate.engine.core is not None:  # its matrices (converted), scales, biases and norms
            step_bytes[name] = candidate.engine.core.read_bytes

    rows = []
    for B in batches:
        prompts = all_prompts[:B]
        ids = torch.tensor(prompts, device=device)

        def ours_fn(candidate, n, prompts=prompts):
            return lambda: candidate.generate(prompts, max_new_tokens=n, temperature=0.0, stop_ids=())

        def hf_fn(n, ids=ids):
            config = hf_config(n)
            return lambda: hf_generate(hf_timed, ids, config)

        names = list(candidates) + (["HF"] if time_hf else [])
        fns = {}
        for n in (N, 1):
            for name in names:
                fns[f"{name} {n}"] = hf_fn(n) if name == "HF" else ours_fn(candidates[name], n)
        if B == 1:  # the memory rate in the same rounds: the machine's drifts (shared hosts)
            fns.update({f"probe {probe}": fn for probe, fn, _ in probes})
        times = dict(zip(fns, round_times(list(fns.values()), device, args.warmup, args.rounds)))
        row = dict(batch=B, round_seconds=times)
        for name in names:
            t_n, t_1 = statistics.median(times[f"{name} {N}"]), statistics.median(times[f"{name} 1"])
            row[name] = dict(
                seconds=t_n,
                prefill_seconds=t_1,
                tokens_per_s=B * N / t_n,
                decode_tokens_per_s=B * (N - 1) / (t_n - t_1) if t_n > t_1 else None,
                decode_ms_per_step=(t_n - t_1) / (N - 1) * 1e3,
            )
        for name in candidates if time_hf else ():
            row[name]["speedup_vs_hf"] = row[name]["tokens_per_s"] / row["HF"]["tokens_per_s"]
        if B == 1:
            # Each round's bound (its fastest probe) against that round's decode step; medians.
            rates = [max(size / times[f"probe {probe}"][r] for probe, _, size in probes) for r in range(args.rounds)]
            row["bandwidth_bytes_per_s"] = rates
            for name in candidates:
                bounds = [step_bytes[name] / rate * 1e3 for rate in rates]
                steps = [(times[f"{name} {N}"][r] - times[f"{name} 1"][r]) / (N - 1) * 1e3 for r in range(args.rounds)]
                row[name]["bandwidth"] = dict(
                    weight_bytes=step_bytes[name],
                    bytes_per_s=statistics.median(rates),
                    bound_ms_per_token=statistics.median(bounds),
                    bound_tokens_per_s=1e3 / statistics.median(bounds),
                    percent_of_bound=statistics.median(100 * b / t for b, t in zip(bounds, steps)),
                )
        rows.append(row)
        print(f"timed batch {B}", flush=True)

    prefill = None
    if not on_cuda and args.prefill_len:
        prefill = time_prefill(model, candidates, min(args.prefill_len, cfg.n_positions), args.rounds, cfg)

    def rate(x):
        return f"{x:,.1f}" if x is not None else "n/a"

    command = "python bench/bench_generate.py " + " ".join(sys.argv[1:])
    print(
        f"\n`{command.strip()}` ({machine['date'][:10]}; {gpu or machine['cpu']}, {machine['threads']} threads;"
        f" torch {torch.__version__}, transformers {transformers.__version__}): {preset} shape"
        f" ({cfg.num_parameters / 1e6:.1f}M params, random weights), {str(dtype)[6:]}, P {P}, N {N} greedy;"
        f" {args.rounds} interleaved rounds, medians. tok/s = B*N / whole generate (prefill included);"
        f" decode = B*(N-1) / (t_N - t_1)\n"
    )
    names = list(candidates) + (["HF"] if time_hf else [])
    print("| batch | " + " | ".join(f"{n} tok/s (decode)" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for r in rows:
        cells = []
        for n in names:
            g = r[n]
            vs = f", {g['speedup_vs_hf']:.2f}x HF" if "speedup_vs_hf" in g else ""
            cells.append(f"{rate(g['tokens_per_s'])} ({rate(g['decode_tokens_per_s'])}{vs})")
        print(f"| {r['batch']} | " + " | ".join(cells) + " |")
    for r in rows:
        for n in names:
            if "bandwidth" in r[n]:
                b = r[n]["bandwidth"]
                print(
                    f"batch 1, {n}: {b['weight_bytes'] / 1e9:.3f} GB read per step / {b['bytes_per_s'] / 1e9:.1f}"
                    f" GB/s {bandwidth_kind} bandwidth = bound {b['bound_ms_per_token']:.2f} ms/token"
                    f" ({b['bound_tokens_per_s']:.1f} tok/s); measured {r[n]['decode_ms_per_step']:.2f} ms/token;"
                    f" {b['percent_of_bound']:.0f}% of the bound (median over rounds of each round's bound / step)"
                )
    if prefill:
        print(
            f"\nprefill of one {prefill['tokens']}-token prompt ({prefill['flops'] / 1e9:.1f} GFLOP) against the"
            f" machine's fp32 GEMM rate {prefill['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s ({prefill['gemm']}):"
        )
        for name, p in prefill["candidates"].items():
            print(
                f"  {name}: {p['seconds'] * 1e3:.0f} ms = {p['flops_per_s'] / 1e9:.1f} GFLOP/s,"
                f" {p['percent_of_gemm']:.0f}% of the GEMM rate"
            )

    if args.json:
        report = dict(
            command=command.strip(),
            machine=machine,
            environment={k: os.environ.get(k) for k in _ENV_KEYS},
            model=dict(preset=preset, **cfg.to_dict(), num_parameters=cfg.num_parameters),
            settings=dict(
                device=str(device),
                dtype=str(dtype)[6:],
                prompt_len=P,
                new_tokens=N,
                batches=batches,
                candidates=list(candidates),
                rounds=args.rounds,
                warmup=args.warmup,
                seed=args.seed,
                hf_attn_implementation=args.hf_attn,
                hf_timed=time_hf,
                cuda_graph=cuda_graph,
                tie_atol=tie_atol,
            ),
            validation=validations,
            bandwidth_kind=bandwidth_kind,
            bandwidth_probes=[probe for probe, _, _ in probes],
            weight_bytes_per_step=step_bytes,
            results=rows,
            prefill=prefill,
        )
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\nwrote {args.json}")


def time_prefill(model, candidates: dict, length: int, rounds: int, cfg: GPTConfig) -> dict:
    """One prompt of `length` tokens prefilled in the core by each candidate that has one, interleaved
    with the machine's fp32 GEMM rate on a prefill-shaped product (torch.mm [length, C] x [C, 4C]):
    medians. FLOPs: 2 per multiply-add of every matrix over every token, the causal attention's two
    products (half the square), and the logits of the last token."""
    C, L = cfg.n_embd, cfg.n_layer
    matrix = 12 * C * C  # qkv 3C^2 + proj C^2 + fc 4C^2 + proj 4C^2, per layer
    flops = 2 * length * matrix * L + 2 * 2 * (length * (length + 1) // 2) * C * L + 2 * C * cfg.vocab_size
    x, w = torch.randn(length, C), torch.randn(C, 4 * C)
    prompt = torch.randint(0, cfg.vocab_size, (length,), generator=torch.Generator().manual_seed(5)).tolist()
    cores = {  # caches of one slot of `length` positions (the engines' are only P + N long)
        name: CoreDecoder(model, slots=1, max_len=length, weights=c.engine.core.weights)
        for name, c in candidates.items()
        if c.engine.core is not None
    }
    fns = [lambda: torch.mm(x, w)] + [
        (lambda core=core: core.forward(prompt, [0], [0], [length])) for core in cores.values()
    ]
    times = round_times(fns, torch.device("cpu"), 1, max(rounds, 3))
    gemm = 2 * length * C * 4 * C / statistics.median(times[0])
    result = dict(tokens=length, flops=flops, gemm_flops_per_s=gemm, gemm=f"torch.mm [{length}, {C}] x [{C}, {4 * C}]")
    result["candidates"] = {}
    for name, t in zip(cores, times[1:]):
        seconds = statistics.median(t)
        result["candidates"][name] = dict(
            seconds=seconds, flops_per_s=flops / seconds, percent_of_gemm=100 * flops / seconds / gemm
        )
    return result


if __name__ == "__main__":
    main()
