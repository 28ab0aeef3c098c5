"""DataParallel and ZeRO stages 1, 2 and 3 on gloo (2 and 4 CPU processes) against single-process
training of the same model on the same global batches: losses, reduced grads and params over
several AdamW steps with clipping; gradient accumulation under no_sync; buckets launched while
the backward runs; bfloat16 params; an inf on one rank; sharded optimizer checkpoints; errors."""

import contextlib
import functools

import pytest
import torch
import torch.distributed as dist

from gptcore.model import GPT, GPTConfig
from gptcore.optim import AdamW
from gptcore.parallel.data_parallel import DataParallel, TorchCollectives, ZeroAdamW
from gptcore.parallel.testing import run_distributed

STEPS, GLOBAL_BATCH, SEQ = 3, 4, 16
CLIP = 1.0  # below the grad norms of these batches (2.5, 2.3, 1.9), so clipping is active
BUCKET_MB = 0.05  # about 13k grads a bucket: the tiny model makes 7 buckets
# eps 1e-6 instead of 1e-8: with eps tiny, Adam's first steps move a weight by about lr whatever its
# grad's size, so a grad that is zero up to rounding could move either way by lr.
OPTIM = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-6)


def make_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", vocab_size=100, n_positions=SEQ))


def tokens() -> torch.Tensor:
    """[STEPS, GLOBAL_BATCH, SEQ + 1]: each step's global batch."""
    return torch.randint(0, 100, (STEPS, GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1234))


