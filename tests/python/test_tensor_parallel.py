"""Tensor and sequence parallelism on 2 CPU processes (gloo): the mappings and their adjoints,
vocab-parallel cross-entropy against F.cross_entropy, tp2 (with and without sequence
parallelism) against the single-process GPT over several SGD steps: losses, every gradient
and the weights after the steps, and tp2 greedy generation with a head-sharded KV cache.
Sharding round trips and config errors run in-process."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from gptcore.generate import Engine, Generator, KVCache
from gptcore.model import GPT, GPTConfig
from gptcore.parallel import mappings, parallelize
from gptcore.parallel.tensor_parallel import (
    check_tensor_parallel,
    gather_full_state_dict,
    merge_state_dicts,
    reduce_sequence_parallel_grads,
    shard_state_dict,
    vocab_parallel_cross_entropy,
)
from gptcore.parallel.testing import run_distributed

TP = 2
STEPS = 3


def _config(**overrides) -> GPTConfig:
    # vocab 200 pads to 256: rank 0 holds 128 real rows, rank 1 72 real rows and 56 padding rows.
    fields = dict(vocab_size=200, n_positions=32, n_layer=2, n_head=4, n_embd=128)
    return GPTConfig(**(fields | overrides))


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Equal within rtol of expected's largest magnitude (fp32 sums in another order)."""
    atol = rtol * max(expected.abs().max().item(), 1e-6)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


# ---- in-process: sharding and validation -----------------------------------------------------


@pytest.mark.parametrize("tp_size", [2, 4])
def test_shard_merge_round_trip(tp_size):
    torch.manual_seed(0)
    config = _config(use_gptcore_ops=False)
    full = GPT(config).state_dict()
    check_tensor_parallel(config, tp_size)
    shards = [shard_state_dict(full, r, tp_size) for r in range(tp_size)]
    merged = merge_state_dicts(shards)
    assert merged.keys() == full.keys()
    for name in full:
        assert torch.equal(merged[name], full[name]), name
    for r in range(tp_size):
        again = shard_state_dict(merged, r, tp_size)
        assert all(torch.equal(again[name], shards[r][name]) for name in full)

    C, r = config.n_embd, tp_size - 1
    rows = slice(r * C // tp_size, (r + 1) * C // tp_size)  # rank r's heads
    w = full["transformer.h.1.attn.c_attn.weight"]
    expected = torch.cat([w[:C][rows], w[C : 2 * C][rows], w[2 * C :][rows]])
    assert torch.equal(shards[r]["transformer.h.1.attn.c_attn.weight"], expected)
    assert torch.equal(
        shards[r]["transformer.h.1.attn.c_proj.weight"], full["transformer.h.1.attn.c_proj.weight"][:, rows]
    )
    assert torch.equal(shards[r]["transformer.h.1.attn.c_proj.bias"], full["transformer.h.1.attn.c_proj.bias"])
    vocab_rows = config.padded_vocab_size // tp_size
    assert torch.equal(shards[r]["transformer.wte.weight"], full["transformer.wte.weight"][r * vocab_rows :])
    shards[r]["transformer.wpe.weight"].add_(1.0)  # shards are new tensors, not views of the full state
    assert not torch.equal(shards[r]["transformer.wpe.weight"], full["transformer.wpe.weight"])


def test_config_errors():
    ref = dict(use_gptcore_ops=False)
    with pytest.raises(ValueError, match=r"n_head \(6\) must be divisible by the tensor-parallel size \(4\)"):
        check_tensor_parallel(_config(n_head=6, n_embd=96, **ref), 4)
    with pytest.raises(ValueError, match=r"padded vocab \(256.*must be divisible by the tensor-parallel size \(3\)"):
        check_tensor_parallel(_config(n_head=3, n_embd=96, **ref), 3)
    with pytest.raises(ValueError, match="padding rows only"):
        check_tensor_parallel(_config(vocab_size=10, pad_vocab_multiple=64, **ref), 2)
    with pytest.raises(ValueError, match="does not split into 3 x 2 equal parts"):
        shard_state_dict({"transformer.h.0.attn.c_attn.weight": torch.zeros(9, 4)}, 0, 2)
    with pytest.raises(ValueError, match=r"rank 2 is outside \[0, 2\)"):
        shard_state_dict({}, 2, 2)


# ---- distributed (all run by test_two_ranks): mappings, cross-entropy, fresh init ----------


def _per_rank(shape, rank, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + rank))


