"""Pipeline parallelism: layer split, stage state round trip, the 1F1B order, and two gloo processes
(pp=2) that reproduce the single-process model's losses, grads and SGD updates."""

import copy

import pytest
import torch

from gptcore.model import GPT, GPTConfig
from gptcore.parallel.layout import ParallelLayout, build_groups
from gptcore.parallel.pipeline import (
    all_reduce_tied_embedding_grad,
    broadcast_tied_embedding,
    forward_backward_1f1b,
    merge_stage_state_dicts,
    neighbour_ranks,
    owned_parameters,
    pipeline_stage,
    schedule_1f1b,
    split_layers,
    stage_state_dict,
)
from gptcore.parallel.testing import run_distributed

CONFIG = GPTConfig(vocab_size=256, n_positions=32, n_layer=4, n_head=2, n_embd=64)
MICRO_B, T, STEPS = 2, 16, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(config=CONFIG) -> GPT:
    torch.manual_seed(0)
    return GPT(config)


def _optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1)


def _micro_batches(step: int, num_micro_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random tokens; some targets ignored, unevenly across micro batches (the loss is a token mean)."""
    g = torch.Generator().manual_seed(100 + step)
    batches = []
    for k in range(num_micro_batches):
        idx = torch.randint(0, CONFIG.vocab_size, (MICRO_B, T), generator=g)
        targets = torch.randint(0, CONFIG.vocab_size, (MICRO_B, T), generator=g)
        targets[torch.rand(MICRO_B, T, generator=g) < 0.1 * (k + 1)] = -100
        batches.append((idx, targets))
    return batches


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Max error within rtol of the tensor's largest magnitude (fp32 sums in another order)."""
    err = float((actual - expected).abs().max().detach())
    scale = float(expected.abs().max())
    assert err <= rtol * scale + 1e-12, f"{what}: max error {err:.3g} vs max |expected| {scale:.3g}"


def _reference_steps(num_micro_batches: int, steps: int) -> list[dict]:
    """The single-process model on the whole batch: loss and grads per step, SGD between."""
    model = _model()
    optimizer = _optimizer(model.parameters())
    out = []
    for step in range(steps):
        micro_batches = _micro_batches(step, num_micro_batches)
        idx = torch.cat([i for i, _ in micro_batches])
        targets = torch.cat([t for _, t in micro_batches])
        _, loss = model(idx, targets)
        loss.backward()
        out.append({"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out.append({"state": {k: v.clone() for k, v in model.state_dict().items()}})
    return out


# ---- what each rank runs (pp=2) --------------------------------------------------------------


def _record_order(stage: GPT, events: list) -> None:
    """Log ("F", k) when a micro batch's forward runs on the stage and ("B", k) when its backward
    reaches the stage's output: the order the stage really executes."""
    forward, count = stage.forward, [0]

    def logged(*args, **kwargs):
        k = count[0]
        count[0] += 1
        events.append(("F", k))
        out = forward(*args, **kwargs)
        last = out[1] if isinstance(out, tuple) else out  # the last stage: (logits, loss)
        if last.requires_grad:
            last.register_hook(lambda grad: events.append(("B", k)))
        return out

    stage.forward = logged


def _train_pp(stage, optimizer, groups, num_micro_batches: int, steps: int) -> list[dict]:
    prev_rank, next_rank = neighbour_ranks(groups.pp_ranks, stage.pipeline.stage)
    out = []
    for step in range(steps):
        events = []
        _record_order(stage, events)
        micro_batches = _micro_batches(step, num_micro_batches)
        losses = forward_backward_1f1b(stage, micro_batches, groups.pp, prev_rank, next_rank)
        del stage.forward
        all_reduce_tied_embedding_grad(stage, groups.embedding)
        grads = {n: p.grad.clone() for n, p in stage.named_parameters()}
        out.append({"losses": losses, "grads": grads, "events": events})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out.append({"state": stage.state_dict()})
    return out


def _pp2_worker(rank: int, world_size: int) -> dict:
    groups = build_groups(ParallelLayout(world=world_size, pp=world_size))
    stage_index = groups.coords.pp
    results = {}

    # The last stage's wte copy starts different: broadcast_tied_embedding makes it the first's.
    stage = pipeline_stage(_model(), stage_index, world_size)
    if stage.pipeline.is_last:
        with torch.no_grad():
            stage.transformer.wte.weight.add_(1.0)
    broadcast_tied_embedding(stage, groups.embedding, first_stage_rank=groups.pp_ranks[0])
    results["four"] = _train_pp(stage, _optimizer(stage.parameters()), groups, 4, STEPS)

    stage = pipeline_stage(_model(), stage_index, world_size)
    results["one"] = _train_pp(stage, _optimizer(stage.parameters()), groups, 1, 2)

    stage = pipeline_stage(_model(), stage_index, world_size).eval()
    prev_rank, next_rank = neighbour_ranks(groups.pp_ranks, stage_index)
    results["forward_only"] = forward_backward_1f1b(
        stage, _micro_batches(0, 3), groups.pp, prev_rank, next_rank, forward_only=True
    )
    results["forward_only_grads"] = [n for n, p in stage.named_parameters() if p.grad is not None]
    return results


@pytest.fixture(scope="module")
def pp2():
    """What each of the two stages saw: one run of two processes shared by the pp2 tests."""
    return run_distributed(_pp2_worker, 2)


def _check_against_reference(per_rank: list[list[dict]], num_micro_batches: int) -> None:
    steps = len(per_rank[0]) - 1
    reference = _reference_steps(num_micro_batches, steps)
    first, last = per_rank[0], per_rank[-1]
    for step in range(steps):
        assert first[step]["losses"] == []
        losses = last[step]["losses"]
        assert len(losses) == num_micro_batches
        _assert_close(sum(losses), reference[step]["loss"], f"step {step} loss")
        # Both wte copies hold the tied grad (embedding + head); every parameter on exactly one stage otherwise.
        wte = "transformer.wte.weight"
        assert torch.equal(first[step]["grads"][wte], last[step]["grads"][wte])
        grads = merge_stage_state_dicts([rank[step]["grads"] for rank in per_rank])
        assert grads.keys() == reference[step]["grads"].keys()
        for name, expected in reference[step]["grads"].items():
            _assert_close(grads[name], expected, f"step {step} grad of {name}")
    state = merge_stage_state_dicts([rank[-1]["state"] for rank in per_rank])  # raises if the wte copies drifted
    assert state.keys() == reference[-1]["state"].keys()
    for name, expected in reference[-1]["state"].items():
        _assert_close(state[name], expected, f"{name} after {steps} SGD steps")


def test_pp2_matches_single_process(pp2):
    _check_against_reference([rank["four"] for rank in pp2], num_micro_batches=4)


def test_pp2_one_micro_batch(pp2):
    """Fewer micro batches than stages: warmup is capped, the pipeline still gives the same grads."""
    _check_against_reference([rank["one"] for rank in pp2], num_micro_batches=1)


def test_pp2_runs_1f1b(pp2):
    expected = {
        0: [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3), ("B", 2), ("B", 3)],
        1: [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2), ("F", 3), ("B", 3)],
    }
    for rank, result in enumerate(pp2):
        for step in result["four"][:-1]:
            assert step["events"] == expected[rank] == schedule_1f1b(4, rank, 2)
        assert result["one"][0]["events"] == [("F", 0), ("B", 0)]


def test_pp2_forward_only(pp2):
    model = _model().eval()
    micro_batches = _micro_batches(0, 3)
    with torch.no_grad():
        _, expected = model(torch.cat([i for i, _ in micro_batches]), torch.cat([t for _, t in micro_batches]))
    assert pp2[0]["forward_only"] == []
    _assert_close(sum(pp2[1]["forward_only"]), expected, "forward-only loss")
    assert pp2[0]["forward_only_grads"] == pp2[1]["forward_only_grads"] == []


# ---- single process --------------------------------------------------------------------------


def test_split_layers():
    assert split_layers(4, 1) == [range(0, 4)]
    assert split_layers(4, 2) == [range(0, 2), range(2, 4)]
    assert split_layers(4, 4) == [range(i, i + 1) for i in range(4)]
    assert split_layers(12, 3) == [range(0, 4), range(4, 8), range(8, 12)]


def test_split_layers_errors():
    with pytest.raises(ValueError, match="3 layers cannot fill 4 stages"):
        split_layers(3, 4)
    with pytest.raises(ValueError, match=r"n_layer \(6\) is not divisible by 4 stages.* in \[1, 2, 3, 6\]"):
        split_layers(6, 4)
    with pytest.raises(ValueError, match="positive integer"):
        split_layers(4, 0)
    with pytest.raises(ValueError, match="3 layers cannot fill 4 stages"):
        pipeline_stage(GPT(GPTConfig(vocab_size=256, n_positions=32, n_layer=3, n_head=2, n_embd=64)), 0, 4)
    with pytest.raises(ValueError, match="stage 2 is out of range for 2 stages"):
        pipeline_stage(_model(), 2, 2)


@pytest.mark.parametrize("num_stages", [1, 2, 4])
def test_stage_state_round_trip(num_stages):
    model = _model()
    full = model.state_dict()
    states = [stage_state_dict(full, s, num_stages, CONFIG.n_layer) for s in range(num_stages)]
    merged = merge_stage_state_dicts(states)
    assert list(merged) == list(full)
    assert all(merged[k] is full[k] for k in full)
    for s, state in enumerate(states):
        stage = pipeline_stage(copy.deepcopy(model), s, num_stages)
        stage_state = stage.state_dict()
        assert list(stage_state) == list(state)
        assert all(torch.equal(stage_state[k], v) for k, v in state.items())
        # A copy, not a view: training the stage leaves the model alone.
        assert all(stage_state[k].data_ptr() != v.data_ptr() for k, v in state.items())
        layers = {int(k.split(".")[2]) for k in state if k.startswith("transformer.h.")}
        assert sorted(layers) == list(split_layers(CONFIG.n_layer, num_stages)[s])
        assert ("transformer.wte.weight" in state) == (s in (0, num_stages - 1))
        assert ("transformer.wpe.weight" in state) == (s == 0)
        assert ("transformer.ln_f.weight" in state) == (s == num_stages - 1)
    # owned_parameters: the full model's parameters once over all stages.
    stages = [pipeline_stage(copy.deepcopy(model), s, num_stages) for s in range(num_stages)]
    assert sum(p.numel() for st in stages for p in owned_parameters(st)) == model.num_parameters()


def test_state_dict_errors():
    full = _model().state_dict()
    with pytest.raises(ValueError, match="belongs to layer 2, but the model has n_layer=2"):
        stage_state_dict(full, 0, 2, n_layer=2)
    with pytest.raises(ValueError, match="'lm_head.weight' is not a GPT state entry"):
        stage_state_dict(full | {"lm_head.weight": torch.zeros(1)}, 0, 2, CONFIG.n_layer)
    first, last = (stage_state_dict(full, s, 2, CONFIG.n_layer) for s in range(2))
    last = last | {"transformer.wte.weight": last["transformer.wte.weight"] + 1}
    with pytest.raises(ValueError, match="'transformer.wte.weight' differs between stage 1"):
        merge_stage_state_dicts([first, last])


def test_stage_from_config_matches_model_under_the_same_seed():
    torch.manual_seed(0)
    stage = pipeline_stage(GPT(CONFIG), 1, 2)
    expected = stage_state_dict(_model().state_dict(), 1, 2, CONFIG.n_layer)
    assert all(torch.equal(stage.state_dict()[k], v) for k, v in expected.items())


def test_stages_chained_equal_the_model():
    model = _model()
    idx, targets = _micro_batches(0, 1)[0]
    logits, loss = model(idx, targets)
    stages = [pipeline_stage(copy.deepcopy(model), s, 4) for s in range(4)]
    h = stages[2](stages[1](stages[0](idx)))
    _assert_close(stages[3](h)[0], logits.detach(), "logits")
    _assert_close(stages[3](h, targets)[1], loss.detach(), "loss")


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_one_stage_matches_the_model(recompute):
    """pp=1: no communication; micro batches accumulate to the whole batch's grads."""
    model = _model()
    stage = pipeline_stage(copy.deepcopy(model), 0, 1)
    stage.recompute = recompute
    micro_batches = _micro_batches(0, 3)
    losses = forward_backward_1f1b(stage, micro_batches, None, None, None, grad_scale=4.0)
    _, loss = model(torch.cat([i for i, _ in micro_batches]), torch.cat([t for _, t in micro_batches]))
    loss.backward()
    _assert_close(sum(losses), loss.detach(), "loss")
    grads = dict(stage.named_parameters())
    for name, p in model.named_parameters():
        _assert_close(grads[name].grad / 4.0, p.grad, f"grad of {name}")


def test_schedule_1f1b():
    assert schedule_1f1b(4, 0, 2) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3), ("B", 2), ("B", 3)]
    assert schedule_1f1b(3, 0, 4) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("B", 1), ("B", 2)]
    assert schedule_1f1b(2, 3, 4) == [("F", 0), ("B", 0), ("F", 1), ("B", 1)]
    for num_stages in range(1, 5):
        for stage in range(num_stages):
            for m in range(1, 7):
                order = schedule_1f1b(m, stage, num_stages)
                assert sorted(order) == sorted([("F", k) for k in range(m)] + [("B", k) for k in range(m)])
                # Each backward after its forward, and at most num_stages - stage micro batches in flight.
                in_flight, peak = set(), 0
                for action, k in order:
                    if action == "F":
                        in_flight.add(k)
                    else:
                        in_flight.remove(k)
                    peak = max(peak, len(in_flight))
                assert peak == min(num_stages - stage, m)


