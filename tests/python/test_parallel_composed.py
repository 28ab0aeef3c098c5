"""Composed parallelism on 4 gloo processes: tp2 x dp2 and tp2 x pp2 (each with and without
sequence parallelism) and pp2 x dp2, each against the single-process GPT trained on the whole
global batch: the loss, the merged gradients and the weights after a few SGD steps.
test_parallel_world8 runs tp2 x pp2 x dp2 with this module's helpers.

Each data-parallel rank takes its half of every global batch. The halves hold different numbers of
target tokens, so DataParallel sums (average=False) gradients of losses already normalized by the
global batch's token count: their sum is the gradient of the global mean loss.

SGD, not Adam: a few grads are zero up to rounding (the k bias of c_attn), and Adam's
normalization would turn that rounding into lr-sized steps.
"""

import pytest
import torch
import torch.distributed as dist

from gptcore.model import GPT, GPTConfig
from gptcore.optim.adamw import param_grad
from gptcore.parallel import parallelize, pipeline_stage
from gptcore.parallel.data_parallel import DataParallel
from gptcore.parallel.layout import ParallelLayout, build_groups
from gptcore.parallel.pipeline import (
    all_reduce_tied_embedding_grad,
    broadcast_tied_embedding,
    forward_backward_1f1b,
    merge_stage_state_dicts,
    neighbour_ranks,
)
from gptcore.parallel.reshard import merge
from gptcore.parallel.tensor_parallel import gather_full_state_dict, reduce_sequence_parallel_grads
from gptcore.parallel.testing import run_distributed

CONFIG = GPTConfig(vocab_size=256, n_positions=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
GLOBAL_B, T, STEPS, DP = 4, 16, 3, 2
MICRO_BATCHES = 2  # per data-parallel rank and step, in the pipeline


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).train()


def _optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch [GLOBAL_B, T]; more targets ignored in the second data-parallel half."""
    g = torch.Generator().manual_seed(100 + step)
    idx = torch.randint(0, CONFIG.vocab_size, (GLOBAL_B, T), generator=g)
    targets = torch.randint(0, CONFIG.vocab_size, (GLOBAL_B, T), generator=g)
    ignore = torch.rand(GLOBAL_B, T, generator=g) < torch.linspace(0.0, 0.5, GLOBAL_B).unsqueeze(1)
    targets[ignore] = -100
    return idx, targets


def _half(tensor: torch.Tensor, dp_rank: int) -> torch.Tensor:
    per_rank = GLOBAL_B // DP
    return tensor[dp_rank * per_rank : (dp_rank + 1) * per_rank]


def _num_tokens(targets: torch.Tensor) -> int:
    return int((targets != -100).sum())


def _reference() -> list[dict]:
    """The single-process GPT on every whole global batch: loss and grads per step, SGD between;
    the final weights last."""
    model = _model()
    optimizer = _optimizer(model.parameters())
    out = []
    for step in range(STEPS):
        _, loss = model(*_batch(step))
        loss.backward()
        out.append({"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out.append({"state": {k: v.clone() for k, v in model.state_dict().items()}})
    return out


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Max error within rtol of the tensor's largest magnitude (fp32 sums in another order)."""
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} vs {list(expected.shape)}"
    err = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    assert err <= rtol * scale + 1e-12, f"{what}: max error {err:.3g} vs max |expected| {scale:.3g}"


def _close_all(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual.keys() ^ expected.keys())}"
    for name, value in expected.items():
        _close(actual[name], value, f"{what} {name}")


