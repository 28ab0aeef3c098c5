"""`gptcore plan`: whether a training layout fits its GPUs' memory, and the layouts that do."""

from __future__ import annotations

import json

from gptcore.training.plan import FRAMEWORK_OVERHEAD, GIB, MARGIN, load_plan_config, parse_size, plan, search

TOP = 10


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "plan",
        help="per-GPU memory of a training layout, whether it fits, and the layouts that do",
        description="Per-GPU memory of a training config's layout (parameters, gradients, optimizer state,"
        " activations, logits, buffers) on --gpus GPUs, whether it fits in --gpu-memory, and with --search"
        " (or when it does not fit) the fastest layouts that fit, by a simple throughput model"
        " (README: Planning memory). key=value overrides as `gptcore train`'s (tensor_parallel=8"
        " pipeline_parallel=8 zero_stage=1 recompute=full micro_batch_size=1; zero_stage=3 is modelled as"
        " parameters, grads and optimizer state sharded over dp).",
    )
    parser.add_argument("--config", required=True, help="a YAML file or a shipped config name (gpt3-175b)")
    parser.add_argument("--gpus", type=int, required=True, help="the number of GPUs")
    parser.add_argument("--gpu-memory", required=True, help="each GPU's memory: 80GB, 40GiB, 24G (GB read as GiB)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="tensor parallelism stays within a node (8)")
    parser.add_argument("--peak-tflops", type=float, help="each GPU's dense peak for the time estimate (312, A100)")
    parser.add_argument("--search", action="store_true", help="list the fastest layouts that fit")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.gpus < 1 or args.gpus_per_node < 1:
        raise ValueError(f"--gpus and --gpus-per-node must be >= 1, got {args.gpus} and {args.gpus_per_node}")
    memory = parse_size(args.gpu_memory)
    cfg, model = load_plan_config(args.config, args.overrides)
    try:
        asked, problem = plan(cfg, model, args.gpus, memory, args.peak_tflops), None
    except ValueError as e:  # the config's own layout cannot run here: an error unless searching
        if not args.search:
            raise
        asked, problem = None, str(e)
    found = search(cfg, model, args.gpus, memory, args.peak_tflops, args.gpus_per_node)
    show = args.search or asked is None or not asked.fits
    if args.json:
        out = {
            "config": str(args.config),
            "parameters": model.num_parameters,
            "gpus": args.gpus,
            "gpu_memory_bytes": memory,
            "margin": MARGIN,
            "framework_overhead_bytes": FRAMEWORK_OVERHEAD,
            "plan": asked.to_dict() if asked else {"error": problem},
            "layouts_that_fit": len(found),
            "top": [p.to_dict() for p in found[:TOP]] if show else [],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{cfg.model}: {model.num_parameters / 1e9:.2f}B parameters, seq {cfg.seq_len}, global batch"
        f" {cfg.global_batch_size}, {cfg.precision}, on {args.gpus} GPUs of {memory / GIB:.0f} GiB"
    )
    if asked is None:
        print(f"the config's layout cannot run on {args.gpus} GPUs: {problem}")
    else:
        print(f"layout: {asked.layout.describe()}, {asked.micro_batches} micro batches a step")
        print(_table(asked))
        verdict = "fits" if asked.fits else "does NOT fit"
        print(
            f"peak {asked.peak.total / GIB:.1f} GiB on stage {asked.peak.stage}: {verdict} in"
            f" {asked.usable / GIB:.1f} GiB ({memory / GIB:.0f} GiB less a {MARGIN:.0%} margin;"
            f" {FRAMEWORK_OVERHEAD / GIB:.0f} GiB framework overhead counted in the peak)"
        )
    if show:
        print(f"\n{len(found)} layouts fit; the fastest {min(TOP, len(found))} (estimated step time):")
        for p in found[:TOP]:
            print(f"  {p.step_seconds:8.2f} s  {p.peak.total / GIB:6.1f} GiB  {p.layout.describe()}")
    return 0


def _table(p) -> str:
    stages = sorted({0, p.layout.pp - 1, p.peak.stage})
    rows = [
        ("parameters", "parameters"),
        ("gradients", "gradients"),
        ("optimizer state", "optimizer"),
        ("activations", "activations"),
        ("logits and loss", "logits"),
        ("backward buffers", "buffers"),
        ("optimizer-step buffers", "update_buffers"),
        ("framework overhead", "overhead"),
        ("total (peak)", "total"),
    ]
    head = "  GiB per GPU             " + "".join(f"{'stage ' + str(s):>12}" for s in stages)
    lines = [head]
    for label, field in rows:
        lines.append(f"  {label:<24}" + "".join(f"{getattr(p.stages[s], field) / GIB:12.2f}" for s in stages))
    flight = "".join(f"{p.stages[s].in_flight:12d}" for s in stages)
    lines.append(f"  {'micro batches in flight':<24}{flight}")
    return "\n".join(lines)
