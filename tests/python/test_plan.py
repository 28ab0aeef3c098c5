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
        print(f"{name} stage {stage}: static {planned.static} planned, {static} measured;"
              f" step peak {planned.dynamic} planned, {peak} measured")
        assert planned.static == pytest.approx(static, rel=0.15)
        assert planned.dynamic == pytest.approx(peak, rel=0.15)
