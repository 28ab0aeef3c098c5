"""The `gptcore` console script: a table of commands, a module each (`add_parser(commands)` adds its
parser, whose `run(args)` default runs it), and one error boundary.

`info`, `tokenizer train`, `preprocess`, `convert hf-import|hf-export|reshard|merge-lora`, `train`, `plan`,
`finetune [sft]|cls`, `generate`, `eval [ppl]|cls|mc`, `serve`."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from pathlib import Path

import gptcore
from gptcore.cli.arguments import RUN_OPTIONS, UsageError
from gptcore.cli.foreign import split_flags
from gptcore.parallel.layout import launched_rank
from gptcore.training.config import check_device, device_name

NAMES = ("info", "tokenizer", "preprocess", "convert", "train", "plan", "finetune", "generate", "eval", "serve")
COMMANDS = {name: import_module(f"gptcore.cli.{name}") for name in NAMES}  # command -> its module

# What a command raises for bad input, a missing or unreadable file, or a refused model or device:
# one line on stderr and exit code 2. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, gptcore.Error)  # training's ConfigError is a ValueError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptcore", description="GPT-2 / GPT-3 training on a fused C++/CUDA core")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    module = COMMANDS.get(argv[0]) if argv else None
    if hasattr(module, "DEFAULT_TASK") and not set(argv[1:2]) & {*module.TASKS, "-h", "--help"}:
        argv.insert(1, module.DEFAULT_TASK)  # `gptcore eval --checkpoint ...` is `gptcore eval ppl ...`
    # A training run takes Megatron's and PaddleNLP's flags too: out of argparse's way, translated by the command.
    flags = []
    if argv[:1] == ["train"] or argv[:2] == ["finetune", "sft"]:
        start = 1 if argv[0] == "train" else 2
        rest, flags = split_flags(argv[start:], RUN_OPTIONS)
        argv = argv[:start] + rest
    args = parser.parse_args(argv)
    args.foreign_flags = flags
    args.argv = argv  # what a command run over several processes passes on to each of them
    try:
        for name in ("out", "output"):  # a file or folder to write: into folders made for it
            if getattr(args, name, None):
                Path(getattr(args, name)).parent.mkdir(parents=True, exist_ok=True)
        if hasattr(args, "device"):  # the inference commands' --device (PaddleNLP's gpu is cuda)
            # over several processes each takes cuda:LOCAL_RANK (source.launch, inference.join check it)
            check = device_name if getattr(args, "nproc_per_node", 1) > 1 else check_device
            args.device = args.device if args.device == "auto" else check(args.device)
        return args.run(args) or 0
    except UsageError as e:
        parser.error(str(e))
    except EXPECTED_ERRORS as e:
        if launched_rank() == 0 or not getattr(args, "rank0_reports", False):
            print(f"gptcore {args.command}: error: {e}", file=sys.stderr)
        return 2