def test_schedule_errors():
    stage = pipeline_stage(_model(), 0, 2)  # validation happens before any communication
    mbs = _micro_batches(0, 2)
    with pytest.raises(ValueError, match="no micro batches"):
        forward_backward_1f1b(stage, [], None, None, 1)
    short = (mbs[1][0][:, :8], mbs[1][1][:, :8])
    with pytest.raises(ValueError, match=r"micro batch 1 has shape \[2, 8\], micro batch 0 \[2, 16\]"):
        forward_backward_1f1b(stage, [mbs[0], short], None, None, 1)
    with pytest.raises(ValueError, match=r"micro batch 0 has targets of shape \[2, 15\]"):
        forward_backward_1f1b(stage, [(mbs[0][0], mbs[0][1][:, 1:])], None, None, 1)
    with pytest.raises(ValueError, match="prev_rank is None exactly on the first stage"):
        forward_backward_1f1b(stage, mbs, None, 1, 1)
    with pytest.raises(ValueError, match="next_rank"):
        forward_backward_1f1b(stage, mbs, None, None, None)
    long = torch.zeros(1, 33, dtype=torch.long)
    with pytest.raises(ValueError, match="sequence length 33 exceeds n_positions 32"):
        forward_backward_1f1b(stage, [(long, long)], None, None, 1)


def test_neighbour_ranks():
    assert neighbour_ranks([4, 6, 8], 0) == (None, 6)
    assert neighbour_ranks([4, 6, 8], 1) == (4, 8)
    assert neighbour_ranks([4, 6, 8], 2) == (6, None)
    assert neighbour_ranks([3], 0) == (None, None)
