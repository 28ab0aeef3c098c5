"""SIGKILL at the worst moments, then resume: `gptcore train` killed inside a step, after a save's
files are written (no marker yet) and between the rename and `latest`, resumes to the uninterrupted
run's losses bit for bit: one process, and two (data parallel with ZeRO-1, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import corpus

import gptcore
from gptcore.checkpoint import verify

STEPS, SAVE_EVERY = 6, 2


def train(
    corpus, save: Path, crash_at: str | None = None, processes: int = 1, *extra: str
) -> subprocess.CompletedProcess:
    prefix, tokenizer = corpus
    args = [sys.executable, "-m", "gptcore", "train"]
    if processes > 1:
        args += ["--nproc-per-node", str(processes)]
    args += [
        *("--config", "tiny-cpu", f"data_path={prefix}", f"tokenizer={tokenizer}", f"save={save}"),
        *("model=tiny", "n_embd=64", "n_head=2", "n_positions=64", "seq_len=32", "micro_batch_size=1"),
        *("global_batch_size=4", f"train_steps={STEPS}", "warmup_steps=1", "log_interval=1", "eval_interval=0"),
        *(f"save_interval={SAVE_EVERY}", "sample_tokens=0", "dropout=0.1", "keep_last=2"),
    ]
    if processes > 1:
        args += ["zero_stage=1"]
    args += extra
    package_root = str(Path(gptcore.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("GPTCORE_CRASH_AT", None)
    if crash_at is not None:
        env["GPTCORE_CRASH_AT"] = crash_at
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def losses(save: Path) -> dict[int, float]:
    """Each step's loss, the last one logged for it (a resumed run logs the steps after its checkpoint again)."""
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "dp2-zero1"])
def uninterrupted(request, corpus, tmp_path_factory):
    save = tmp_path_factory.mktemp("whole") / "run"
    done = train(corpus, save, processes=request.param)
    assert done.returncode == 0, done.stdout + done.stderr
    whole = losses(save)
    assert sorted(whole) == list(range(1, STEPS + 1))
    return request.param, whole


@pytest.mark.parametrize("crash_at", ["step-3", "save-4:files-written", "save-4:renamed", "step-5"])
def test_killed_then_resumed_equals_the_uninterrupted_run(corpus, tmp_path, uninterrupted, crash_at):
    processes, whole = uninterrupted
    save = tmp_path / "run"
    killed = train(corpus, save, crash_at, processes)
    assert killed.returncode != 0, killed.stdout
    if processes == 1:
        assert killed.returncode == -signal.SIGKILL
    folders = sorted(p.name for p in save.glob("step_*"))
    if crash_at == "save-4:files-written":  # no marker: step 4 was never published
        assert folders == ["step_00000002"] and list(save.glob(".step_00000004.tmp*"))
    if crash_at == "save-4:renamed":  # published, but latest still names step 2: the newest complete is taken
        assert (save / "latest").read_text().strip() == "step_00000002" and "step_00000004" in folders
    resumed = train(corpus, save, None, processes)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert losses(save) == whole  # bit for bit
    assert all(verify(p).intact for p in save.glob("step_*"))


@pytest.mark.parametrize("crash_at", ["save-4:files-written", "save-4:renamed"])
def test_killed_in_a_background_save_then_resumed(corpus, tmp_path, uninterrupted, crash_at):
    """async_save: the save of step 4 runs on a thread while steps 5 and 6 train; a SIGKILL in it
    leaves the checkpoints as a synchronous save would, and the resumed run the same losses."""
    processes, whole = uninterrupted
    save = tmp_path / "run"
    killed = train(corpus, save, crash_at, processes, "async_save=true")
    assert killed.returncode != 0, killed.stdout
    resumed = train(corpus, save, None, processes, "async_save=true")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert losses(save) == whole
    assert all(verify(p).intact for p in save.glob("step_*"))
