"""async_save: the state copied at the step boundary and written on a background thread gives the
same checkpoint files as a save written on the spot, the same resumed losses, and train() returns
only once the last one is written."""

from __future__ import annotations

import threading
import time

import pytest
from safetensors.torch import load_file
from train_fixtures import corpus, quiet, small

from gptcore.checkpoint import find_checkpoint, load_trainer_state, verify
from gptcore.training import checkpointing


def test_background_saves_write_what_the_step_boundary_held(corpus, tmp_path, monkeypatch):
    cfg = small(corpus, train_steps=6, save_interval=2, dropout=0.1, keep_last=5)
    now = quiet(cfg | {"save": str(tmp_path / "now")})
    now.train()
    slow = threading.Event()
    write = checkpointing.write_checkpoint

    def slow_write(*args, **kwargs):  # the background save still running while the next steps change the weights
        time.sleep(0.3)
        slow.set()
        return write(*args, **kwargs)

    monkeypatch.setattr("gptcore.training.checkpointing.write_checkpoint", slow_write)
    later = quiet(cfg | {"save": str(tmp_path / "later"), "async_save": True})
    later.train()
    assert slow.is_set()
    for step in (2, 4, 6):  # the same files, byte for byte where they are not logs of the run
        a, b = (tmp_path / run / f"step_{step:08d}" for run in ("now", "later"))
        assert verify(b).intact
        wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
        sa, sb = load_trainer_state(a), load_trainer_state(b)
        assert sa["step"] == sb["step"] == step and sa["scaler"] == sb["scaler"]
        ea, eb = sa["optimizer"]["state"], sb["optimizer"]["state"]
        assert all(ea[i]["exp_avg"].equal(eb[i]["exp_avg"]) for i in ea)
    assert (tmp_path / "later" / "latest").read_text().strip() == "step_00000006"


def test_async_resume_is_exact_and_train_returns_after_the_last_save(corpus, tmp_path, monkeypatch):
    cfg = small(corpus, train_steps=6, save_interval=2, dropout=0.1, async_save=True, save=str(tmp_path / "run"))
    whole = quiet(small(corpus, train_steps=6, dropout=0.1)).train()
    part = quiet(cfg).train(max_steps=4)
    assert verify(find_checkpoint(tmp_path / "run")).intact  # written before train() returned
    assert find_checkpoint(tmp_path / "run").name == "step_00000004"
    resumed = quiet(cfg)
    assert resumed.step == 4
    losses = [r["loss"] for r in part + resumed.train() if "loss" in r]
    assert losses == [r["loss"] for r in whole if "loss" in r]


def test_a_failed_background_save_is_raised(corpus, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("gptcore.training.checkpointing.write_checkpoint", broken)
    trainer = quiet(small(corpus, train_steps=2, async_save=True, save=str(tmp_path / "run")))
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