def _check_mappings(group):
    rank = dist.get_rank(group)
    full = _per_rank((2, 4, 6), 0, 100)  # the same on both ranks

    def run(fn, x, grad):
        x = x.clone().requires_grad_()
        y = fn(x, group)
        y.backward(grad)
        return y.detach(), x.grad

    grads = [_per_rank((2, 4, 6), r, 200) for r in range(TP)]  # rank r's upstream gradient
    y, dx = run(mappings.copy_to_region, full, grads[rank])
    _close(y, full, "copy_to_region forward")
    _close(dx, sum(grads), "copy_to_region backward")

    parts = [_per_rank((2, 4, 6), r, 300) for r in range(TP)]
    y, dx = run(mappings.reduce_from_region, parts[rank], grads[0])
    _close(y, sum(parts), "reduce_from_region forward")
    _close(dx, grads[0], "reduce_from_region backward")

    for scatter, gather, dim in (
        (mappings.scatter_to_region, mappings.gather_from_region, 2),
        (mappings.scatter_to_sequence, mappings.gather_from_sequence, 1),
    ):
        own = full.chunk(TP, dim)[rank]
        chunk_grads = [g.chunk(TP, dim)[r] for r, g in enumerate(grads)]
        y, dx = run(scatter, full, chunk_grads[rank])
        _close(y, own, f"{scatter.__name__} forward")
        _close(dx, torch.cat(chunk_grads, dim), f"{scatter.__name__} backward")
        # gather_from_region's output feeds replicated work (same gradient everywhere);
        # gather_from_sequence's feeds tensor-parallel work (partial gradients, summed).
        upstream = grads[0] if dim == 2 else grads[rank]
        expected_dx = (grads[0] if dim == 2 else sum(grads)).chunk(TP, dim)[rank]
        y, dx = run(gather, own, upstream)
        _close(y, full, f"{gather.__name__} forward")
        _close(dx, expected_dx, f"{gather.__name__} backward")

    chunk_grads = [g.chunk(TP, 1)[r] for r, g in enumerate(grads)]
    y, dx = run(mappings.reduce_scatter_to_sequence, parts[rank], chunk_grads[rank])
    _close(y, sum(parts).chunk(TP, 1)[rank], "reduce_scatter_to_sequence forward")
    _close(dx, torch.cat(chunk_grads, 1), "reduce_scatter_to_sequence backward")

    with pytest.raises(ValueError, match="has size 5, not divisible by the tensor-parallel size 2"):
        mappings.scatter_to_sequence(torch.zeros(2, 5, 3), group)


def _check_cross_entropy(group):
    rank = dist.get_rank(group)
    V = 11
    logits = _per_rank((3, 5, V), 0, 400) * 3
    target = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(1))
    target[0, :2] = -100
    target[2, 4] = -100
    # uneven columns as the model's head has them: rank 0 [0, 6), rank 1 [6, 11)
    start, stop = (0, 6) if rank == 0 else (6, V)
    for reduction in ("mean", "sum", "none"):
        full = logits.clone().requires_grad_()
        expected = F.cross_entropy(full.view(-1, V), target.view(-1), reduction=reduction)
        expected = expected.view(3, 5) if reduction == "none" else expected
        upstream = _per_rank(expected.shape, 0, 500)
        expected.backward(upstream)
        shard = logits[..., start:stop].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, target, group, vocab_start=start, reduction=reduction)
        loss.backward(upstream)
        _close(loss.detach(), expected.detach(), f"loss ({reduction})")
        _close(shard.grad, full.grad[..., start:stop], f"dlogits ({reduction})")
    # equal shards: vocab_start defaults to rank * width
    shard = logits[..., :10].chunk(TP, -1)[rank]
    expected = F.cross_entropy(logits[..., :10].reshape(-1, 10), target.clamp(max=9).view(-1))
    _close(vocab_parallel_cross_entropy(shard, target.clamp(max=9), group), expected, "loss (equal shards)")
    assert vocab_parallel_cross_entropy(shard, torch.full((3, 5), -100), group).isnan()
    with pytest.raises(ValueError, match="reduction must be"):
        vocab_parallel_cross_entropy(shard, target, group, reduction="max")


