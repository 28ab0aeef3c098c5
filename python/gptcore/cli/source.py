"""The "model source" a command runs: --checkpoint, --tokenizer, --device, --dtype (and --lora), and
the one function that loads it; with --nproc-per-node N, the model split over N processes.

A command that runs over processes (generate, eval ppl, serve) starts with `launch(args)`: in the
process the user started, it runs N copies of the command through torchrun and returns their exit
code; in each copy (and in a single process) it returns None and the command goes on,
`with processes(args) as ranks:` (None in a single process) and `load(args, ..., ranks)`."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun

from gptcore.checkpoint import load_for_inference
from gptcore.cli.arguments import UsageError, add_device
from gptcore.core_decoder import WEIGHT_FORMATS
from gptcore.finetune.lora import apply_adapters, merge_and_unload
from gptcore.generate import Engine
from gptcore.parallel import inference
from gptcore.parallel.layout import launched_world_size

CHECKPOINT_HELP = "save folder, step_N/ folder, model file or HF folder"


def add_model_source(parser, checkpoint_help: str = CHECKPOINT_HELP, tokenizer: bool = True, lora: bool = False):
    """The model source arguments as a group of parser's; without lora, args.lora is None."""
    group = parser.add_argument_group("model source")
    group.add_argument("--checkpoint", required=True, help=checkpoint_help)
    if tokenizer:
        group.add_argument("--tokenizer", help="tokenizer to use instead of the checkpoint's")
    if lora:
        group.add_argument(
            "--lora",
            metavar="PATH",
            help="LoRA adapters merged into the model: a file, or a LoRA run's save or step folder",
        )
    else:
        parser.set_defaults(lora=None)
    add_device(group)
    return group


def add_processes(parser) -> None:
    """--nproc-per-node and --tensor-parallel: the model split over processes on this machine."""
    group = parser.add_argument_group("processes")
    group.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="run N processes on this machine (through torchrun; on CUDA one GPU each), the model split"
        " over them by tensor parallelism (default 1)",
    )
    group.add_argument(
        "--tensor-parallel",
        type=int,
        metavar="T",
        help="the tensor-parallel size: must be --nproc-per-node (the default), and divide the model's heads",
    )
    # Every rank meets the same errors (the same arguments, the same model): rank 0 reports them.
    parser.set_defaults(rank0_reports=True)


def add_weights(parser) -> None:
    """--weights: the format a CPU generation reads the weights in."""
    parser.add_argument(
        "--weights",
        choices=WEIGHT_FORMATS,
        help="on the CPU, the weights as the core's decode kernels read them: fp32 (default), bf16 (half the"
        " bytes) or int8 (a quarter, one scale per output row); activations stay float32",
    )


def engine(args, model, tokenizer, ranks: inference.Ranks | None) -> Engine:
    """The Engine of args.max_batch slots a command generates on: the lockstep engine of a model split
    over processes, else a local one (in the core on the CPU, with --weights)."""
    if ranks is None:
        return Engine(model, tokenizer, slots=args.max_batch, weights=args.weights)
    return inference.LockstepEngine(model, ranks, tokenizer, slots=args.max_batch)


def launch(args) -> int | None:
    """In the process the user started with --nproc-per-node N > 1: torchrun running N copies of the
    command, and their exit code. None in a single process and in each of the N copies; UsageError
    for sizes that do not go together."""
    n, tp = args.nproc_per_node, args.tensor_parallel
    if n < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {n}")
    world = launched_world_size()
    if getattr(args, "weights", None) is not None and max(n, world) > 1:
        raise UsageError(f"--weights {args.weights} runs in one process on the CPU; drop --nproc-per-node")
    if tp is not None and tp != max(n, world):
        if max(n, world) == 1:
            raise UsageError(f"--tensor-parallel {tp} splits the model over {tp} processes: add --nproc-per-node {tp}")
        raise UsageError(
            f"--tensor-parallel {tp} must equal --nproc-per-node {max(n, world)}: the model is split over every"
            " process (tensor parallelism only)"
        )
    if n == 1 or world > 1:
        return None
    if args.device.startswith("cuda:"):
        raise UsageError(f"--device {args.device}: each of several processes uses cuda:LOCAL_RANK; give --device cuda")
    # The machine's cores shared out (torchrun would give each process one thread, and say so).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    # The processes report their own errors; torchrun's log line for each would repeat them.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun(["--standalone", f"--nproc-per-node={n}", "-m", "gptcore", *args.argv])
    except ChildFailedError as e:
        # Once one process fails torchrun stops the others with SIGTERM: not failures of their own.
        codes = sorted({f.exitcode for f in e.failures.values() if f.exitcode != -signal.SIGTERM} or {1})
        if codes != [2]:  # 2: an error rank 0 has reported
            print(f"gptcore {args.command}: {len(e.failures)} of {n} processes failed", file=sys.stderr)
        return max(codes) if max(codes) > 0 else 1
    except SignalException as e:  # torchrun passed it to the processes, which have stopped
        return 0 if args.command == "serve" else 128 + e.sigval
    return 0


@contextlib.contextmanager
def processes(args):
    """This process's inference.Ranks among those torchrun started (process group joined, and left
    at the end), or None in a single process."""
    if launched_world_size() == 1:
        yield None
        return
    ranks = inference.join(args.device)
    try:
        yield ranks
    finally:
        inference.leave()


def load(args, need_tokenizer: bool, ranks: inference.Ranks | None = None):
    """(model, tokenizer or None) from the arguments add_model_source added; the rank's shard of the
    model when ranks are given."""
    return load_model(args.checkpoint, args.tokenizer, args.device, args.dtype, args.lora, need_tokenizer, ranks)


def load_model(checkpoint, tokenizer=None, device="auto", dtype="auto", lora=None, need_tokenizer=False, ranks=None):
    """(model in eval mode, tokenizer or None) for inference; ValueError when need_tokenizer and none
    was given or found beside the model. ranks (inference.Ranks): this rank's tensor-parallel shard
    of the model, on the rank's device. lora: adapters merged into the weights (merge_adapters)."""
    prepare = None if lora is None else functools.partial(merge_adapters, path=lora)
    if ranks is None:
        model, tokenizer = load_for_inference(checkpoint, tokenizer, device, dtype, prepare=prepare)
    else:
        model, tokenizer = inference.load_model(checkpoint, tokenizer, ranks, dtype, prepare=prepare)
    if need_tokenizer and tokenizer is None:
        raise ValueError(f"{checkpoint}: no tokenizer found beside the model; give --tokenizer")
    return model, tokenizer


def merge_adapters(model, path) -> None:
    """The LoRA adapters at path (a file, or a LoRA run's save or step folder) merged into the model's
    weights, leaving the plain model (its files and HF export hold no adapter tensors)."""
    apply_adapters(model, path)
    merge_and_unload(model)
