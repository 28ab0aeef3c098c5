"""tests/quickstart.sh's check (CI runs the README's quick start and then this on the run's folder):
it passes a finished run whose loss fell by more than 2, and fails one that stopped early or did not learn."""

import json
import pathlib
import shutil
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "quickstart.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is absent")


def check(run: pathlib.Path, losses: dict[int, float], complete: bool = True) -> subprocess.CompletedProcess:
    run.mkdir()
    records = [{"step": step, "loss": loss} for step, loss in losses.items()] + [{"step": 200, "val_loss": 5.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if complete:
        (run / "step_00000200").mkdir()
        (run / "step_00000200" / "COMPLETE").write_text("{}")
    return subprocess.run(["bash", str(SCRIPT), "--check", str(run)], capture_output=True, text=True, timeout=60)


def test_a_finished_run_whose_loss_fell_passes(tmp_path):
    p = check(tmp_path / "run", {10: 8.3, 100: 5.0, 200: 4.4})
    assert p.returncode == 0, p.stderr
    assert "loss 8.300 at step 10 -> 4.400 at step 200" in p.stdout


def test_a_loss_that_did_not_fall_fails(tmp_path):
    p = check(tmp_path / "run", {10: 8.3, 200: 6.5})
    assert p.returncode == 1
    assert "the loss did not fall by more than 2" in p.stderr


def test_a_run_that_stopped_early_fails(tmp_path):
    p = check(tmp_path / "run", {10: 8.3, 150: 4.0}, complete=False)
    assert p.returncode == 1
    assert "training stopped at step 150, not 200" in p.stderr
    assert "no complete checkpoint step_00000200" in p.stderr