def _sgd_step(optimizer: torch.optim.Optimizer, dp: DataParallel) -> None:
    """torch's SGD over the reduced main_grads (.grad stays None for DataParallel's hook)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = p.main_grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    dp.zero_grad()


# ---- tp2 x dp2 ---------------------------------------------------------------------------------


def _train_tp_dp(groups, reference: list[dict], sequence_parallel: bool) -> None:
    what = f"tp2 x dp2 sequence_parallel={sequence_parallel}"
    model = parallelize(_model(), groups.tp, sequence_parallel=sequence_parallel)
    dp = DataParallel(model, groups.dp, average=False)
    optimizer = _optimizer(model.parameters())
    for step in range(STEPS):
        idx, targets = _batch(step)
        local_idx, local_targets = _half(idx, groups.coords.dp), _half(targets, groups.coords.dp)
        _, loss = model(local_idx, local_targets)  # the mean over this rank's tokens
        loss = loss * (_num_tokens(local_targets) / _num_tokens(targets))  # its share of the global mean
        loss.backward()  # main_grad: summed over the data-parallel group
        reduce_sequence_parallel_grads(model, groups.tp)  # summed over the tensor-parallel group (a no-op without sp)
        assert all(p.grad is None for p in model.parameters())
        total = loss.detach().reshape(1)
        dist.all_reduce(total, group=groups.dp)
        _close(total[0], reference[step]["loss"], f"{what}: step {step} loss")
        grads = gather_full_state_dict({n: p.main_grad for n, p in model.named_parameters()}, groups.tp)
        _close_all(grads, reference[step]["grads"], f"{what}: step {step} grad of")
        _sgd_step(optimizer, dp)
    state = gather_full_state_dict(model.state_dict(), groups.tp)
    _close_all(state, reference[-1]["state"], f"{what}: after {STEPS} SGD steps,")


def _tp_dp_worker(rank: int, world_size: int, reference: list[dict]) -> None:
    groups = build_groups(ParallelLayout(world_size, tp=2))
    assert groups.layout.dp == DP
    for sequence_parallel in (False, True):
        _train_tp_dp(groups, reference, sequence_parallel)


def test_tp2_dp2_matches_single_process():
    run_distributed(_tp_dp_worker, 4, _reference())


# ---- pp2 x dp2 ---------------------------------------------------------------------------------


def _pp_dp_worker(rank: int, world_size: int, reference: list[dict]) -> None:
    groups = build_groups(ParallelLayout(world_size, pp=2))
    assert groups.layout.dp == DP
    stage = pipeline_stage(_model(), groups.coords.pp, groups.layout.pp)
    broadcast_tied_embedding(stage, groups.embedding, first_stage_rank=groups.pp_ranks[0])
    dp = DataParallel(stage, groups.dp, average=False)
    optimizer = _optimizer(stage.parameters())
    prev_rank, next_rank = neighbour_ranks(groups.pp_ranks, stage.pipeline.stage)
    per_micro = GLOBAL_B // DP // MICRO_BATCHES
    for step in range(STEPS):
        idx, targets = _batch(step)
        local_idx, local_targets = _half(idx, groups.coords.dp), _half(targets, groups.coords.dp)
        micro_batches = list(zip(local_idx.split(per_micro), local_targets.split(per_micro)))
        losses = forward_backward_1f1b(
            stage,
            micro_batches,
            groups.pp,
            prev_rank,
            next_rank,
            num_tokens=_num_tokens(targets),  # every micro batch's token sum / the global batch's tokens
            no_sync=dp.no_sync,  # one data-parallel reduction, after the last micro batch's backward
        )
        all_reduce_tied_embedding_grad(stage, groups.embedding)  # after the data-parallel reduction
        assert all(p.grad is None for p in stage.parameters())
        if stage.pipeline.is_last:
            total = torch.stack(losses).sum().reshape(1)
            dist.all_reduce(total, group=groups.dp)
            _close(total[0], reference[step]["loss"], f"pp2 x dp2: step {step} loss")
        else:
            assert losses == []
        grads = [None] * groups.layout.pp
        dist.all_gather_object(grads, {n: p.main_grad for n, p in stage.named_parameters()}, group=groups.pp)
        # merge_stage_state_dicts raises unless both wte copies hold the same (tied) grad.
        _close_all(merge_stage_state_dicts(grads), reference[step]["grads"], f"pp2 x dp2: step {step} grad of")
        _sgd_step(optimizer, dp)
    states = [None] * groups.layout.pp
    dist.all_gather_object(states, stage.state_dict(), group=groups.pp)
    _close_all(merge_stage_state_dicts(states), reference[-1]["state"], f"pp2 x dp2: after {STEPS} SGD steps,")


def test_pp2_dp2_matches_single_process():
    run_distributed(_pp_dp_worker, 4, _reference())


# ---- tp2 x pp2 (x dp) ---------------------------------------------------------------------------


def _gather_tp_pp(groups, tensors: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The full GPT tensors (grads or weights) from every rank's tensor-parallel stage's tensors, gathered
    over the world: the data-parallel replicas must be equal; reshard.merge raises unless both wte
    copies of each tp shard are equal (tied)."""
    gathered = [None] * groups.layout.world
    dist.all_gather_object(gathered, (groups.coords, tensors))
    shards = {}
    for coords, shard in gathered:
        key = (coords.tp, coords.pp)
        if key not in shards:
            shards[key] = shard
            continue
        for name, value in shard.items():
            assert torch.equal(value, shards[key][name]), f"{what} {name}: data-parallel replicas differ"
    return merge(shards, CONFIG)


