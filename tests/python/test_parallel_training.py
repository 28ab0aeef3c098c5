"""The trainer over several gloo processes: every layout against the one-process
Trainer on the same data (losses and grad norms of several AdamW steps with clipping), exact resume,
checkpoints loaded under another layout, layout errors, and `gptcore train --nproc-per-node 2`."""

import os
import subprocess
import sys

import pytest
import torch
from test_training import corpus, small  # noqa: F401 (corpus is a fixture)

from gptcore.parallel.testing import run_distributed
from gptcore.training import ConfigError, Trainer, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 3


def _cfg(corpus, **overrides) -> dict:  # noqa: F811
    # dropout off: the layouts draw their masks differently; clipping active (clip_grad below the norms)
    base = dict(dropout=0.0, attn_dropout=0.0, clip_grad=0.5, decay_style="constant", weight_decay=0.1)
    return small(corpus, **(base | overrides))


def _train(rank, world, cfg, steps):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    return [trainer.train_step() for _ in range(steps)]


@pytest.fixture(scope="module")
def one_process(corpus):  # noqa: F811
    trainer = Trainer(load_config(None, _cfg(corpus)), log=lambda line: None)
    return [trainer.train_step() for _ in range(STEPS)]


LAYOUTS = {
    "dp2": (2, {}),
    "dp2-zero1": (2, {"zero_stage": 1}),
    "dp2-zero2": (2, {"zero_stage": 2}),
    "tp2": (2, {"tensor_parallel": 2}),
    "tp2-sp": (2, {"tensor_parallel": 2, "sequence_parallel": True}),
    "pp2": (2, {"pipeline_parallel": 2}),
    "tp2-dp2-sp-zero2": (4, {"tensor_parallel": 2, "sequence_parallel": True, "zero_stage": 2}),
    "pp2-dp2-zero2": (4, {"pipeline_parallel": 2, "zero_stage": 2}),
    "tp2-pp2-sp-zero1": (4, {"tensor_parallel": 2, "pipeline_parallel": 2, "sequence_parallel": True}),
    "dp2-zero3": (2, {"zero_stage": 3}),
    "dp2-zero3-recompute-full": (2, {"zero_stage": 3, "recompute": "full"}),
    "tp2-dp2-zero3": (4, {"tensor_parallel": 2, "zero_stage": 3}),
    "tp2-dp2-sp-zero3-selective": (
        4,
        {"tensor_parallel": 2, "sequence_parallel": True, "zero_stage": 3, "recompute": "selective"},
    ),
    "tp2-dp2-zero3-offload-full": (
        4,
        {"tensor_parallel": 2, "zero_stage": 3, "offload_optimizer": True, "recompute": "full"},
    ),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_one_process(corpus, one_process, name):  # noqa: F811
    world, overrides = LAYOUTS[name]
    if name.endswith("zero1"):
        overrides = overrides | {"zero_stage": 1}
    results = run_distributed(_train, world, _cfg(corpus, **overrides), STEPS)
    assert all(r == results[0] for r in results)  # every rank reports the same global numbers
    for ours, ref in zip(results[0], one_process):
        assert ours["tokens"] == ref["tokens"]
        assert ours["grad_norm"] > 0.5  # clipping was active
        assert ours["loss"] == pytest.approx(ref["loss"], rel=2e-5), name
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=2e-4), name


def _save_run(rank, world, cfg, steps):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    records = trainer.train(max_steps=steps)
    return [r["loss"] for r in records], trainer.resumed_from is not None


def test_resume_is_exact(corpus, tmp_path):  # noqa: F811
    cfg = _cfg(corpus, train_steps=4, zero_stage=1, pipeline_parallel=2, dropout=0.1)
    whole, _ = run_distributed(_save_run, 4, cfg | {"save": str(tmp_path / "a")}, 4)[0]
    part, _ = run_distributed(_save_run, 4, cfg | {"save": str(tmp_path / "b")}, 2)[0]
    rest, resumed = run_distributed(_save_run, 4, cfg | {"save": str(tmp_path / "b")}, 2)[0]
    assert resumed
    assert part + rest == whole  # bit for bit, dropout included
    step = tmp_path / "b" / "step_00000004"
    names = sorted(p.name for p in step.iterdir())
    assert names == [
        "COMPLETE",
        "config.yaml",
        "layout.json",
        "model_tp00_pp00.safetensors",
        "model_tp00_pp01.safetensors",
        *[f"rank_{r:05d}.{suffix}" for r in range(4) for suffix in ("json", "safetensors")],
        "tokenizer",
        "trainer_state.json",
        "trainer_state.safetensors",
    ]