def _check_fresh_init(group):
    config = _config(use_gptcore_ops=False)
    torch.manual_seed(3)
    expected = shard_state_dict(GPT(config).state_dict(), dist.get_rank(group), TP)
    torch.manual_seed(3)
    state = parallelize(GPT(config), group).state_dict()
    assert all(torch.equal(state[name], expected[name]) for name in expected)


# ---- distributed: tp2 and tp2 with sequence parallelism against the single-process GPT --------


def _batches(seq_len, config):
    g = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        idx = torch.randint(0, config.vocab_size, (2, seq_len), generator=g)
        targets = torch.randint(0, config.vocab_size, (2, seq_len), generator=g)
        targets[0, -3:] = -100
        yield idx, targets


def _train_and_compare(group, config, sequence_parallel, recompute, seq_len):
    torch.manual_seed(0)
    model = GPT(config).train()
    tp_model = parallelize(copy.deepcopy(model), group, sequence_parallel=sequence_parallel)
    tp_model.recompute = recompute
    what = f"gptcore_ops={config.use_gptcore_ops} bias={config.bias} sequence_parallel={sequence_parallel}"
    what += f" recompute={recompute}"

    idx, _ = next(_batches(seq_len, config))
    with torch.no_grad():
        _close(tp_model(idx)[0], model(idx)[0], f"{what}: logits")

    # SGD, not AdamW: the k part of c_attn's bias has a zero gradient up to rounding (softmax is
    # shift-invariant), and Adam's normalization would turn that rounding into lr-sized steps.
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, tp_model)]
    for step, (idx, targets) in enumerate(_batches(seq_len, config)):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = model(idx, targets)[1]
        loss.backward()
        tp_loss = tp_model(idx, targets)[1]
        tp_loss.backward()
        reduce_sequence_parallel_grads(tp_model, group)
        _close(tp_loss.detach(), loss.detach(), f"{what}: step {step} loss")
        grads = gather_full_state_dict({n: p.grad for n, p in tp_model.named_parameters()}, group)
        for name, p in model.named_parameters():
            _close(grads[name], p.grad, f"{what}: step {step} grad of {name}")
        for opt in optimizers:
            opt.step()
    weights = gather_full_state_dict(tp_model.state_dict(), group)
    for name, expected in model.state_dict().items():
        _close(weights[name], expected, f"{what}: weight {name} after {STEPS} steps")


def _check_training(group, sequence_parallel):
    seq_len = 16 if sequence_parallel else 15
    for use_gptcore_ops in (True, False):
        _train_and_compare(group, _config(use_gptcore_ops=use_gptcore_ops), sequence_parallel, "none", seq_len)
    recompute = "full" if sequence_parallel else "selective"
    _train_and_compare(group, _config(bias=False), sequence_parallel, recompute, seq_len)