def _train_tp_pp(groups, reference: list[dict], sequence_parallel: bool) -> None:
    """Tensor-parallel pipeline stage training against the reference on any tp x pp (x dp) layout: with dp > 1 each
    data-parallel rank takes its part of every global batch and DataParallel sums the grads once
    per step (no_sync over the micro batches)."""
    layout, coords = groups.layout, groups.coords
    what = f"tp{layout.tp} x pp{layout.pp} x dp{layout.dp} sequence_parallel={sequence_parallel}"
    stage = parallelize(pipeline_stage(_model(), coords.pp, layout.pp), groups.tp, sequence_parallel)
    assert all(hasattr(p, "tensor_parallel") and hasattr(p, "sequence_parallel") for p in stage.parameters())
    broadcast_tied_embedding(stage, groups.embedding, first_stage_rank=groups.pp_ranks[0])
    dp = DataParallel(stage, groups.dp, average=False) if layout.dp > 1 else None
    optimizer = _optimizer(stage.parameters())
    prev_rank, next_rank = neighbour_ranks(groups.pp_ranks, stage.pipeline.stage)
    per_micro = GLOBAL_B // layout.dp // MICRO_BATCHES
    for step in range(STEPS):
        idx, targets = _batch(step)
        local_idx, local_targets = idx.chunk(layout.dp)[coords.dp], targets.chunk(layout.dp)[coords.dp]
        micro_batches = list(zip(local_idx.split(per_micro), local_targets.split(per_micro)))
        losses = forward_backward_1f1b(
            stage,
            micro_batches,
            groups.pp,
            prev_rank,
            next_rank,
            num_tokens=_num_tokens(targets),  # every micro batch's token sum / the global batch's tokens
            no_sync=dp.no_sync if dp else None,
        )
        reduce_sequence_parallel_grads(stage, groups.tp)  # a no-op without sequence parallelism
        all_reduce_tied_embedding_grad(stage, groups.embedding)  # after the data-parallel reduction
        if stage.pipeline.is_last:  # every tp rank of the last stage holds the whole loss of its data
            total = torch.stack(losses).sum().reshape(1)
            dist.all_reduce(total, group=groups.dp)
            _close(total[0], reference[step]["loss"], f"{what}: step {step} loss")
        else:
            assert losses == []
        grads = _gather_tp_pp(groups, {n: param_grad(p) for n, p in stage.named_parameters()}, what)
        _close_all(grads, reference[step]["grads"], f"{what}: step {step} grad of")
        if dp:
            _sgd_step(optimizer, dp)
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    state = _gather_tp_pp(groups, stage.state_dict(), what)
    _close_all(state, reference[-1]["state"], f"{what}: after {STEPS} SGD steps,")


def _tp_pp_worker(rank: int, world_size: int, reference: list[dict], sequence_parallel: bool) -> None:
    groups = build_groups(ParallelLayout(world_size, tp=2, pp=2))
    assert groups.layout.dp == 1
    _train_tp_pp(groups, reference, sequence_parallel)


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["no_sp", "sp"])
def test_tp2_pp2_matches_single_process(sequence_parallel):
    run_distributed(_tp_pp_worker, 4, _reference(), sequence_parallel)


def _sp_indivisible_worker(rank: int, world_size: int) -> None:
    groups = build_groups(ParallelLayout(world_size, tp=2, pp=2))
    stage = parallelize(pipeline_stage(_model(), groups.coords.pp, groups.layout.pp), groups.tp, True)
    prev_rank, next_rank = neighbour_ranks(groups.pp_ranks, stage.pipeline.stage)
    idx, targets = (t[:, : T - 1] for t in _batch(0))  # T - 1 = 15 tokens over 2 tp ranks
    message = r"sequence length \(15\) must be divisible by the tensor-parallel size \(2\)"
    # Every stage raises before any transfer (activation_shape), so no rank waits on another.
    with pytest.raises(ValueError, match=message):
        forward_backward_1f1b(stage, [(idx, targets)], groups.pp, prev_rank, next_rank)
    if stage.pipeline.is_first:  # and the stage itself, called directly
        with pytest.raises(ValueError, match=message):
            stage(idx)
    dist.barrier()  # no rank tears the groups down while another is still setting them up


def test_tp_pipeline_sequence_parallel_needs_divisible_seq_len():
    run_distributed(_sp_indivisible_worker, 4)
