"""The "model source" a command runs: --checkpoint, --tokenizer, --device, --dtype (and --lora), and
the one function that loads it, where loading over several processes will go."""

from __future__ import annotations

import functools

from gptcore.checkpoint import load_for_inference
from gptcore.cli.arguments import add_device
from gptcore.finetune.lora import apply_adapters, merge_and_unload

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


def load(args, need_tokenizer: bool):
    """(model, tokenizer or None) from the arguments add_model_source added."""
    return load_model(args.checkpoint, args.tokenizer, args.device, args.dtype, args.lora, need_tokenizer)


def load_model(checkpoint, tokenizer=None, device="auto", dtype="auto", lora=None, need_tokenizer=False):
    """(model in eval mode, tokenizer or None) for inference; ValueError when need_tokenizer and none
    was given or found beside the model."""
    prepare = None if lora is None else functools.partial(merge_adapters, path=lora)
    model, tokenizer = load_for_inference(checkpoint, tokenizer, device, dtype, prepare=prepare)
    if need_tokenizer and tokenizer is None:
        raise ValueError(f"{checkpoint}: no tokenizer found beside the model; give --tokenizer")
    return model, tokenizer


def merge_adapters(model, path) -> None:
    """The LoRA adapters at path (a file, or a LoRA run's save or step folder) merged into the model's
    weights, leaving the plain model (its files and HF export hold no adapter tensors)."""
    apply_adapters(model, path)
    merge_and_unload(model)
