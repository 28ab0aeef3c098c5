"""Generation, evaluation and serving of one model split over the processes torchrun started.

Every rank holds its tensor-parallel shard of the model (`parallelize`; the KV cache of a
generate.Engine then holds the rank's heads) and every forward needs every rank, so the ranks run
in lockstep. Evaluation needs nothing more: every rank scores the same windows and gets the same,
gathered, logits. Generation and serving are driven by rank 0, the leader, which alone reads stdin
or answers HTTP clients: `LockstepEngine` is an Engine whose add, cancel and step are broadcast
before they run (on a gloo group, as Python objects: prompts and sampling parameters, a slot, a
step), and the other ranks, the followers, replay them on their own engines (`follow`) until the
leader says stop (`release`). The leader picks a concrete seed for every request that has none, so
the ranks draw the same tokens from the same logits, and the engines stay identical.

    ranks = join("auto")                                   # under torchrun
    model, tokenizer = load_model(source, None, ranks)
    engine = LockstepEngine(model, ranks, tokenizer)
    if ranks.is_leader:
        with engine.leading():                             # followers released at the end
            Generator(model, tokenizer, engine=engine).generate(prompts)
    else:
        engine.follow()
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from gptcore.checkpoint import load_for_inference, load_shard_for, resolve
from gptcore.checkpoint.resolve import tokenizer_for
from gptcore.generate import Engine, Request
from gptcore.model import DTYPES, GPT
from gptcore.parallel.tensor_parallel import parallelize

LEADER = 0
# A leader may wait for a prompt or a client for days; the followers wait in a broadcast meanwhile.
CONTROL_TIMEOUT = timedelta(days=3650)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks: its rank and device, the tensor-parallel group the
    model is split over (all ranks) and the gloo group the leader broadcasts on."""

    rank: int
    size: int
    device: torch.device
    group: object
    control: object

    @property
    def is_leader(self) -> bool:
        return self.rank == LEADER


def join(device: str = "auto") -> Ranks:
    """Join the processes torchrun started: a gloo process group on the CPU, nccl on CUDA (device
    cuda:LOCAL_RANK; "auto": CUDA when visible). ValueError for a device the ranks cannot share."""
    if "RANK" not in os.environ:
        raise ValueError("several processes are started by torchrun: give --nproc-per-node")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.device(device)
    if where.type == "cuda":
        if where.index is not None:
            raise ValueError(f"--device {device}: with several processes each uses cuda:LOCAL_RANK; give --device cuda")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: no CUDA device is visible; use --device cpu")
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(where)
    elif where.type != "cpu":
        raise ValueError(f"device {device}: choose from auto, cpu, cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), where, dist.group.WORLD, control)


def leave() -> None:
    """Leave the process group join joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def load_model(source, tokenizer, ranks: Ranks, dtype: str = "auto", prepare=None):
    """(this rank's shard of the model in eval mode, tokenizer or None), on the rank's device in
    dtype ("auto": bf16 on CUDA, fp32 on the CPU), from anything checkpoint.load_for_inference reads.
    A sharded checkpoint saved at this tensor-parallel size (no pipeline) is read one file a rank;
    any other source is read whole (a sharded one merged), prepare(model) run on it (LoRA adapters
    merged: checkpoint.load_for_inference), and cut by parallelize. ValueError when the model does
    not split over the ranks."""
    cuda = ranks.device.type == "cuda"
    dtype = ("bf16" if cuda else "fp32") if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose from auto, {', '.join(DTYPES)}")
    kind, path = resolve(source)
    if kind == "sharded" and prepare is None:
        model = _load_shard(path, ranks, use_gptcore_ops=cuda or dtype == "fp32")
        tokenizer = tokenizer_for(model.config, kind, path, tokenizer)
    else:  # read and split on the CPU, cast on the device; fp32 picks gptcore's ops, as CUDA does
        model, tokenizer = load_for_inference(source, tokenizer, "cpu", "fp32" if cuda else dtype, prepare=prepare)
        parallelize(model, ranks.group)
    return model.to(device=ranks.device, dtype=DTYPES[dtype]).eval(), tokenizer


def _load_shard(folder, ranks: Ranks, use_gptcore_ops: bool) -> GPT:
    """The rank's shard of a sharded checkpoint's model: its own file when the checkpoint has this
    layout (tp = ranks, pp = 1), else cut from the merged checkpoint; the model built without
    storage (meta), parallelized, then given the shard."""
    overrides = dict(use_gptcore_ops=use_gptcore_ops, dropout=0.0, attn_dropout=0.0)
    state, config = load_shard_for(folder, ranks.size, 1, ranks.rank, 0, **overrides)
    with torch.device("meta"):
        model = parallelize(GPT(config), ranks.group)
    model.to_empty(device="cpu")
    model.load_state_dict(state)
    return model


class LockstepEngine(Engine):
    """A generate.Engine on every rank of `ranks`, kept identical: the leader's add, cancel and step
    are broadcast before they run, the followers replay them in `follow`. No CUDA graphs: a
    captured step would hold the group's collectives."""

    def __init__(self, model, ranks: Ranks, tokenizer=None, slots: int = 16, max_len: int | None = None):
        super().__init__(model, tokenizer, slots, max_len, cuda_graph=False)
        self.ranks = ranks

    # ---- the leader ----------------------------------------------------------------------------
    def add(self, *requests: Request) -> None:
        if self.ranks.is_leader:
            for r in requests:  # each rank would seed a seedless request differently
                if r.params.seed is None:
                    r.params = dataclasses.replace(r.params, seed=secrets.randbits(63))
            self._tell(("add", [(r.prompt, r.params) for r in requests]))
        super().add(*requests)

    def cancel(self, request: Request) -> None:
        held = request.result is None and 0 <= request.slot < len(self.slots) and self.slots[request.slot] is request
        if self.ranks.is_leader and held:  # only a cancel that frees a slot: the followers cancel by slot
            self._tell(("cancel", request.slot))
        super().cancel(request)

    def step(self) -> None:
        if self.ranks.is_leader and self.active:
            self._tell(("step", None))
        super().step()

    def release(self) -> None:
        """Tell the followers to stop following."""
        self._tell(("stop", None))

    @contextlib.contextmanager
    def leading(self):
        """The leader's block of work; the followers are released at its end, however it ends."""
        try:
            yield self
        finally:
            self.release()

    def _tell(self, message) -> None:
        dist.broadcast_object_list([message], src=LEADER, group=self.ranks.control)

    # ---- a follower ----------------------------------------------------------------------------
    def follow(self) -> None:
        """Replay the leader's calls until it releases this rank. SIGINT and SIGTERM, which torchrun
        sends every rank at once, are left to the leader, which shuts down and then releases us."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                message = [None]
                dist.broadcast_object_list(message, src=LEADER, group=self.ranks.control)
                what, arg = message[0]
                if what == "stop":
                    return
                try:
                    if what == "add":
                        self.add(*(Request(prompt, params) for prompt, params in arg))
                    elif what == "cancel" and self.slots[arg] is not None:
                        self.cancel(self.slots[arg])
                    elif what == "step":
                        self.step()
                except ValueError:  # a refused request: the leader had the same error, and nothing changed
                    pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
