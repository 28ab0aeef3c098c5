"""Argument groups more than one command takes, and the error a command raises for a bad combination."""

from __future__ import annotations

DEVICE_HELP = "auto, cpu, cuda, cuda:N"
DTYPE_HELP = "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16"


class UsageError(Exception):
    """Arguments that parse but do not go together: answered like argparse's own errors (usage, exit 2)."""


def add_device(parser, device_help: str = DEVICE_HELP, dtype: bool = True) -> None:
    parser.add_argument("--device", default="auto", help=device_help)
    if dtype:
        parser.add_argument("--dtype", default="auto", help=DTYPE_HELP)


# The options of a training run's parser (add_run_config) and how many values each takes: any other
# --flag on its command line is another tool's (gptcore.cli.foreign).
RUN_OPTIONS = {"--config": 1, "--nproc-per-node": 1, "--help": 0}


def add_run_config(parser, default_config: str) -> None:
    """A training run: a YAML config, key=value overrides, and how many processes run it. Foreign
    flags (`--max_steps 10`) are taken out of the command line before it is parsed (split_run_flags)."""
    parser.add_argument(
        "--config", default=default_config, help=f"a YAML file or a shipped config name (default: {default_config})"
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="run N processes on this machine (through torchrun): data parallel, or the layout the config's"
        " tensor_parallel and pipeline_parallel ask for (default 1)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def add_classification_keys(parser) -> None:
    """Where a classification data file keeps its texts and labels."""
    parser.add_argument("--text-key", help="the text column or key (default: text, else sentence)")
    parser.add_argument("--label-key", default="label", help="the label column or key (default: label)")