def _weights_after_load(rank, world, cfg):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    return trainer.step, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_checkpoint_loads_under_other_layouts(corpus, tmp_path):  # noqa: F811
    from gptcore.checkpoint import load_full_state

    save = str(tmp_path / "tp2")
    run_distributed(_save_run, 2, _cfg(corpus, train_steps=2, tensor_parallel=2, save=save), 2)
    full, _ = load_full_state(tmp_path / "tp2" / "step_00000002")
    # one process: the merged weights, and training goes on
    lines = []
    single = Trainer(load_config(None, _cfg(corpus, train_steps=3, load=save)), log=lines.append)
    assert single.step == 2 and any("fresh AdamW moments" in line for line in lines)
    for key, value in single.model.state_dict().items():
        assert torch.equal(value, full[key]), key
    single.train()
    # pipeline parallel: each stage holds its slice of the same weights
    results = run_distributed(_weights_after_load, 2, _cfg(corpus, pipeline_parallel=2, load=save))
    for step, state in results:
        assert step == 2
        for key, value in state.items():
            assert torch.equal(value, full[key]), key


def _expect_config_error(rank, world, cfg):
    with pytest.raises(ConfigError) as info:
        Trainer(load_config(None, cfg), log=lambda line: None)
    return str(info.value)


@pytest.mark.parametrize(
    "world,overrides,message",
    [
        (2, {"tensor_parallel": 4}, "world size 2 is not divisible by tp x pp"),
        (4, {"tensor_parallel": 4}, "n_head (2) is not divisible by tp (4)"),
        (4, {"pipeline_parallel": 4}, "n_layer (2) is not divisible by pp (4)"),
        (
            2,
            {"global_batch_size": 6, "micro_batch_size": 2},
            "global_batch_size (6) is not divisible by micro_batch_size x dp",
        ),
    ],
)
def test_layout_errors(corpus, world, overrides, message):  # noqa: F811
    for text in run_distributed(_expect_config_error, world, _cfg(corpus, **overrides)):
        assert message in text


def test_one_process_asked_for_model_parallelism(corpus):  # noqa: F811
    with pytest.raises(ConfigError, match="--nproc-per-node"):
        Trainer(load_config(None, _cfg(corpus, tensor_parallel=2)))


def test_cli_nproc_per_node(corpus, tmp_path):  # noqa: F811
    prefix, tokenizer = corpus
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "gptcore", "train", "--nproc-per-node", "2", "--config", "tiny-cpu"]
    overrides = [
        f"data_path={prefix}",
        f"tokenizer={tokenizer}",
        "tensor_parallel=2",
        "n_head=2",
        "n_embd=64",
        "train_steps=3",
        "warmup_steps=1",
        "seq_len=32",
        "micro_batch_size=2",
        "global_batch_size=2",
        "eval_interval=0",
        "log_interval=1",
        "progress=false",
        "device=cpu",
        f"save={tmp_path / 'run'}",
    ]
    out = subprocess.run(command + overrides, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dp 1 x tp 2 x pp 1" in out.stdout
    assert out.stdout.count("step      3 |") == 1  # one process logs
    assert (tmp_path / "run" / "step_00000003" / "model_tp01_pp00.safetensors").is_file()


def _evaluate(rank, world, cfg):
    return Trainer(load_config(None, cfg), log=lambda line: None).evaluate()


@pytest.mark.parametrize(
    "overrides", [{"pipeline_parallel": 2}, {"tensor_parallel": 2, "sequence_parallel": True}, {}, {"zero_stage": 3}]
)
def test_evaluate_matches_one_process(corpus, overrides):  # noqa: F811
    cfg = _cfg(corpus, eval_interval=5, eval_steps=3)
    expected = Trainer(load_config(None, cfg), log=lambda line: None).evaluate()
    for result in run_distributed(_evaluate, 2, cfg | overrides):
        assert result["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)


def _stop_on_one_rank(rank, world, cfg):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    step = trainer.train_step

    def train_step():
        out = step()
        if rank == 1 and trainer.step == 2:
            trainer._stop_signal = "SIGTERM"  # as the signal handler sets it, on one rank only
        return out

    trainer.train_step = train_step
    trainer.train()
    return trainer.step, trainer.stopped_by_signal


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(corpus, tmp_path):  # noqa: F811
    cfg = _cfg(corpus, train_steps=6, save=str(tmp_path / "run"))
    assert run_distributed(_stop_on_one_rank, 2, cfg) == [(2, "a signal to another process"), (2, "SIGTERM")]
    assert (tmp_path / "run" / "step_00000002" / "COMPLETE").is_file()
