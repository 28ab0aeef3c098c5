"""Other tools' names for training settings and their TrainConfig keys: Megatron-LM's flags
(`--train-iters`, `--lr-decay-style`), PaddleNLP's TrainingArguments (`--max_steps`,
`--per_device_train_batch_size`), ModelScope's and MindFormers' (`max_epochs`). The config answers
such a key with gptcore's name for it; `gptcore train` takes them as flags (gptcore.cli.foreign)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    """A foreign name of `key`. values: the foreign value -> ours (others are refused); on/off: a
    switch (a bare flag, or true/1/false/0) setting key to `on` or `off`."""

    key: str
    tool: str
    values: dict | None = None
    on: object = None
    off: object = None

    @property
    def switch(self) -> bool:
        return self.on is not None


_DECAY = {"cosine": "cosine", "linear": "linear", "constant": "constant", "noam": "noam"}
_GRANULARITY = {"full": "full", "selective": "selective", "full_attn": "selective", "core_attn": "selective"}
MEGATRON, PADDLE, MODELSCOPE, MINDFORMERS = "Megatron-LM", "PaddleNLP", "ModelScope", "MindFormers"

# Names are normalized: no leading dashes, '-' as '_' (--train-iters and --train_iters are one name).
ALIASES: dict[str, Alias] = {
    # steps, epochs and batches
    "max_steps": Alias("train_steps", PADDLE),
    "train_iters": Alias("train_steps", MEGATRON),
    "max_iters": Alias("train_steps", MODELSCOPE),
    "num_train_epochs": Alias("train_epochs", PADDLE),
    "max_epochs": Alias("train_epochs", MODELSCOPE),
    "epochs": Alias("train_epochs", MINDFORMERS),
    "per_device_train_batch_size": Alias("micro_batch_size", PADDLE),
    "batch_size": Alias("micro_batch_size", MEGATRON),
    "gradient_accumulation_steps": Alias("global_batch_size", PADDLE),  # derived: see accumulation()
    # schedule
    "learning_rate": Alias("lr", PADDLE),
    "min_learning_rate": Alias("min_lr", PADDLE),
    "lr_warmup_iters": Alias("warmup_steps", MEGATRON),
    "lr_warmup_fraction": Alias("warmup_ratio", MEGATRON),
    "lr_decay_iters": Alias("decay_steps", MEGATRON),
    "lr_decay_style": Alias("decay_style", MEGATRON, values=_DECAY | {"inverse_square_root": "noam"}),
    "lr_scheduler_type": Alias("decay_style", PADDLE, values=_DECAY | {"constant_with_warmup": "constant"}),
    # optimizer
    "max_grad_norm": Alias("clip_grad", PADDLE),
    "adam_beta1": Alias("beta1", f"{MEGATRON}, {PADDLE}"),
    "adam_beta2": Alias("beta2", f"{MEGATRON}, {PADDLE}"),
    "adam_eps": Alias("eps", MEGATRON),
    "adam_epsilon": Alias("eps", PADDLE),
    # precision and memory
    "bf16": Alias("precision", f"{MEGATRON}, {PADDLE}", on="bf16", off="fp32"),
    "fp16": Alias("precision", f"{MEGATRON}, {PADDLE}", on="fp16", off="fp32"),
    "scale_loss": Alias("initial_loss_scale", PADDLE),
    "recompute_activations": Alias("recompute", MEGATRON, on="selective", off="none"),
    "recompute_granularity": Alias("recompute", f"{MEGATRON}, {PADDLE}", values=_GRANULARITY),
    # parallelism
    "tensor_model_parallel_size": Alias("tensor_parallel", MEGATRON),
    "tensor_parallel_degree": Alias("tensor_parallel", PADDLE),
    "pipeline_model_parallel_size": Alias("pipeline_parallel", MEGATRON),
    "pipeline_parallel_degree": Alias("pipeline_parallel", PADDLE),
    "use_distributed_optimizer": Alias("zero_stage", MEGATRON, on=1, off=0),
    "sharding": Alias("zero_stage", PADDLE, values={"stage1": 1, "stage2": 2, "stage3": 3}),
    # model
    "num_layers": Alias("n_layer", MEGATRON),
    "num_hidden_layers": Alias("n_layer", PADDLE),
    "hidden_size": Alias("n_embd", f"{MEGATRON}, {PADDLE}"),
    "num_attention_heads": Alias("n_head", f"{MEGATRON}, {PADDLE}"),
    "max_position_embeddings": Alias("n_positions", f"{MEGATRON}, {PADDLE}"),
    "hidden_dropout": Alias("dropout", MEGATRON),
    "hidden_dropout_prob": Alias("dropout", PADDLE),
    "attention_dropout": Alias("attn_dropout", MEGATRON),
    "attention_probs_dropout_prob": Alias("attn_dropout", PADDLE),
    "seq_length": Alias("seq_len", MEGATRON),
    "max_seq_length": Alias("seq_len", PADDLE),
    "max_seq_len": Alias("seq_len", PADDLE),
    "model_name_or_path": Alias("init_from", PADDLE),
    "pretrained_checkpoint": Alias("init_from", MEGATRON),
    "tokenizer_name_or_path": Alias("tokenizer", PADDLE),
    "tokenizer_model": Alias("tokenizer", MEGATRON),
    # eval, logging, checkpoints
    "logging_steps": Alias("log_interval", PADDLE),
    "save_steps": Alias("save_interval", PADDLE),
    "eval_iters": Alias("eval_steps", MEGATRON),
    "output_dir": Alias("save", PADDLE),
    "resume_from_checkpoint": Alias("load", PADDLE),
    "logging_dir": Alias("tensorboard_dir", PADDLE),
    "save_total_limit": Alias("keep_last", PADDLE),
}
# A flag whose name is also one of gptcore's keys but means something else there.
FLAG_ALIASES = {
    "eval_steps": Alias("eval_interval", PADDLE),  # PaddleNLP: steps between evaluations; ours: batches per eval
    "recompute": Alias("recompute", PADDLE, on="full", off="none"),  # PaddleNLP: a switch; ours: none/full/selective
}
# Flags that ask for what gptcore does anyway.
IGNORED = {"do_train", "do_eval", "overwrite_output_dir"}


def normalize(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def gptcore_key(name: str) -> str | None:
    """gptcore's key for a foreign config key (None when it has none)."""
    alias = ALIASES.get(normalize(name))
    return alias.key if alias else None


def suggestion(name: str, keys: list[str]) -> str:
    """The hint after "unknown config key" (keys: gptcore's): gptcore's name for a foreign key, else
    the closest key, foreign names included ('lerning_rate' is close to learning_rate, which is lr)."""
    if (key := gptcore_key(name)) is not None:
        return f"gptcore's key is {key!r} ({ALIASES[normalize(name)].tool}'s {name})"
    close = difflib.get_close_matches(normalize(name), [*keys, *ALIASES], n=1, cutoff=0.6)
    if close:
        return f"did you mean {gptcore_key(close[0]) or close[0]!r}?"
    return f"known keys: {', '.join(keys)}"