def param_groups(model: GPT) -> list[dict]:
    """The trainer's groups: weight decay on 2-D weights only."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def clip_scale(norm: float, clip: float | None) -> float | None:
    """The trainer's clipping as AdamW's grad_scale: grads divided by it as they are read."""
    factor = 1.0 if clip is None else min(1.0, clip / (norm + 1e-6))
    return None if factor == 1.0 else 1.0 / factor


@functools.cache
def reference(clip: float | None) -> dict:
    """One process, the whole global batch in one backward."""
    model = make_model(0)
    optimizer = AdamW(param_groups(model), **OPTIM)
    out = {"losses": [], "norms": [], "grads": []}
    for batch in tokens():
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        grads = {name: p.grad.reshape(-1).clone() for name, p in model.named_parameters()}
        norm = float(torch.linalg.vector_norm(torch.cat(list(grads.values()))))
        optimizer.step(grad_scale=clip_scale(norm, clip))
        model.zero_grad(set_to_none=True)
        out["losses"].append(loss.item())
        out["norms"].append(norm)
        out["grads"].append(grads)
    out["params"] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return out


def build(rank: int, mode: str, group=None, bucket_mb: float = BUCKET_MB):
    """A model (initialized differently on each rank: DataParallel broadcasts rank 0's), its
    DataParallel and the optimizer for mode 'adamw', 'zero1', 'zero2' or 'zero3' (a unit per block)."""
    model = make_model(rank)
    units = list(model.transformer.h.values()) if mode == "zero3" else None
    dp = DataParallel(model, group, bucket_mb=bucket_mb, param_units=units)
    if mode == "adamw":
        return model, dp, AdamW(param_groups(model), **OPTIM)
    return model, dp, ZeroAdamW(dp, param_groups(model), stage=int(mode[-1]), **OPTIM)


def local_grads(model, optimizer) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """The reduced grads this rank holds: name -> [(first element, values)]."""
    names = {id(p): name for name, p in model.named_parameters()}
    if isinstance(optimizer, ZeroAdamW):
        grads = {}
        for piece in optimizer.pieces:
            grads.setdefault(names[id(piece.param)], []).append((piece.start, piece.grad.clone()))
        return grads
    return {name: [(0, p.main_grad.reshape(-1).clone())] for name, p in model.named_parameters()}


def train_worker(rank: int, world: int, mode: str, accum: int, clip: float | None) -> dict:
    """STEPS steps on this rank's slice of each global batch, in `accum` micro batches."""
    model, dp, optimizer = build(rank, mode)
    per_rank = GLOBAL_BATCH // world
    micro = per_rank // accum
    out = {"losses": [], "norms": [], "grads": []}
    for batch in tokens():
        local = batch[rank * per_rank : (rank + 1) * per_rank]
        loss_sum = torch.zeros(())
        for k in range(accum):
            x = local[k * micro : (k + 1) * micro]
            with dp.no_sync() if k < accum - 1 else contextlib.nullcontext():
                _, loss = model(x[:, :-1], x[:, 1:])
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        if isinstance(optimizer, ZeroAdamW):
            norm = optimizer.grad_norm()
        else:
            norm = float(torch.linalg.vector_norm(torch.cat([p.main_grad.reshape(-1) for p in model.parameters()])))
        out["grads"].append(local_grads(model, optimizer))
        optimizer.step(grad_scale=clip_scale(norm, clip))
        dp.zero_grad()
        dist.all_reduce(loss_sum)
        out["losses"].append(float(loss_sum) / world)
        out["norms"].append(norm)
    with dp.gathered() if mode == "zero3" else contextlib.nullcontext():
        out["params"] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return out


def check_against_reference(results: list[dict], clip: float | None, sharded: bool) -> None:
    ref = reference(clip)
    for out in results:
        torch.testing.assert_close(out["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["norms"], ref["norms"], rtol=1e-5, atol=1e-6)
        for name, value in ref["params"].items():
            torch.testing.assert_close(out["params"][name], value, rtol=1e-5, atol=1e-5, msg=name)
    for step, ref_grads in enumerate(ref["grads"]):
        covered = {name: torch.zeros(g.numel(), dtype=torch.int32) for name, g in ref_grads.items()}
        for out in results:
            for name, pieces in out["grads"][step].items():
                for start, values in pieces:
                    end = start + values.numel()
                    torch.testing.assert_close(values, ref_grads[name][start:end], rtol=1e-4, atol=1e-6, msg=name)
                    covered[name][start:end] += 1
        # ZeRO: each grad element on exactly one rank; otherwise every rank has them all.
        for name, count in covered.items():
            assert torch.all(count == (1 if sharded else len(results))), name


@pytest.mark.parametrize(
    "mode, accum, clip",
    [
        ("adamw", 1, None),
        ("adamw", 2, CLIP),
        ("zero1", 1, CLIP),
        ("zero2", 1, CLIP),
        ("zero2", 2, None),
        ("zero3", 1, CLIP),
        ("zero3", 2, CLIP),
    ],
)
def test_dp2_matches_single_process(mode, accum, clip):
    results = run_distributed(train_worker, 2, mode, accum, clip)
    check_against_reference(results, clip, sharded=mode != "adamw")


@pytest.mark.parametrize("mode", ["adamw", "zero2", "zero3"])
def test_dp4_matches_single_process(mode):
    results = run_distributed(train_worker, 4, mode, 1, CLIP)
    check_against_reference(results, CLIP, sharded=mode != "adamw")


def bf16_worker(rank: int, world: int, stage: int) -> dict:
    """ZeRO-2 or 3 over bfloat16 params (PyTorch's ops: gptcore's CPU kernels are float32)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=100, n_positions=SEQ, use_gptcore_ops=False)).bfloat16()
    units = list(model.transformer.h.values()) if stage == 3 else None
    dp = DataParallel(model, None, bucket_mb=BUCKET_MB, param_units=units)
    optimizer = ZeroAdamW(dp, param_groups(model), stage=stage, **OPTIM)
    gathered = dp.gathered if stage == 3 else contextlib.nullcontext
    grad_dtypes, norms = set(), []
    for batch in tokens():
        x = batch[rank * 2 : rank * 2 + 2]
        with dp.no_sync():  # two micro batches: the grads accumulate in float32
            (model(x[:1, :-1], x[:1, 1:])[1] / 2).backward()
        grad_dtypes |= {p.main_grad.dtype for p in model.parameters()}
        (model(x[1:, :-1], x[1:, 1:])[1] / 2).backward()
        norms.append(optimizer.grad_norm())
        optimizer.step(grad_scale=clip_scale(norms[-1], CLIP))
        dp.zero_grad()
    with gathered():
        for piece in optimizer.pieces:  # each param is its float32 master, rounded
            owned = piece.param.detach().reshape(-1)[piece.start : piece.start + piece.master.numel()]
            assert torch.equal(owned, piece.master.bfloat16())
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {"grad_dtypes": grad_dtypes, "norms": norms, "params": params}


def bf16_reference(clip: float) -> dict:
    """bf16_worker's training in plain PyTorch, one process: bfloat16 params and PyTorch ops, each
    rank's two sequences backpropagated one at a time, grads summed in float32 and averaged over the
    two ranks, clipped, torch.optim.AdamW on float32 masters, params the masters rounded."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=100, n_positions=SEQ, use_gptcore_ops=False)).bfloat16()
    params = list(model.parameters())
    masters = [p.detach().float().clone().requires_grad_() for p in params]
    groups = [
        {"params": [m for m in masters if m.dim() >= 2], "weight_decay": 0.1},
        {"params": [m for m in masters if m.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, **OPTIM)
    norms = []
    for batch in tokens():
        rank_grads = []
        for rank in range(2):
            summed = [torch.zeros_like(m) for m in masters]
            for row in (2 * rank, 2 * rank + 1):
                x = batch[row : row + 1]
                (model(x[:, :-1], x[:, 1:])[1] / 2).backward()
                for total, p in zip(summed, params):
                    total += p.grad.float()
                    p.grad = None
            rank_grads.append(summed)
        grads = [(a + b) / 2 for a, b in zip(*rank_grads)]
        norms.append(float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))))
        factor = min(1.0, clip / (norms[-1] + 1e-6))
        for m, g in zip(masters, grads):
            m.grad = g * factor
        optimizer.step()
        with torch.no_grad():
            for p, m in zip(params, masters):
                p.copy_(m)
    return {"norms": norms, "params": {n: p.detach().clone() for n, p in model.named_parameters()}}


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_bfloat16_params_keep_float32_grads_and_masters(stage):
    """Accumulation in float32 main_grad, float32 masters on each rank, bfloat16 params gathered."""
    rank0, rank1 = run_distributed(bf16_worker, 2, stage)
    assert rank0["grad_dtypes"] == {torch.float32}
    for name, value in rank0["params"].items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, rank1["params"][name])
    # Against float32 training: the same grad norms up to bfloat16's rounding.
    torch.testing.assert_close(rank0["norms"], reference(CLIP)["norms"], rtol=1e-2, atol=0)
    # Against the same bfloat16 training in plain PyTorch, element by element: within a bfloat16
    # rounding of the value plus a sixth of the ~3e-3 the params move in these steps (float32 sums
    # in another order flip some roundings), so a lost or doubled update shows.
    ref = bf16_reference(CLIP)
    torch.testing.assert_close(rank0["norms"], ref["norms"], rtol=5e-4, atol=0)
    init = dict(make_model(0).named_parameters())
    for name, value in rank0["params"].items():
        want = ref["params"][name].float()
        torch.testing.assert_close(value.float(), want, rtol=2**-8, atol=5e-4, msg=lambda m, name=name: f"{name}: {m}")
        assert (want - init[name].detach()).abs().max() > 1e-3, name  # the steps moved it


class CountingCollectives(TorchCollectives):
    """The default group, counting the reductions launched asynchronously."""

    def __init__(self):
        super().__init__(None)
        self.launched = 0

    def all_reduce(self, tensor, async_op=False):
        self.launched += async_op
        return super().all_reduce(tensor, async_op)


def overlap_worker(rank: int, world: int) -> dict:
    model = make_model(0)
    comm = CountingCollectives()
    dp = DataParallel(model, comm, bucket_mb=BUCKET_MB)
    seen = []  # buckets launched so far, as each param's grad arrives (after DataParallel's hook)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: seen.append(comm.launched))
    x = tokens()[0, rank * 2 : rank * 2 + 2]
    with dp.no_sync():
        model(x[:, :-1], x[:, 1:])[1].backward()
    out = {"no_sync": (list(seen), comm.launched)}
    seen.clear()
    model(x[:, :-1], x[:, 1:])[1].backward()
    return out | {"sync": seen, "buckets": len(dp.buckets)}


def test_buckets_reduce_during_backward():
    for out in run_distributed(overlap_worker, 2):
        assert out["buckets"] >= 4
        seen, launched = out["no_sync"]
        assert launched == 0 and not any(seen), "no_sync launched a reduction"
        seen = out["sync"]
        assert seen == sorted(seen) and seen[-1] == out["buckets"]
        # Reductions were in flight while most grads were still to come: launched as buckets filled,
        # not at the end of the backward.
        assert seen[len(seen) // 2] >= 2, seen
        assert seen[-2] >= out["buckets"] - 2, seen


def inf_worker(rank: int, world: int, mode: str) -> tuple[bool, bool]:
    model, dp, optimizer = build(rank, mode)
    gathered = dp.gathered if mode == "zero3" else contextlib.nullcontext
    with gathered():
        before = [p.detach().clone() for p in model.parameters()]
    x = tokens()[0, rank * 2 : rank * 2 + 2]
    model(x[:, :-1], x[:, 1:])[1].backward()
    if rank == 1:
        optimizer.pieces[0].grad[0] = float("inf")
    optimizer.step(grad_scale=1.0)
    with gathered():
        unchanged = all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return optimizer.found_inf, unchanged


@pytest.mark.parametrize("mode", ["zero1", "zero2", "zero3"])
def test_inf_on_one_rank_skips_the_step_on_all(mode):
    assert run_distributed(inf_worker, 2, mode) == [(True, True), (True, True)]


def checkpoint_worker(rank: int, world: int, folder: str) -> None:
    def step(model, dp, optimizer, batch):
        x = batch[rank * 2 : rank * 2 + 2]
        model(x[:, :-1], x[:, 1:])[1].backward()
        optimizer.step(grad_scale=clip_scale(optimizer.grad_norm(), CLIP))
        dp.zero_grad()

    data = tokens()
    model, dp, optimizer = build(rank, "zero2")
    step(model, dp, optimizer, data[0])
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f"{folder}/rank{rank}.pt")
    for batch in data[1:]:
        step(model, dp, optimizer, batch)

    resumed, resumed_dp, resumed_optimizer = build(rank + 10, "zero2")
    saved = torch.load(f"{folder}/rank{rank}.pt", weights_only=False)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    for batch in data[1:]:
        step(resumed, resumed_dp, resumed_optimizer, batch)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    dist.barrier()  # both files written
    other = torch.load(f"{folder}/rank{1 - rank}.pt", weights_only=False)["optimizer"]
    with pytest.raises(ValueError, match=f"saved with dp_rank {1 - rank} but here dp_rank is {rank}"):
        resumed_optimizer.load_state_dict(other)


def test_sharded_checkpoint_resumes_exactly(tmp_path):
    run_distributed(checkpoint_worker, 2, str(tmp_path))


class OneRank:
    """`Collectives` of a group of one: every collective is the identity."""

    rank, world = 0, 1

    def all_reduce(self, tensor, async_op=False):
        return _Done() if async_op else None

    def reduce_scatter(self, output, input, async_op=False):
        output.copy_(input)
        return _Done() if async_op else None

    def all_gather(self, output, input, async_op=False):
        output.copy_(input)
        return _Done() if async_op else None

    def broadcast(self, tensor, src=0):
        pass


class _Done:
    def wait(self):
        pass


@pytest.mark.parametrize("mode", ["adamw", "zero1", "zero2", "zero3"])
def test_one_rank_collectives_match_plain_training(mode):
    """Any object with the Collectives methods can carry the reductions (gptcore's communicator)."""
    model, dp, optimizer = build(0, mode, group=OneRank())
    for batch in tokens():
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        optimizer.step()
        dp.zero_grad()
    ref = reference(None)
    with dp.gathered() if mode == "zero3" else contextlib.nullcontext():
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), ref["params"][name], rtol=1e-5, atol=1e-5, msg=name)


