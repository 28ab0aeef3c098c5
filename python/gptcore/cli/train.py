"""`gptcore train`: pretraining from a YAML config (also `gptcore finetune sft`), in one process or,
with --nproc-per-node N, in N through torchrun."""

from __future__ import annotations

import sys

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun

from gptcore.cli.arguments import add_run_config
from gptcore.cli.foreign import report, translate_run
from gptcore.data import load_tokenizer
from gptcore.generate import sample
from gptcore.parallel.layout import launched_rank
from gptcore.training import ConfigError, Trainer, launched_world_size, load_config


def add_parser(commands) -> None:
    train = commands.add_parser(
        "train",
        help="pretrain a GPT from a YAML config (default: a tiny model on the built-in corpus)",
        description="Pretrain a GPT. The config is a flat YAML file of TrainConfig keys (configs/*.yaml); each"
        " key=value after it overrides one key (values parsed as YAML: lr=3e-4 save=out/run1 data_path=null)."
        " Megatron-LM's and PaddleNLP's flags (--train-iters 10, --max_steps 10, ...) are taken as their keys,"
        " each translation printed (README: Coming from Megatron / PaddleNLP / ModelScope / MindFormers)."
        " Without data_path, trains on the built-in default corpus. Resumes from the newest checkpoint in"
        " `load` (or `save`) when there is one; SIGTERM finishes the step, saves and exits.",
    )
    add_run_config(train, default_config="tiny-cpu")
    train.set_defaults(run=run)


def run(args) -> int:
    """Train (args.command "train") or finetune ("finetune": init_from must name the model)."""
    say = report if launched_rank() == 0 else lambda line: None
    args.overrides = translate_run(
        args.config, args.overrides, args.foreign_flags, max(args.nproc_per_node, launched_world_size()), say
    )
    if args.nproc_per_node > 1 and launched_world_size() == 1:
        return _launch(args)
    cfg = load_config(args.config, args.overrides)
    if args.command == "finetune" and cfg.init_from is None:
        raise ConfigError("init_from is not set: name the pretrained model to finetune (init_from=PATH)")
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not trainer.is_main:
        return 0
    if trainer.stopped_by_signal:
        print(f"stopped by {trainer.stopped_by_signal} at step {trainer.step}")
        return 0
    split = cfg.tensor_parallel * cfg.pipeline_parallel > 1 or (cfg.zero_stage == 3 and not trainer.processes.alone)
    if cfg.sample_tokens and split:
        print(f"(no sample: the model is split over processes; try `gptcore generate --checkpoint {cfg.save}`)")
    elif cfg.sample_tokens:
        tokenizer = load_tokenizer(trainer.tokenizer_path)
        prompt = tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else []
        room = trainer.model.config.n_positions - max(len(prompt), 1)
        ids = sample(
            trainer.model, prompt, min(cfg.sample_tokens, room), temperature=0.8, top_k=40, stop_id=tokenizer.eod_id
        )
        print(f"--- sample ({cfg.sample_tokens} tokens, temperature 0.8, top-k 40) ---")
        print(cfg.sample_prompt + tokenizer.decode(ids))
    return 0


def _launch(args) -> int:
    """`gptcore train --nproc-per-node N ...`: torchrun --standalone running N copies of the same command."""
    if args.nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    load_config(args.config, args.overrides)  # a bad config stops here, once, not in every process
    command = ["-m", "gptcore", args.command, "--config", str(args.config), *args.overrides]
    try:
        torchrun(["--standalone", f"--nproc-per-node={args.nproc_per_node}", *command])
    except ChildFailedError as e:  # the processes printed their own errors
        codes = sorted({failure.exitcode for failure in e.failures.values()})
        print(f"gptcore train: {len(e.failures)} of {args.nproc_per_node} processes failed", file=sys.stderr)
        return max(codes) if codes and max(codes) > 0 else 1
    return 0
