"""gptcore.parallel.comm: the single-process backend on CPU tensors (values and errors), and on a
GPU the NCCL backend against torch.distributed's NCCL collectives (world 1; world 2 with two GPUs)."""

import contextlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gptcore import _C
from gptcore.parallel import comm as comm_module
from gptcore.parallel.comm import REDUCE_OPS, Communicator

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DTYPES = [*FLOATS, torch.int32, torch.int64, torch.uint8, torch.int8]
HAS_NCCL = _C.build_info()["nccl_version"] > 0
TORCH_OPS = {
    "sum": dist.ReduceOp.SUM,
    "avg": dist.ReduceOp.AVG,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "prod": dist.ReduceOp.PRODUCT,
}
nccl = pytest.mark.skipif(
    not HAS_NCCL or not dist.is_nccl_available(), reason="gptcore or torch was built without NCCL"
)


def _values(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(device, dtype)
    lo, hi = (0, 100) if dtype == torch.uint8 else (-50, 50)
    return torch.randint(lo, hi, shape, generator=g).to(device, dtype)


@pytest.fixture
def single():
    comm = Communicator.single()
    yield comm
    comm.close()


# --- the single backend on CPU tensors ---


def test_single_is_rank_0_of_1(single):
    assert (single.rank, single.world, single.backend, single.device) == (0, 1, "single", None)
    assert repr(single) == "Communicator(backend='single', rank=0, world=1)"


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_collectives_leave_the_one_rank_s_values(single, dtype):
    x = _values((5, 3), dtype)
    for op in REDUCE_OPS:
        y = x.clone()
        assert single.all_reduce(y, op) is y
        assert torch.equal(y, x)
        out = torch.zeros_like(x)
        assert single.reduce_scatter(out, x, op) is out
        assert torch.equal(out, x)
    out = torch.zeros_like(x)
    assert single.all_gather(out, x) is out
    assert torch.equal(out, x)
    flat = torch.zeros(x.numel(), dtype=dtype)  # only the element counts must agree
    assert torch.equal(single.all_gather(flat, x), x.flatten())
    y = x.clone()
    assert torch.equal(single.broadcast(y, src=0), x)


def test_single_empty_tensors(single):
    """Empty views at the start of filled buffers: the collectives return them and write nothing."""
    buffer, out_buffer = torch.arange(8.0), torch.full((8,), -1.0)
    x, out = buffer[:0].view(0, 4), out_buffer[:0].view(0, 4)
    assert single.all_reduce(x) is x and x.shape == (0, 4)
    assert single.all_gather(out, x) is out and out.shape == (0, 4)
    assert torch.equal(buffer, torch.arange(8.0)) and torch.equal(out_buffer, torch.full((8,), -1.0))


def test_single_send_recv_to_itself_in_a_group(single):
    a, b = _values((4,), torch.float32), _values((2, 3), torch.int64, seed=1)
    ra, rb = torch.zeros_like(a), torch.zeros_like(b)
    with single.group():
        single.send(a, dst=0)
        with single.group():  # nested: the outer group issues
            single.recv(ra, src=0)
        single.send(b.clone(), dst=0)  # a temporary: the group keeps it alive until it is issued
        single.recv(rb, src=0)
        assert not ra.any()
    assert torch.equal(ra, a) and torch.equal(rb, b)


def test_single_send_outside_a_group_is_refused(single):
    with pytest.raises(_C.Error, match="gc_comm_send: .* both must sit in one group"):
        single.send(torch.ones(3), dst=0)
    with pytest.raises(_C.Error, match="gc_comm_recv: .* both must sit in one group"):
        single.recv(torch.ones(3), src=0)


def test_single_group_mismatches(single):
    with pytest.raises(_C.Error, match="1 send\\(s\\) to rank 0 but 0 recv\\(s\\)"), single.group():
        single.send(torch.ones(3), dst=0)
    with (
        pytest.raises(_C.Error, match="send #0 has 3 float32 elements but the recv it matches has 3 float64"),
        single.group(),
    ):
        single.send(torch.ones(3), dst=0)
        single.recv(torch.ones(3, dtype=torch.float64), src=0)


def test_single_group_closes_when_its_body_raises(single):
    with pytest.raises(KeyError), single.group():
        single.send(torch.ones(3), dst=0)  # unmatched, but the KeyError is what gets reported
        raise KeyError("body")
    a, r = torch.arange(3.0), torch.zeros(3)
    with single.group():  # the earlier group was closed and dropped
        single.send(a, dst=0)
        single.recv(r, src=0)
    assert torch.equal(r, a)
    with pytest.raises(_C.Error, match="no group is open"):
        single._comm.group_end()


def test_errors_name_the_argument(single):
    x = torch.ones(6)
    with pytest.raises(_C.Error, match="gc_comm_all_gather: 'recv' has 4 elements .* needs world x numel\\(send\\)"):
        single.all_gather(torch.ones(4), x)
    with pytest.raises(_C.Error, match="gc_comm_reduce_scatter: 'send' has 6 elements .* world x numel\\(recv\\)"):
        single.reduce_scatter(torch.ones(5), x)
    with pytest.raises(_C.Error, match="'recv' has dtype int64 but 'send' has float32"):
        single.all_gather(torch.ones(6, dtype=torch.int64), x)
    with pytest.raises(_C.Error, match="not contiguous; pass a contiguous tensor"):
        single.all_reduce(torch.ones(3, 4).t())
    with pytest.raises(_C.Error, match="'send' has dtype uint16; expected one of: float32, float16, bfloat16"):
        single.all_reduce(torch.ones(3, dtype=torch.uint16))
    with pytest.raises(_C.Error, match="root = 1 is not a rank of this single communicator"):
        single.broadcast(x, src=1)
    with pytest.raises(_C.Error, match="peer = 2 is not a rank"), single.group():
        single.send(x, dst=2)
    with pytest.raises(ValueError, match="unknown reduce op 'mean'; expected one of sum, avg, max, min, prod"):
        single.all_reduce(x, "mean")
    with pytest.raises(TypeError, match="'tensor' has dtype torch.bool"):
        single.all_reduce(torch.ones(3, dtype=torch.bool))


def test_closed_communicator():
    comm = Communicator.single()
    comm.close()
    with pytest.raises(_C.Error, match="this communicator was destroyed"):
        comm.all_reduce(torch.ones(2))


@pytest.mark.skipif(HAS_NCCL, reason="this build has NCCL")
def test_without_nccl_the_nccl_calls_say_so():
    with pytest.raises(_C.Error, match="gc_comm_unique_id: this gptcore was built without NCCL"):
        _C.comm_unique_id()
    with pytest.raises(_C.Error, match="gc_comm_init_nccl: this gptcore was built without NCCL"):
        _C.Comm.nccl(bytes(128), 0, 1, 0)


def test_nccl_arguments_are_checked_before_nccl():
    with pytest.raises(ValueError, match="must be 128 bytes"):
        _C.Comm.nccl(b"short", 0, 1, 0)
    with pytest.raises(_C.Error, match="rank = 1 is outside \\[0, world\\)"):
        _C.Comm.nccl(bytes(128), 1, 1, 0)


def test_the_unique_id_travels_through_the_store(monkeypatch):
    store = dist.HashStore()
    monkeypatch.setattr(comm_module._C, "comm_unique_id", lambda: bytes(range(128)))
    assert comm_module._share_unique_id(store, "a", 0) == bytes(range(128))
    assert comm_module._share_unique_id(store, "a", 1) == bytes(range(128))  # another rank, same key


def test_a_failure_on_rank_0_reaches_the_other_ranks(monkeypatch):
    def fails():
        raise _C.Error("no id today")

    store = dist.HashStore()
    monkeypatch.setattr(comm_module._C, "comm_unique_id", fails)
    with pytest.raises(_C.Error, match="no id today"):
        comm_module._share_unique_id(store, "b", 0)
    with pytest.raises(RuntimeError, match="rank 0 of the group could not make an NCCL unique id"):
        comm_module._share_unique_id(store, "b", 1)  # instead of waiting on the store


def test_create_needs_torch_distributed():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(RuntimeError, match="call torch.distributed.init_process_group first"):
        Communicator.create()


# --- CUDA: the single backend on the GPU, NCCL against torch.distributed ---


@pytest.mark.cuda
def test_single_on_cuda_copies_on_the_current_stream(single):
    x = _values((1 << 20,), torch.bfloat16, "cuda")
    out = torch.empty_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        single.all_gather(out, x)
    s.synchronize()
    assert torch.equal(out, x)


@contextlib.contextmanager
def _process_group(init_file, rank, world, device):
    torch.cuda.set_device(device)
    store = dist.FileStore(str(init_file), world)
    dist.init_process_group("nccl", store=store, rank=rank, world_size=world, device_id=torch.device("cuda", device))
    try:
        yield
    finally:
        dist.destroy_process_group()


def _check_against_torch(comm: Communicator):
    """Every collective of `comm` against torch.distributed's NCCL on the default group."""
    rank, world, dev = comm.rank, comm.world, comm.device
    for dtype in DTYPES:
        x = _values((world * 6, 5), dtype, dev, seed=rank)
        for op in REDUCE_OPS:
            if op == "avg" and not dtype.is_floating_point:
                continue  # torch takes AVG for floating dtypes only
            ours, theirs = x.clone(), x.clone()
            comm.all_reduce(ours, op)
            dist.all_reduce(theirs, TORCH_OPS[op])
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
            ours, theirs = torch.empty(6, 5, dtype=dtype, device=dev), torch.empty(6, 5, dtype=dtype, device=dev)
            comm.reduce_scatter(ours, x, op)
            dist.reduce_scatter_tensor(theirs, x, TORCH_OPS[op])
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        ours, theirs = (torch.empty(world * x.shape[0], 5, dtype=dtype, device=dev) for _ in range(2))
        comm.all_gather(ours, x)
        dist.all_gather_into_tensor(theirs, x)
        assert torch.equal(ours, theirs)
        for src in range(world):
            ours, theirs = x.clone(), x.clone()
            comm.broadcast(ours, src)
            dist.broadcast(theirs, dist.get_global_rank(dist.group.WORLD, src))
            assert torch.equal(ours, theirs)
    # A ring: each rank sends to the next and receives from the previous.
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    x = _values((1000,), torch.float32, dev, seed=rank)
    got = torch.empty_like(x)
    with comm.group():
        comm.send(x, nxt)
        comm.recv(got, prv)
    assert torch.equal(got, _values((1000,), torch.float32, dev, seed=prv))
    torch.cuda.synchronize()


@pytest.fixture
def nccl_group(tmp_path):
    with _process_group(tmp_path / "store", 0, 1, 0):
        yield


@pytest.mark.cuda
@nccl
def test_nccl_world_1_matches_torch(nccl_group):
    comm = Communicator.create(device=0)
    assert (comm.rank, comm.world, comm.backend, comm.device) == (0, 1, "nccl", torch.device("cuda", 0))
    _check_against_torch(comm)
    second = Communicator.create()  # a second communicator over the group takes a fresh id
    assert second.world == 1
    second.close()
    comm.close()


@pytest.mark.cuda
@nccl
def test_nccl_rejects_cpu_tensors_and_other_devices(nccl_group):
    comm = Communicator.create(device=0)
    with pytest.raises(_C.Error, match="'send' is a CPU tensor but an NCCL communicator moves CUDA tensors"):
        comm.all_reduce(torch.ones(4))
    if torch.cuda.device_count() > 1:
        with pytest.raises(_C.Error, match="is on cuda:1 but the communicator was created on cuda:0"):
            comm.all_reduce(torch.ones(4, device="cuda:1"))
    with pytest.raises(ValueError, match="runs on a CUDA device"):
        Communicator.create(device="cpu")
    comm.close()


def _world_2_worker(rank, init_file):
    with _process_group(init_file, rank, 2, rank):
        comm = Communicator.create(device=rank)
        _check_against_torch(comm)
        comm.close()


@pytest.mark.cuda
@nccl
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_world_2_matches_torch(tmp_path):
    mp.spawn(_world_2_worker, args=(tmp_path / "store",), nprocs=2, join=True)