class CountingOneRank(OneRank):
    def __init__(self):
        self.reduced = 0

    def all_reduce(self, tensor, async_op=False):
        self.reduced += 1
        return super().all_reduce(tensor, async_op)


def test_buckets_without_grads_are_reduced_at_the_end_of_the_backward():
    """A param the loss does not reach holds back its bucket, and those after it (buckets launch in
    order, so every rank issues the same collectives), until the end of the backward."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    comm = CountingOneRank()
    dp = DataParallel(model, comm, bucket_mb=64 * 64 * 4 / 2**20)  # a bucket per layer, last layer first
    assert [b.params for b in dp.buckets] == [[m.bias, m.weight] for m in model[::-1]]
    seen = []
    model[0].weight.register_post_accumulate_grad_hook(lambda p: seen.append(comm.reduced))
    model[2](model[0](torch.randn(3, 64))).sum().backward()  # model[1] unused
    assert seen == [1] and comm.reduced == 3
    assert torch.all(model[1].weight.main_grad == 0) and model[1].weight.grad is None
    assert model[0].weight.main_grad.abs().sum() > 0


def test_argument_errors():
    model = make_model(0)
    with pytest.raises(ValueError, match="bucket_mb must be positive"):
        DataParallel(model, OneRank(), bucket_mb=0)
    with pytest.raises(ValueError, match="all params must share one dtype and device"):
        DataParallel(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).double()), OneRank())
    dp = DataParallel(model, OneRank())
    with pytest.raises(ValueError, match="stage must be 1"):
        ZeroAdamW(dp, model.parameters(), stage=4)
    with pytest.raises(ValueError, match="stage 3 needs, and only it takes, a DataParallel built with param_units"):
        ZeroAdamW(dp, model.parameters(), stage=3)
    with pytest.raises(ValueError, match=r"in no group: \['transformer.ln_f.bias'"):
        ZeroAdamW(dp, [p for n, p in model.named_parameters() if not n.startswith("transformer.ln_f")])
    with pytest.raises(ValueError, match="not one DataParallel reduces"):
        ZeroAdamW(dp, [*model.parameters(), torch.zeros(3)])
    ZeroAdamW(dp, model.parameters(), stage=2)
    with pytest.raises(ValueError, match="already serves a ZeRO-2 optimizer"):
        ZeroAdamW(dp, model.parameters(), stage=1)


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_zero3_holds_a_block_at_a_time(recompute):
    """ZeRO-3 gathers each block just before its forward and its backward, launches the next
    block's gather then (the previous one's in the backward), and frees it after; a bucket's full
    grad buffer lives from its first grad until its reduce-scatter is done, a few at a time."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=100, n_positions=SEQ, n_layer=6))
    model.recompute = recompute
    dp = DataParallel(model, OneRank(), param_units=list(model.transformer.h.values()))
    optimizer = ZeroAdamW(dp, param_groups(model), stage=3, **OPTIM)
    blocks = list(model.transformer.h.values())
    seen, grads = [], []

    def record(phase, index, *args):
        gathered = [i for i, b in enumerate(dp.unit_buckets) if b.gathered]
        in_flight = [i for i, b in enumerate(dp.unit_buckets) if b.gathering is not None]
        grads.append(sum(b.grad is not None for b in dp.buckets))
        seen.append((phase, index, gathered, in_flight))

    for index, block in enumerate(blocks):  # run after DataParallel's hooks
        block.register_forward_pre_hook(functools.partial(record, "forward", index))
        for p in block.parameters():
            p.register_hook(functools.partial(record, "backward", index))
    x = tokens()[0]
    model(x[:, :-1], x[:, 1:])[1].backward()
    last = len(blocks) - 1
    forward = [(i, [i], [i + 1] if i < last else []) for i in range(len(blocks))]
    assert [s[1:] for s in seen if s[0] == "forward"][: len(blocks)] == forward
    for _, index, gathered, in_flight in (s for s in seen if s[0] == "backward"):
        assert index in gathered and set(gathered) <= {index, index + 1}, seen  # the block after: its last grad
        assert set(in_flight) <= {index - 1}, seen
    assert dp.resident_param_bytes() == sum(b.param_shard.nbytes for b in dp.buckets)  # all freed again
    assert max(grads) <= 4, grads  # the root's, the filling block's, two reducing (of 7)
    optimizer.step()


