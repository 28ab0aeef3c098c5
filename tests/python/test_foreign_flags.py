"""Megatron-LM's and PaddleNLP's flags on `gptcore train` / `finetune`: translated to gptcore's keys
with one line each, foreign key=value names too, and the "did you mean" hints right for them."""

import dataclasses
import json

import pytest
from test_training import corpus, small  # noqa: F401 (a fixture)

from gptcore import cli
from gptcore.cli.arguments import RUN_OPTIONS
from gptcore.cli.foreign import split_flags, translate_run
from gptcore.training import ConfigError, TrainConfig, load_config
from gptcore.training.aliases import ALIASES, FLAG_ALIASES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def test_every_alias_names_a_key():
    assert {alias.key for alias in [*ALIASES.values(), *FLAG_ALIASES.values()]} <= KEYS
    assert not set(ALIASES) & KEYS  # a key=value of gptcore's own name is never translated


def test_split_flags_keeps_the_commands_options_and_takes_multi_value_flags():
    tokens = ["lr=1", "--max_steps", "10", "--config", "tiny-cpu", "--data-path", "0.3", "A", "0.7", "B", "save=x"]
    rest, flags = split_flags([*tokens, "--bf16", "--lr=3e-4", "seed=3"], RUN_OPTIONS)
    assert rest == ["--config", "tiny-cpu", "lr=1", "save=x", "seed=3"]  # options first: argparse takes the rest
    assert flags == [("max_steps", ["10"]), ("data-path", ["0.3", "A", "0.7", "B"]), ("bf16", []), ("lr", ["3e-4"])]
    rest, flags = split_flags(["--nproc_per_node", "2", "--max_steps", "1", "--config=x"], RUN_OPTIONS)
    assert rest == ["--nproc-per-node", "2", "--config=x"] and flags == [("max_steps", ["1"])]


def _translate(*tokens: str, nproc: int = 1) -> tuple[list[str], list[str]]:
    rest, flags = split_flags(list(tokens), RUN_OPTIONS)
    lines = []
    return translate_run("tiny-cpu", rest, flags, nproc, lines.append), lines


@pytest.mark.parametrize(
    "tokens, overrides",
    [
        # PaddleNLP's TrainingArguments
        (("--max_steps", "10"), ["train_steps=10"]),
        (("--learning_rate", "3e-4", "--min_learning_rate", "3e-5"), ["lr=3e-4", "min_lr=3e-5"]),
        (("--save_steps", "5", "--logging_steps", "2", "--eval_steps", "7"), [
            "save_interval=5", "log_interval=2", "eval_interval=7"]),  # Paddle's eval_steps: steps between evals
        (("--warmup_ratio", "0.1", "--max_grad_norm", "0.5"), ["warmup_ratio=0.1", "clip_grad=0.5"]),
        (("--per_device_train_batch_size", "4"), ["micro_batch_size=4"]),
        (("--scale_loss", "32768", "--fp16"), ["initial_loss_scale=32768", "precision=fp16"]),
        (("--recompute", "1"), ["recompute=full"]),
        (("--recompute", "0"), ["recompute=none"]),
        (("--recompute_granularity", "full_attn"), ["recompute=selective"]),
        (("--bf16", "true"), ["precision=bf16"]),
        (("--tensor_parallel_degree", "2", "--sharding", "stage2"), ["tensor_parallel=2", "zero_stage=2"]),
        (("--sharding", "stage3"), ["zero_stage=3"]),
        (("--lr_scheduler_type", "linear"), ["decay_style=linear"]),
        (("--num_train_epochs", "3", "--output_dir", "out"), ["train_epochs=3", "save=out"]),
        (("--device", "gpu"), ["device=cuda"]),
        (("--do_train",), []),
        # Megatron-LM's arguments
        (("--train-iters", "10", "--micro-batch-size", "2", "--global-batch-size", "8"), [
            "train_steps=10", "micro_batch_size=2", "global_batch_size=8"]),
        (("--lr", "1e-4", "--min-lr", "1e-5", "--lr-warmup-iters", "5", "--lr-decay-iters", "90"), [
            "lr=1e-4", "min_lr=1e-5", "warmup_steps=5", "decay_steps=90"]),
        (("--lr-decay-style", "inverse-square-root"), ["decay_style=noam"]),
        (("--lr-warmup-fraction", "0.01"), ["warmup_ratio=0.01"]),
        (("--save-interval", "100", "--eval-interval", "50", "--eval-iters", "4", "--log-interval", "1"), [
            "save_interval=100", "eval_interval=50", "eval_steps=4", "log_interval=1"]),
        (("--clip-grad", "1.0", "--weight-decay", "0.1", "--adam-beta2", "0.95"), [
            "clip_grad=1.0", "weight_decay=0.1", "beta2=0.95"]),
        (("--seq-length", "64", "--seed", "7", "--bf16"), ["seq_len=64", "seed=7", "precision=bf16"]),
        (("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--sequence-parallel"), [
            "tensor_parallel=2", "pipeline_parallel=2", "sequence_parallel=true"]),
        (("--data-path", "0.3", "a/x", "0.7", "b/y", "--split", "98,2,0"), [
            "data_path=0.3 a/x 0.7 b/y", "split=98,2,0"]),
        (("--save", "runs/a", "--load", "runs/b", "--use-distributed-optimizer"), [
            "save=runs/a", "load=runs/b", "zero_stage=1"]),
        (("--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4"), [
            "n_layer=4", "n_embd=128", "n_head=4"]),
        (("--recompute-granularity", "selective"), ["recompute=selective"]),
        # key=value with other tools' names
        (("max_steps=10", "epochs=2", "learning_rate=1e-3"), ["train_steps=10", "train_epochs=2", "lr=1e-3"]),
        (("eval_steps=3",), ["eval_steps=3"]),  # gptcore's own key as key=value: kept
    ],
)  # fmt: skip
def test_translations(tokens, overrides):
    out, lines = _translate(*tokens)
    assert out == overrides
    assert len(lines) == len([t for t in tokens if t.startswith("--") or "=" in t and t.split("=")[0] not in KEYS])


