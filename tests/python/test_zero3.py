"""ZeRO-3 (parameters sharded over the data-parallel ranks) and the offloaded optimizer, over gloo
processes: gradient accumulation against ZeRO-2, parameter memory per rank, exact resume, its
checkpoints loaded in one process, offload equal to the on-device optimizer, config errors. (Losses
and grad norms against the one-process trainer: test_parallel_training's LAYOUTS.)"""

import pytest
import torch
from test_training import corpus, small  # noqa: F401 (corpus is a fixture)

from gptcore.checkpoint import load_full_state
from gptcore.parallel.testing import run_distributed
from gptcore.training import ConfigError, Trainer, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(corpus, **overrides) -> dict:  # noqa: F811
    base = dict(dropout=0.0, attn_dropout=0.0, clip_grad=0.5, decay_style="constant", weight_decay=0.1)
    return small(corpus, **(base | overrides))


def _train_and_gather(rank, world, cfg, steps):
    """The step records, the weights (gathered whole) and this rank's optimizer masters after `steps`."""
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    records = [trainer.train_step() for _ in range(steps)]
    ddp = trainer.grads.ddp
    gathered = ddp.gathered() if trainer.cfg.zero_stage == 3 else ddp.no_sync()  # no_sync: a no-op here
    with gathered:
        weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return records, weights, [m.clone() for m in trainer.optimizer.masters]


def test_accumulation_matches_zero2(corpus):  # noqa: F811
    # two micro batches a step: the first backward under no_sync gathers and frees as the last does
    cfg = _cfg(corpus, global_batch_size=8, recompute="full")
    zero2 = run_distributed(_train_and_gather, 2, cfg | {"zero_stage": 2}, 3)
    zero3 = run_distributed(_train_and_gather, 2, cfg | {"zero_stage": 3}, 3)
    for (records2, weights2, _), (records3, weights3, _) in zip(zero2, zero3):
        for ours, ref in zip(records3, records2):
            assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
            assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        for key, value in weights2.items():
            torch.testing.assert_close(weights3[key], value, rtol=1e-5, atol=1e-6)


