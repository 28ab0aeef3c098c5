"""`gptcore plan`: the memory model against hand-computed bytes, against the real Trainer's peak
memory on the CPU under several layouts, against published GPT-3 layouts, and the CLI."""

import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from train_fixtures import corpus, small  # noqa: F401 (corpus is a fixture)

from gptcore.cli import main
from gptcore.parallel.testing import run_distributed
from gptcore.training import Trainer, load_config
from gptcore.training.plan import (
    FRAMEWORK_OVERHEAD,
    GIB,
    Layout,
    load_plan_config,
    parse_size,
    plan,
    search,
    stage_memory,
)
from gptcore.training.step import LocalGradients

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Head dim 64 (gptcore's attention kernel); 4 layers; two micro batches a step on each dp rank.
MEASURED = dict(
    n_layer=4, n_embd=128, n_head=2, n_positions=64, seq_len=64, micro_batch_size=4, global_batch_size=8, dropout=0.0
)


def _storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _state_tensors(trainer) -> list:
    """The parameters, their gradients and the optimizer state of a trainer (as live storages)."""
    tensors = []
    for p in trainer.model.parameters():
        tensors += [p, p.grad, getattr(p, "main_grad", None)]
    ddp = getattr(trainer.grads, "ddp", None)
    for bucket in ddp.buckets if ddp is not None else []:
        tensors += [bucket.grad, bucket.shard]
    optimizer = trainer.optimizer
    tensors += getattr(optimizer, "masters", [])
    inner = getattr(optimizer, "optimizer", optimizer)
    tensors += [v for state in inner.state.values() for v in state.values()]
    return tensors


def _measure(rank, world, cfg):
    """(pipeline stage, bytes of parameters + grads + optimizer state between steps, peak bytes a
    step allocates on top). The peak is the running sum of the CPU allocator's allocations and
    frees that torch.profiler(profile_memory=True) records, in time order, over the second step
    (the first creates AdamW's state). One process keeps its grads between steps (as DataParallel's
    buckets do), so the step's peak is what it adds to the planner's static part."""
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    if isinstance(trainer.grads, LocalGradients):
        trainer.grads.zero = lambda: None
    trainer.train_step()
    static = _storage_bytes(_state_tensors(trainer))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return trainer.processes.coords.pp, static, peak


LAYOUTS = {
    "one-process": (1, {}),
    "one-process-recompute-full": (1, {"recompute": "full"}),
    "dp2-zero1": (2, {"zero_stage": 1}),
    "tp2": (2, {"tensor_parallel": 2}),
    "pp2": (2, {"pipeline_parallel": 2}),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_planner_matches_measured_cpu_memory(corpus, name):  # noqa: F811
    world, overrides = LAYOUTS[name]
    cfg = small(corpus, **MEASURED, **overrides)
    results = [_measure(0, 1, cfg)] if world == 1 else run_distributed(_measure, world, cfg)
    train, model = load_plan_config(None, cfg)
    expected = plan(train, model, world, parse_size("80GB"))
    for stage, static, peak in results:
        planned = expected.stages[stage]
        print(
            f"{name} stage {stage}: static {planned.static} planned, {static} measured;"
            f" step peak {planned.dynamic} planned, {peak} measured"
        )
        assert planned.static == pytest.approx(static, rel=0.15)
        assert planned.dynamic == pytest.approx(peak, rel=0.15)


def test_hand_computed_bytes_of_a_tiny_model():
    """tiny (vocab 512, 2 layers, 2 heads, n_embd 64, 128 positions), fp32, one process, micro batch 2 of 32."""
    cfg, model = load_plan_config(
        "tiny-cpu",
        dict(
            model="tiny",
            n_embd=64,
            n_head=2,
            n_positions=128,
            seq_len=32,
            micro_batch_size=2,
            global_batch_size=2,
            dropout=0.0,
        ),
    )
    per_layer = 12 * 64 * 64 + 7 * 64 + 2 * 128 + 2 * 64  # qkv, proj, fc, proj weights and biases; ln_1, ln_2
    P = 2 * per_layer + 512 * 64 + 128 * 64 + 128  # + wte, wpe, ln_f
    assert P == model.num_parameters == 141056
    stage = plan(cfg, model, 1, parse_size("80GB")).stages[0]
    assert (stage.parameters, stage.gradients, stage.optimizer) == (4 * P, 4 * P, 8 * P)  # fp32 grads, 2 moments
    sbh = 32 * 2 * 64
    layer = 4 * sbh * 17 + 4 * 2 * 32 * 2 + 16 * 32 * 2  # 17 [s, b, h] tensors, logsumexp, layer-norm stats
    assert stage.activations == 2 * layer + 8 * 32 * 2  # + the token ids
    cfg.precision = "bf16"
    assert plan(cfg, model, 1, GIB).stages[0].optimizer == 12 * P  # a float32 master for half params


def test_zero_shards_over_data_parallel_ranks():
    cfg, model = load_plan_config("gpt3-1.3b", {})
    P = model.num_parameters
    for zero, per_param in ((0, 2 + 4 + 12), (1, 2 + 4 + 12 / 8), (2, 2 + 4 / 8 + 12 / 8), (3, (2 + 4 + 12) / 8)):
        layout = Layout(1, 1, 8, zero, "full", 1, False)
        stage = stage_memory(cfg, model, layout, 0, 64)
        assert stage.static == pytest.approx(per_param * P, rel=1e-6)


def test_published_gpt3_layouts():
    """Published figures compared with:
    - Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
      Megatron-LM" (SC'21), Table 1: GPT-3 175B trained on A100-80GB GPUs at tensor parallel 8 x
      pipeline parallel 8, micro batch 1, sequence 2048, with full activation recompute: it fits.
    - Without model parallelism 175B cannot fit an 80 GB GPU: its bf16 weights alone are 350 GB
      (Brown et al. 2020 and the same paper: "GPT-3 ... would require 350 GB just for its weights").
    - Rajbhandari et al. 2020, "ZeRO" (SC'20), section 3.1: mixed-precision Adam holds 16 bytes a
      parameter (gptcore 18: its grads are float32), so a 1.5B model needs 24 GB before
      activations and data parallelism with ZeRO-1 fits 1.3B easily on one 80 GB GPU per rank.
    """
    memory = parse_size("80GB")
    overrides = dict(tensor_parallel=8, pipeline_parallel=8, micro_batch_size=1, recompute="full")
    assert plan(*load_plan_config("gpt3-175b", overrides), 64, memory).fits
    assert plan(*load_plan_config("gpt3-175b", overrides | {"sequence_parallel": True}), 64, memory).fits
    alone = plan(*load_plan_config("gpt3-175b", {"zero_stage": 1, "recompute": "full"}), 64, memory)
    assert not alone.fits and alone.peak.parameters > 300 * 10**9
    small_model = dict(micro_batch_size=8, zero_stage=1, recompute="selective", global_batch_size=512)
    assert plan(*load_plan_config("gpt3-1.3b", small_model), 8, memory).fits
    assert not plan(*load_plan_config("gpt3-13b", {"micro_batch_size": 1}), 8, memory).fits  # 13B x 18 bytes
    fits = search(*load_plan_config("gpt3-175b", {}), 1024, memory)
    assert fits and all(p.fits for p in fits)
    assert all(p.layout.tp * p.layout.pp > 1 or p.layout.zero_stage == 3 for p in fits)


def test_cli_text_and_json(capsys):
    args = ["plan", "--config", "gpt3-175b", "--gpus", "64", "--gpu-memory", "80GB"]
    assert main([*args, "tensor_parallel=8", "pipeline_parallel=8"]) == 0
    out = capsys.readouterr().out
    assert "optimizer state" in out and ": fits in 72.0 GiB" in out
    assert main([*args, "--json", "--search", "tensor_parallel=8", "pipeline_parallel=8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["fits"] and out["framework_overhead_bytes"] == FRAMEWORK_OVERHEAD
    assert 0 < len(out["top"]) <= 10 and out["top"][0]["fits"]
    assert main([*args]) == 0  # tp 1 x pp 1 does not fit: the layouts that do are listed
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "layouts fit; the fastest 10" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gpu-memory", "lots"], "--gpu-memory: 'lots' is not a size"),
        (["--gpus", "63", "tensor_parallel=8"], "--gpus (63) must be a multiple"),
        (["tensor_paralel=8"], "unknown config key 'tensor_paralel'"),
        (["zero_stage=4"], "zero_stage"),
    ],
)
def test_cli_errors(capsys, extra, message):
    args = ["plan", "--config", "gpt3-175b", "--gpus", "64", "--gpu-memory", "80GB"]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptcore plan: error: ") and message in err and err.count("\n") == 1
