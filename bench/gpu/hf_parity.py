"""GPT-2 logits: gptcore's model against Hugging Face transformers' GPT2LMHeadModel, same weights.

One random GPT-2 (124M shape by default; bench_generate's weights, whose layer norms are drawn so
that the logits are not degenerate) is run three ways on the device: HF in float64 (the
reference), HF in the checked dtype, and gptcore (`convert.from_hf`, gptcore's ops) in that dtype.
The error of a candidate is ||logits - ref||_2 / ||ref||_2 over a batch of random tokens. gptcore
passes when its error is at most twice HF's own error in the same dtype plus a floor (float32
1e-5, bfloat16 2e-3), every logit is finite, and its next-token argmax agrees with the reference
where the reference's top-2 gap is clear of rounding.

    python bench/gpu/hf_parity.py                        # CUDA, fp32 and bf16, B 4 x T 512
    python bench/gpu/hf_parity.py --device cpu --preset tiny --dtypes float32   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared weights recipe
from bench_generate import build_models  # noqa: E402
from gptcore.model import GPTConfig  # noqa: E402

FLOOR = {torch.float32: 1e-5, torch.bfloat16: 2e-3, torch.float16: 1e-3}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def check_dtype(hf64, hf32, ours32, idx: torch.Tensor, dtype: torch.dtype, ref: torch.Tensor) -> dict:
    V = ref.shape[-1]
    hf = hf32 if dtype == torch.float32 else copy.deepcopy(hf32).to(dtype)
    ours = ours32 if dtype == torch.float32 else copy.deepcopy(ours32).to(dtype)
    with torch.no_grad():
        hf_logits = hf(idx).logits[..., :V]
        our_logits, _ = ours(idx)
        our_logits = our_logits[..., :V]
    err_hf, err_ours = rel_err(hf_logits, ref), rel_err(our_logits, ref)
    bound = 2 * err_hf + FLOOR[dtype]
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 50 * err_hf * ref.abs().amax()  # gaps rounding cannot flip
    agree = (our_logits.argmax(-1) == ref.argmax(-1))[clear].float().mean().item() if clear.any() else 1.0
    finite = bool(torch.isfinite(our_logits).all())
    ok = finite and err_ours <= bound and agree == 1.0
    result = dict(
        dtype=str(dtype)[6:],
        err_gptcore=err_ours,
        err_hf=err_hf,
        bound=bound,
        ratio=err_ours / err_hf if err_hf else None,
        argmax_agreement=agree,
        clear_positions=int(clear.sum()),
        finite=finite,
        ok=ok,
    )
    print(
        f"{result['dtype']:>8}: gptcore rel err {err_ours:.2e}, HF {err_hf:.2e} (bound {bound:.2e});"
        f" argmax agreement {agree:.4f} on {result['clear_positions']} clear positions;"
        f" {'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    cfg = GPTConfig.preset(args.preset)
    hf32, _, ours32 = build_models(cfg, device, torch.float32, args.seed)
    hf64 = copy.deepcopy(hf32).double()
    gen = torch.Generator().manual_seed(args.seed + 3)
    idx = torch.randint(0, cfg.vocab_size, (args.batch, min(args.seq_len, cfg.n_positions)), generator=gen)
    idx = idx.to(device)
    with torch.no_grad():
        ref = hf64(idx).logits[..., : cfg.vocab_size]
    print(
        f"GPT-2 shape {args.preset!r} ({cfg.num_parameters / 1e6:.1f}M), B {idx.shape[0]} x T {idx.shape[1]}, {device}"
    )
    results = []
    for name in args.dtypes.split(","):
        try:
            results.append(check_dtype(hf64, hf32, ours32, idx, getattr(torch, name), ref))
        except Exception as e:  # noqa: BLE001 - a dtype that crashes is a failure; the others still run
            print(f"{name:>8}: FAILED: {type(e).__name__}: {e}", flush=True)
            results.append(dict(dtype=name, ok=False, error=f"{type(e).__name__}: {e}"[:1000]))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=str(device), preset=args.preset, results=results), indent=1))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