def _train_with_a_masked_micro_batch(rank, world, cfg, steps):
    """As _train_and_gather, with rank 1's first micro batch of each step without targets."""
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    step_batches = trainer._step_batches

    def masked():
        batches = step_batches()
        if rank == 1:
            batches[0]["labels"][:] = -100
        return batches

    trainer._step_batches = masked
    records = [trainer.train_step() for _ in range(steps)]
    ddp = trainer.grads.ddp
    with ddp.gathered() if trainer.cfg.zero_stage == 3 else ddp.no_sync():
        return records, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_a_micro_batch_without_targets(corpus):  # noqa: F811
    # ZeRO-2 skips it; ZeRO-3 must run it (its forward and backward gather with the other rank)
    cfg = _cfg(corpus, global_batch_size=8)
    zero2 = run_distributed(_train_with_a_masked_micro_batch, 2, cfg | {"zero_stage": 2}, 2)
    zero3 = run_distributed(_train_with_a_masked_micro_batch, 2, cfg | {"zero_stage": 3}, 2)
    for (records2, weights2), (records3, weights3) in zip(zero2, zero3):
        for ours, ref in zip(records3, records2):
            assert ours["tokens"] == ref["tokens"]
            assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
            assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        for key, value in weights2.items():
            torch.testing.assert_close(weights3[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", [2, 3])
def test_offload_equals_the_device_optimizer(corpus, stage):  # noqa: F811
    cfg = _cfg(corpus, zero_stage=stage)
    on_device = run_distributed(_train_and_gather, 2, cfg, 3)
    offloaded = run_distributed(_train_and_gather, 2, cfg | {"offload_optimizer": True}, 3)
    for (records, weights, masters), (records_o, weights_o, masters_o) in zip(on_device, offloaded):
        assert [(r["loss"], r["grad_norm"]) for r in records_o] == [(r["loss"], r["grad_norm"]) for r in records]
        for key, value in weights.items():
            assert torch.equal(weights_o[key], value), key
        for master, master_o in zip(masters, masters_o):
            assert master_o.device.type == "cpu" and torch.equal(master_o, master)


def _resident(rank, world, cfg):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    full = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    trainer.train_step()
    own = sum(p.untyped_storage().nbytes() for p in trainer.model.parameters())
    return full, own, trainer.grads.ddp.resident_param_bytes()


@pytest.mark.parametrize("world,overrides", [(2, {}), (4, {"tensor_parallel": 2})])
def test_parameter_bytes_per_rank(corpus, world, overrides):  # noqa: F811
    for full, own, resident in run_distributed(_resident, world, _cfg(corpus, zero_stage=3, **overrides)):
        assert own == 0  # between steps the params hold no storage of their own
        dp = world // overrides.get("tensor_parallel", 1)
        assert full / dp <= resident <= 1.05 * full / dp  # this rank's shards, alignment padding aside


def _save_run(rank, world, cfg, steps):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    records = trainer.train(max_steps=steps)
    return [r["loss"] for r in records], trainer.resumed_from is not None


def _load_and_gather(rank, world, cfg):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    with trainer.grads.ddp.gathered():
        return trainer.step, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_is_exact_and_the_checkpoint_loads_in_one_process(corpus, tmp_path):  # noqa: F811
    cfg = _cfg(corpus, train_steps=4, zero_stage=3, tensor_parallel=2, dropout=0.1)
    whole, _ = run_distributed(_save_run, 4, cfg | {"save": str(tmp_path / "a")}, 4)[0]
    part, _ = run_distributed(_save_run, 4, cfg | {"save": str(tmp_path / "b")}, 2)[0]
    rest, resumed = run_distributed(_save_run, 4, cfg | {"save": str(tmp_path / "b")}, 2)[0]
    assert resumed
    assert part + rest == whole  # bit for bit, dropout included
    step = tmp_path / "b" / "step_00000004"
    assert (step / "model_tp01_pp00.safetensors").is_file()
    assert all((step / f"rank_{r:05d}.safetensors").is_file() for r in range(4))
    full, _ = load_full_state(step)
    # the same weights as a ZeRO-2 run's: the whole shards, not one dp rank's part
    run_distributed(_save_run, 4, cfg | {"zero_stage": 2, "save": str(tmp_path / "zero2")}, 4)
    for key, value in load_full_state(tmp_path / "zero2" / "step_00000004")[0].items():
        torch.testing.assert_close(full[key], value, rtol=1e-4, atol=1e-5)
    # another ZeRO-3 layout (dp2 without tp): each rank's shards of the same weights
    for step_, weights in run_distributed(_load_and_gather, 2, _cfg(corpus, zero_stage=3, load=str(tmp_path / "b"))):
        assert step_ == 4
        for key, value in weights.items():
            assert torch.equal(value, full[key]), key
    lines = []
    single = Trainer(load_config(None, _cfg(corpus, train_steps=5, load=str(tmp_path / "b"))), log=lines.append)
    assert single.step == 4 and any("fresh AdamW moments" in line for line in lines)
    for key, value in single.model.state_dict().items():
        assert torch.equal(value, full[key]), key
    single.train()


def _expect_config_error(rank, world, cfg):
    with pytest.raises(ConfigError) as info:
        Trainer(load_config(None, cfg), log=lambda line: None)
    return str(info.value)


def test_config_errors(corpus):  # noqa: F811
    with pytest.raises(ConfigError, match="does not compose with pipeline_parallel"):
        load_config(None, _cfg(corpus, zero_stage=3, pipeline_parallel=2))
    with pytest.raises(ConfigError, match="set zero_stage >= 1"):
        load_config(None, _cfg(corpus, offload_optimizer=True))
    with pytest.raises(ConfigError, match="a run of one process"):
        Trainer(load_config(None, _cfg(corpus, zero_stage=3, offload_optimizer=True)), log=lambda line: None)