def test_the_line_says_what_it_became():
    _, lines = _translate("--max_steps", "10", "--recompute", "1", "epochs=2", "--do_train")
    assert lines == [
        "--max_steps 10 -> train_steps=10",
        "--recompute 1 -> recompute=full",
        "--do_train: ignored (gptcore does this anyway)",
        "epochs=2 -> train_epochs=2",
    ]


def test_gradient_accumulation_steps_gives_the_global_batch():
    out, lines = _translate("--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "8", nproc=2)
    assert out == ["micro_batch_size=4", "global_batch_size=64"]
    assert lines[-1].startswith("--gradient_accumulation_steps 8 (micro_batch_size 4 x 8 x data parallel 2)")
    out, _ = _translate("--gradient_accumulation_steps", "2", "micro_batch_size=3")  # the key=value's micro batch
    assert out == ["global_batch_size=6", "micro_batch_size=3"]


@pytest.mark.parametrize(
    "tokens, message",
    [
        (("--lr-decay-style", "WSD"), "--lr-decay-style WSD: gptcore's decay_style has no 'WSD'"),
        (("--bf16", "maybe"), "--bf16 maybe: give true or false"),
        (("--max_stepz", "3"), "unknown option '--max_stepz'; did you mean 'train_steps'?"),
        (("--frobnicate", "3"), "unknown option '--frobnicate'; settings are key=value"),
        (("--max_steps",), "--max_steps: needs a value (it sets train_steps)"),
        (("--gradient_accumulation_steps", "0"), "give a whole number of steps >= 1"),
    ],
)
def test_refused_with_one_line(tokens, message):
    with pytest.raises(ConfigError) as e:
        _translate(*tokens)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "key, hint",
    [
        ("max_steps", "gptcore's key is 'train_steps' (PaddleNLP's max_steps)"),
        ("epochs", "gptcore's key is 'train_epochs' (MindFormers's epochs)"),
        ("train_iters", "gptcore's key is 'train_steps' (Megatron-LM's train_iters)"),
        ("max_grad_norm", "gptcore's key is 'clip_grad' (PaddleNLP's max_grad_norm)"),
        ("lerning_rate", "did you mean 'lr'?"),
        ("max_stepss", "did you mean 'train_steps'?"),
        ("epoch", "did you mean 'train_epochs'?"),
    ],
)
def test_config_hints_name_gptcores_key(key, hint, tmp_path):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'") as e:
        load_config(None, {key: 1})
    assert str(e.value).endswith(hint)
    (tmp_path / "c.yaml").write_text(f"{key}: 1\n")
    with pytest.raises(ConfigError, match="c.yaml: unknown config key"):
        load_config(tmp_path / "c.yaml")


def test_train_with_paddle_and_megatron_flags(corpus, tmp_path, capsys):  # noqa: F811
    flagged = ("train_steps", "micro_batch_size", "global_batch_size", "log_interval")
    cfg = small(corpus, log_file=str(tmp_path / "m.jsonl"), save=str(tmp_path / "run"), sample_tokens=0)
    overrides = [f"{k}={v}" for k, v in cfg.items() if k not in flagged]
    flags = ["--max_steps", "3", "--micro-batch-size", "2", "--gradient_accumulation_steps", "2"]
    flags += ["--logging_steps", "1"]
    assert cli.main(["train", *flags, "--lr-decay-style", "inverse-square-root", *overrides]) == 0
    err = capsys.readouterr().err
    assert "gptcore: --max_steps 3 -> train_steps=3" in err
    assert "gptcore: --lr-decay-style inverse-square-root -> decay_style=noam" in err
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(r["tokens_per_s_per_device"] == r["tokens_per_s"] for r in records)  # one process: TGS = global
    assert all(r["lr"] == pytest.approx(1e-2 * min((r["step"]) / 2, (2 / r["step"]) ** 0.5)) for r in records)


def test_finetune_takes_flags(capsys):
    assert cli.main(["finetune", "--max_steps", "3", "--frobnicate"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "gptcore finetune: error: unknown option '--frobnicate'; settings are key=value (README: Training),"
        " or the Megatron-LM / PaddleNLP flags of its table"
    )