def _check_everything(rank, world_size):
    group = dist.group.WORLD
    _check_mappings(group)
    _check_cross_entropy(group)
    _check_fresh_init(group)
    _check_training(group, sequence_parallel=False)
    _check_training(group, sequence_parallel=True)
    alone, _ = dist.new_subgroups(group_size=1)  # tp1: every mapping is the identity
    _train_and_compare(alone, _config(use_gptcore_ops=False), True, "none", 15)
    with pytest.raises(ValueError, match=r"sequence length \(15\) must be divisible by the tensor-parallel size"):
        parallelize(GPT(_config()), group, sequence_parallel=True)(torch.zeros(2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"n_head \(3\) must be divisible by the tensor-parallel size \(2\)"):
        parallelize(GPT(_config(n_head=3, n_embd=96, use_gptcore_ops=False)), group)


def test_two_ranks():
    """One pair of processes for every distributed check: starting them costs more than the checks."""
    run_distributed(_check_everything, TP)


# ---- dropout streams of tensor-parallel regions ---------------------------------------------


def _gathered(x: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return out


def _check_dropout_streams(rank, world):
    torch.manual_seed(7)  # seeded alike, as the trainer seeds the tp ranks
    before = _gathered(torch.rand(4))
    with mappings.rank_dropout_rng(dist.group.WORLD):
        inside = _gathered(torch.rand(4))
    after = _gathered(torch.rand(4))
    assert torch.equal(before[0], before[1]) and torch.equal(after[0], after[1])  # the shared stream stays shared
    assert not torch.equal(inside[0], inside[1])  # each rank its own draws
    state = torch.get_rng_state()  # what an activation recompute restores before rerunning
    with mappings.rank_dropout_rng(dist.group.WORLD):
        first = torch.rand(4)
    torch.set_rng_state(state)
    with mappings.rank_dropout_rng(dist.group.WORLD):
        assert torch.equal(torch.rand(4), first)
    with mappings.rank_dropout_rng(dist.group.WORLD, enabled=False):
        off = _gathered(torch.rand(4))
    assert torch.equal(off[0], off[1])

    # A tp2 model with every dropout on, sequence parallel: recomputed blocks draw the masks again,
    # so full recompute gives the same loss and grads as none.
    config = _config(vocab_size=256, dropout=0.2, attn_dropout=0.2, use_gptcore_ops=False)
    torch.manual_seed(0)
    full = GPT(config).state_dict()
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    results = []
    for recompute in ("none", "full"):
        model = GPT(config)
        model.load_state_dict(full)
        model = parallelize(model, dist.group.WORLD, sequence_parallel=True).train()
        model.recompute = recompute
        torch.manual_seed(3)
        _, loss = model(idx, idx)
        loss.backward()
        reduce_sequence_parallel_grads(model, dist.group.WORLD)
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_none, grads_none), (loss_full, grads_full) = results
    assert torch.equal(loss_none, loss_full)
    for name, grad in grads_none.items():
        torch.testing.assert_close(grads_full[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    return True


def test_dropout_streams_per_rank():
    assert run_distributed(_check_dropout_streams, TP) == [True, True]


# ---- generation: tp2 decode with a head-sharded KV cache ------------------------------------


def _decode_tp2(rank, world):
    """Greedy tokens and cache layout of a tp2 model against the same GPT in one process."""
    group = dist.group.WORLD
    results = []
    for use_gptcore_ops in (True, False):
        torch.manual_seed(0)
        model = GPT(_config(use_gptcore_ops=use_gptcore_ops)).eval()
        tp_model = parallelize(copy.deepcopy(model), group).eval()
        prompts = [[5, 17, 199, 3], [42], [7, 7, 7, 7, 7, 7, 7]]  # lengths 4, 1, 7: prefills apart, decodes together
        expected = Generator(model, max_batch=4).generate(prompts, max_new_tokens=12, temperature=0)
        engine = Engine(tp_model, slots=4, cuda_graph=False)
        assert engine.cache.k[0].shape[1] == tp_model.config.n_head // TP  # this rank's heads only
        got = Generator(tp_model, max_batch=4).generate(prompts, max_new_tokens=12, temperature=0)
        assert [r.tokens for r in got] == [r.tokens for r in expected]
        assert all(len(r.tokens) == 12 for r in got)

        idx = torch.tensor([prompts[0]])
        caches = [KVCache(m, 1, 16, "cpu", torch.float32) for m in (model, tp_model)]
        logits = [
            m.forward_cached(idx, torch.arange(4), c.prefill_attend([0])) for m, c in zip((model, tp_model), caches)
        ]
        _close(logits[1], logits[0], f"gptcore_ops={use_gptcore_ops}: prefill logits")
        heads = slice(rank * 2, rank * 2 + 2)  # rank r caches heads [2r, 2r + 2) of 4
        _close(caches[1].k[1][:, :, :4], caches[0].k[1][:, heads, :4], f"gptcore_ops={use_gptcore_ops}: cached keys")
        results.append([r.tokens for r in got])
    return results


def test_tp2_greedy_decode_matches_single_process():
    """A parallelized model generates through generate.Engine with its KV cache sharded by heads:
    the same greedy tokens as one process, on both ranks."""
    per_rank = run_distributed(_decode_tp2, TP)
    assert per_rank[0] == per_rank[1]
