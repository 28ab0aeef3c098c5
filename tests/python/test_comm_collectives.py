"""CommCollectives: gptcore's Communicator as DataParallel's and ZeroAdamW's `Collectives`. On CPU
the single backend: each method's values and handles, and DataParallel with AdamW / ZeroAdamW
stages 1 and 2 against AdamW alone. On a GPU (world 1, single and NCCL): the async collectives
run on a stream of their own after the current stream's producers and before its consumers,
without blocking the host, and the same training comparison."""

import time

import pytest
import torch
import torch.distributed as dist

from gptcore import _C
from gptcore.model import GPT, GPTConfig
from gptcore.optim import AdamW
from gptcore.parallel.comm import CommCollectives, Communicator, CommWork
from gptcore.parallel.data_parallel import DataParallel, ZeroAdamW

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS, BATCH, SEQ = 3, 2, 16
BUCKET_MB = 0.05  # the tiny model makes 7 buckets
OPTIM = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
SLEEP_CYCLES = 1_000_000_000  # torch.cuda._sleep: half a second or so on an H100


@pytest.fixture
def single():
    cc = CommCollectives(Communicator.single())
    yield cc
    cc.comm.close()


# --- each method on CPU tensors, the single backend ---


def test_single_is_rank_0_of_1(single):
    assert (single.rank, single.world) == (0, 1)
    assert repr(single) == "CommCollectives(Communicator(backend='single', rank=0, world=1))"