@pytest.mark.cuda
@pytest.mark.parametrize("stage", [2, 3])
def test_offload_on_cuda_keeps_pinned_host_state_and_matches_the_device_optimizer(stage):
    """A CUDA model: the offloaded masters and moments are pinned host tensors stepped by the CPU
    kernel, and the weights match the CUDA kernel's to float32 rounding."""
    weights = {}
    for offload in (False, True):
        model = make_model(0).cuda()
        units = list(model.transformer.h.values()) if stage == 3 else None
        dp = DataParallel(model, OneRank(), param_units=units)
        optimizer = ZeroAdamW(dp, param_groups(model), stage=stage, offload=offload, **OPTIM)
        for batch in tokens().cuda():
            model(batch[:, :-1], batch[:, 1:])[1].backward()
            optimizer.step()
            dp.zero_grad()
        if offload:
            assert all(m.device.type == "cpu" and m.is_pinned() for m in optimizer.masters)
            moments = [s["exp_avg"] for s in optimizer.optimizer.state.values()]
            assert moments and all(m.device.type == "cpu" for m in moments)
        with dp.gathered() if stage == 3 else contextlib.nullcontext():
            weights[offload] = {n: p.detach().cpu() for n, p in model.named_parameters()}
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-5, atol=1e-6, msg=name)
