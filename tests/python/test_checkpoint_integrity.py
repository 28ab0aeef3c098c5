"""Checkpoints verified against the manifest in COMPLETE: hashes checked with hashlib, a damaged
newest checkpoint (truncated, overwritten, missing file, bad marker) named and skipped for the newest
intact one, bit for bit the same training afterwards; damaged ones never deleted; keep_last never
prunes past a later step; `gptcore convert verify`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from train_fixtures import corpus, quiet, small

from gptcore import cli
from gptcore.checkpoint import COMPLETE, find_checkpoint, save_model, verify, verify_checkpoints, write_checkpoint
from gptcore.model import GPT, GPTConfig
from gptcore.training import ConfigError, Trainer, load_config


def _files(step: int):
    def write(folder: Path) -> None:
        torch.manual_seed(step)
        model = GPT(GPTConfig(vocab_size=64, n_positions=16, n_layer=1, n_head=2, n_embd=64))
        save_model(model, folder / "model.safetensors")
        (folder / "state.json").write_text(json.dumps({"step": step}))
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")

    return write


def _save(root: Path, *steps: int, keep_last: int = 10) -> list[Path]:
    return [write_checkpoint(root, step, _files(step), keep_last) for step in steps]


def test_the_marker_is_a_manifest_of_every_file(tmp_path):
    (folder,) = _save(tmp_path, 3)
    manifest = json.loads((folder / COMPLETE).read_text())
    assert manifest["step"] == 3 and manifest["format"] == "gptcore-checkpoint"
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {COMPLETE}
    assert set(manifest["files"]) == files == {"model.safetensors", "state.json", "tokenizer/vocab.txt"}
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify(folder).intact and verify(folder).manifest


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, file, message",
    [
        (_truncate, "model.safetensors", "(truncated)"),
        (_flip_a_byte, "model.safetensors", "SHA-256 mismatch"),
        (Path.unlink, "state.json", "missing"),
        (lambda p: p.write_text("garbage"), COMPLETE, "not a gptcore checkpoint manifest"),
    ],
    ids=["truncated", "overwritten", "missing", "bad-marker"],
)
def test_a_damaged_newest_checkpoint_is_named_and_skipped(tmp_path, damage, file, message):
    older, newest = _save(tmp_path, 2, 4)
    damage(newest / file)
    said = []
    assert find_checkpoint(tmp_path, said.append) == older
    assert len(said) == 1 and file in said[0] and message in said[0] and "step_00000004" in said[0]
    assert newest.is_dir()  # never deleted
    with pytest.raises(ValueError, match=f"damaged: {file}"):
        find_checkpoint(newest)  # named explicitly: no silent fallback
    _truncate(older / "model.safetensors")
    with pytest.raises(ValueError, match="no intact checkpoint"):
        find_checkpoint(tmp_path, said.append)


def test_an_older_gptcore_checkpoint_without_a_manifest(tmp_path):
    (folder,) = _save(tmp_path, 5)
    (folder / COMPLETE).write_text("5\n")  # the marker gptcore wrote before manifests
    verdict = verify(folder)
    assert verdict.intact and not verdict.manifest and find_checkpoint(tmp_path) == folder
    _truncate(folder / "model.safetensors")  # its safetensors framing is still checked
    assert "model.safetensors" in verify(folder).describe() and "truncated" in verify(folder).describe()


def test_keep_last_keeps_the_newest_intact_and_later_steps(tmp_path):
    _save(tmp_path, 2, 4, 6)
    _flip_a_byte(tmp_path / "step_00000006" / "state.json")
    resumed = find_checkpoint(tmp_path, lambda line: None)
    assert resumed.name == "step_00000004"
    # The resumed run saves steps 5 and 6 with keep_last=1: step 5 never prunes the later (damaged) step 6,
    # and step 6's save moves the damaged one aside instead of deleting it.
    (five,) = _save(tmp_path, 5, keep_last=1)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_"))
    assert names == ["step_00000005", "step_00000006"] and (tmp_path / "latest").read_text().strip() == five.name
    assert find_checkpoint(tmp_path) == five  # latest first, though a later step exists
    (six,) = _save(tmp_path, 6, keep_last=1)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_"))
    assert names == ["step_00000006", "step_00000006.damaged"] and verify(six).intact
    assert not verify(tmp_path / "step_00000006.damaged").intact  # kept as it was found


def test_training_resumes_bit_for_bit_from_the_newest_intact_checkpoint(corpus, tmp_path):
    whole = quiet(small(corpus, train_steps=6)).train()
    save = tmp_path / "run"
    quiet(small(corpus, save=str(save), save_interval=2, train_steps=4)).train()
    _truncate(save / "step_00000004" / "model.safetensors")
    said = []
    resumed = Trainer(load_config(None, small(corpus, save=str(save), save_interval=2, train_steps=6)), said.append)
    assert resumed.step == 2 and resumed.resumed_from.name == "step_00000002"
    assert any("step_00000004" in line and "model.safetensors" in line and "truncated" in line for line in said)
    rest = resumed.train()
    assert [r["loss"] for r in rest if "loss" in r] == [r["loss"] for r in whole if "loss" in r][2:]
    assert (save / "step_00000004.damaged").is_dir()  # the damaged one, moved aside when step 4 was saved again
    _truncate(save / "step_00000004" / "model.safetensors")
    with pytest.raises(ConfigError, match="damaged: model.safetensors"):  # named explicitly: refused
        quiet(small(corpus, load=str(save / "step_00000004"), train_steps=6))


def test_cli_convert_verify(tmp_path, capsys):
    _save(tmp_path, 2, 4)
    assert cli.main(["convert", "verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:2]] == [
        str(tmp_path / "step_00000002"),
        str(tmp_path / "step_00000004"),
    ]
    assert all("intact" in line for line in out[:2]) and out[2].endswith("takes " + str(tmp_path / "step_00000004"))
    _truncate(tmp_path / "step_00000004" / "model.safetensors")
    (tmp_path / "step_00000004" / "state.json").unlink()
    assert cli.main(["convert", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "step_00000004: damaged: model.safetensors" in out and "state.json: missing" in out
    assert out.strip().endswith("takes " + str(tmp_path / "step_00000002"))
    assert cli.main(["convert", "verify", str(tmp_path / "step_00000002" / "model.safetensors")]) == 0
    assert cli.main(["convert", "verify", str(tmp_path / "step_00000004" / "model.safetensors")]) == 1
    assert cli.main(["convert", "verify", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gptcore convert: error:" in err and "Traceback" not in err


def test_verify_checkpoints_of_a_single_folder(tmp_path):
    (folder,) = _save(tmp_path, 1)
    verdicts, chosen = verify_checkpoints(folder)
    assert chosen == folder and [v.intact for v in verdicts] == [True]