@pytest.mark.parametrize("async_op", [False, True])
def test_cpu_collectives_give_the_one_rank_s_values(single, async_op):
    def check(work):
        if async_op:
            assert isinstance(work, CommWork) and work.is_completed()
            work.wait()
        else:
            assert work is None

    x = torch.randn(12, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    check(single.all_reduce(y, async_op=async_op))
    assert torch.equal(y, x)
    out = torch.full_like(x, -1.0)
    check(single.reduce_scatter(out, x, async_op=async_op))  # output first, then input
    assert torch.equal(out, x)
    out = torch.full_like(x, -1.0)
    check(single.all_gather(out, x, async_op=async_op))
    assert torch.equal(out, x)
    y = x.clone()
    assert single.broadcast(y, src=0) is None
    assert torch.equal(y, x)
    assert not single._streams  # CPU tensors need no CUDA stream


def test_errors_come_from_the_communicator(single):
    with pytest.raises(_C.Error, match="'send' has 6 elements .* world x numel\\(recv\\)"):
        single.reduce_scatter(torch.ones(5), torch.ones(6))
    with pytest.raises(_C.Error, match="root = 1 is not a rank"):
        single.broadcast(torch.ones(3), src=1)


# --- DataParallel and ZeroAdamW over it against AdamW alone ---


def make_model(device: str) -> GPT:
    torch.manual_seed(0)
    # gptcore's CUDA attention takes float16 / bfloat16 only: float32 on CUDA runs PyTorch's ops.
    config = GPTConfig.preset("tiny", vocab_size=100, n_positions=SEQ, use_gptcore_ops=device == "cpu")
    return GPT(config).to(device)


def batches(device: str) -> torch.Tensor:
    return torch.randint(0, 100, (STEPS, BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1)).to(device)


def train(device: str, collectives: CommCollectives | None, mode: str) -> dict[str, torch.Tensor]:
    """STEPS AdamW steps: mode 'plain' (AdamW alone), 'adamw' (DataParallel + AdamW), 'zero1', 'zero2'."""
    model = make_model(device)
    dp = None if mode == "plain" else DataParallel(model, collectives, bucket_mb=BUCKET_MB)
    if mode in ("plain", "adamw"):
        optimizer = AdamW(model.parameters(), **OPTIM)
    else:
        optimizer = ZeroAdamW(dp, model.parameters(), stage=int(mode[-1]), **OPTIM)
    for x in batches(device):
        model(x[:, :-1], x[:, 1:])[1].backward()
        optimizer.step()
        if dp is None:
            model.zero_grad(set_to_none=True)
        else:
            dp.zero_grad()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def check_params(params, reference, tol):
    assert params.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(params[name], value, rtol=tol, atol=tol, msg=name)
    init = make_model("cpu").state_dict()
    assert all(not torch.equal(value.cpu(), init[name]) for name, value in reference.items())  # all trained


@pytest.mark.parametrize("mode", ["adamw", "zero1", "zero2"])
def test_cpu_training_over_the_single_backend_matches_adamw(single, mode):
    check_params(train("cpu", single, mode), train("cpu", None, "plain"), tol=0)  # exactly: world 1


# --- CUDA: the communication stream, world 1 on the single and NCCL backends ---


@pytest.fixture(params=["single", "nccl"])
def cuda_collectives(request, tmp_path):
    if request.param == "single":
        cc = CommCollectives(Communicator.single())
        yield cc
        cc.comm.close()
        return
    if not (_C.build_info()["nccl_version"] > 0 and dist.is_nccl_available()):
        pytest.skip("gptcore or torch was built without NCCL")
    torch.cuda.set_device(0)
    # The group only carries the NCCL unique id through its store: gloo will do.
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        cc = CommCollectives.create(device=0)
        assert (cc.rank, cc.world, cc.comm.backend) == (0, 1, "nccl")
        yield cc
        torch.cuda.synchronize()
        cc.comm.close()
    finally:
        dist.destroy_process_group()


def _issue(cc: CommCollectives, op: str, out: torch.Tensor, inp: torch.Tensor) -> CommWork:
    """op from inp into out, asynchronously (all_reduce in place: on out, a copy of inp)."""
    if op == "all_reduce":
        out.copy_(inp)
        return cc.all_reduce(out, async_op=True)
    return getattr(cc, op)(out, inp, async_op=True)


def _warm_up(cc: CommCollectives, op: str, inp: torch.Tensor) -> None:
    """One call done, so that the timed one does not wait on first-use setup (NCCL, lazy kernels)."""
    _issue(cc, op, torch.empty_like(inp), inp).wait()
    torch.cuda._sleep(1)
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather"])
def test_async_op_follows_the_producer_and_precedes_the_consumer(cuda_collectives, op):
    src = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
    inp, out = torch.zeros_like(src), torch.full_like(src, -1.0)
    _warm_up(cuda_collectives, op, src)
    torch.cuda._sleep(SLEEP_CYCLES)  # the current stream is busy: inp's producer runs late
    inp.copy_(src)
    work = _issue(cuda_collectives, op, out, inp)
    assert not work.is_completed()  # returned at once, before the GPU got to it
    work.wait()
    assert not work.is_completed()  # wait() queued a dependency; it did not block the host
    got = out.clone()  # the consumer, on the current stream
    assert torch.equal(got, src)


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather"])
def test_async_op_overlaps_the_current_stream(cuda_collectives, op):
    src = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
    out = torch.full_like(src, -1.0)
    _warm_up(cuda_collectives, op, src)
    work = _issue(cuda_collectives, op, out, src)
    torch.cuda._sleep(SLEEP_CYCLES)  # the backward goes on, on the current stream
    deadline = time.monotonic() + 10.0
    while not work.is_completed() and time.monotonic() < deadline:
        time.sleep(1e-3)
    assert work.is_completed() and not torch.cuda.current_stream().query()  # done while the sleep runs
    work.wait()
    assert torch.equal(out, src)


@pytest.mark.cuda
def test_sync_ops_are_ordered_on_the_current_stream(cuda_collectives):
    src = torch.arange(1000, dtype=torch.float32, device="cuda")
    x, out = torch.zeros_like(src), torch.full_like(src, -1.0)
    _warm_up(cuda_collectives, "all_gather", src)
    torch.cuda._sleep(SLEEP_CYCLES)
    x.copy_(src)
    assert cuda_collectives.all_gather(out, x) is None
    x.zero_()  # after the gather, on the current stream
    torch.testing.assert_close(out, src, rtol=0, atol=0)
    y = src.clone()
    cuda_collectives.broadcast(y, src=0)
    assert torch.equal(y, src)
    assert list(cuda_collectives._streams) == [torch.device("cuda", 0)]  # one communication stream


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["adamw", "zero1", "zero2"])
def test_cuda_training_matches_adamw(cuda_collectives, mode):
    check_params(train("cuda", cuda_collectives, mode), train("cuda", None, "plain"), tol=1e-5)
