"""One line, exit code 2, no traceback, for what users tried and got a traceback or a silent wrong
run from: tokenizer vocab sizes, --out into missing folders, SFT data without its src key (and
--errors skip keeping nothing), a finetuning tokenizer that is not the model's, recompute=1, a
device that does not exist. And the speeds the logs report: tokens/s per device, generate's tokens/s."""

import json
from pathlib import Path

import pytest
import torch
from test_finetune import _cfg, _records, task  # noqa: F401 (a fixture)
from test_parallel_inference import gptcore_command
from test_training import corpus, small  # noqa: F401 (a fixture)

from gptcore import cli
from gptcore.convert import to_hf
from gptcore.data import train_sentencepiece
from gptcore.model import GPT, GPTConfig
from gptcore.training import ConfigError, Trainer, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line_error(out, command: str) -> str:
    """The one stderr line of a failed command (exit code 2, no traceback)."""
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gptcore {command}: error: "), out.stderr
    return lines[0]


def _text(corpus) -> Path:  # noqa: F811
    return Path(corpus[1]).parent / "text.txt"


# ---- subprocess: what the user sees ---------------------------------------------------------------
def test_cli_errors_are_one_line(corpus, task, tmp_path):  # noqa: F811
    text = str(_text(corpus))
    tok = ("tokenizer", "train", "--input", text, "--model-prefix", str(tmp_path / "t"))
    line = one_line_error(gptcore_command(*tok, "--vocab-size", "20"), "tokenizer")
    assert "--vocab-size 20 is too small: this text needs at least" in line and "--vocab-size >=" in line
    assert "character_coverage" not in line and "trainer_interface" not in line  # sentencepiece's words
    line = one_line_error(gptcore_command(*tok, "--vocab-size", "200000"), "tokenizer")
    assert "--vocab-size 200000 is too large for this text: it yields at most" in line

    line = one_line_error(gptcore_command("train", "recompute=1"), "train")
    assert line.endswith("recompute: 1 is not one of none, full, selective (PaddleNLP's recompute=1 is recompute=full)")
    line = one_line_error(gptcore_command("train", "device=tpu"), "train")
    assert line.endswith("device 'tpu': gptcore runs on auto, cpu, cuda, cuda:N (gpu and gpu:N are cuda)")
    line = one_line_error(gptcore_command("train", "--max_steps", "2", "--frobnicate", "1"), "train")
    assert "unknown option '--frobnicate'" in line

    generate = ("generate", "--checkpoint", task[2], "--tokenizer", task[1], "--prompt", "digits: 1 =")
    line = one_line_error(gptcore_command(*generate, "--device", "xpu"), "generate")
    assert line.endswith("device 'xpu': gptcore runs on auto, cpu, cuda, cuda:N (gpu and gpu:N are cuda)")
    if not torch.cuda.is_available():
        line = one_line_error(gptcore_command(*generate, "--device", "gpu"), "generate")
        assert line.endswith("device 'gpu': no CUDA device is visible; use cpu")

    out = gptcore_command(*generate, "--device", "cpu", "--max-new-tokens", "4", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("digits: 1 =")
    assert out.stderr.startswith("gptcore generate: ") and " tokens/s" in out.stderr and "Traceback" not in out.stderr


def test_sft_data_without_its_src_key(task, tmp_path):  # noqa: F811
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("\n".join(json.dumps({"prompt": r["src"], "tgt": r.get("tgt", "")}) for r in _records(5, 0)))
    args = ("preprocess", "--sft", "--input", str(bad), "--tokenizer", task[1], "--output-prefix", str(tmp_path / "d"))
    line = one_line_error(gptcore_command(*args), "preprocess")
    assert "pairs.jsonl:1: no key 'src' (the record's keys: 'prompt', 'tgt'); name the field with --src-key" in line
    line = one_line_error(gptcore_command(*args, "--errors", "skip"), "preprocess")
    assert line.endswith(f"{tmp_path / 'd'}: nothing written: all 5 records were skipped")
    assert list(tmp_path.iterdir()) == [bad]  # no empty dataset left behind
    assert cli.main([*args, "--src-key", "prompt"]) == 0


# ---- in process ---------------------------------------------------------------------------------
def test_out_into_folders_that_do_not_exist(corpus, tmp_path, capsys):  # noqa: F811
    torch.manual_seed(0)
    to_hf(GPT(GPTConfig(vocab_size=512, n_positions=64, n_layer=1, n_head=1, n_embd=32)), tmp_path / "hf")
    out = tmp_path / "a" / "b" / "model.safetensors"
    assert cli.main(["convert", "hf-import", "--hf-dir", str(tmp_path / "hf"), "--out", str(out)]) == 0
    assert out.is_file()
    assert cli.main(["convert", "hf-export", "--checkpoint", str(out), "--out", str(tmp_path / "c" / "d" / "hf")]) == 0
    assert (tmp_path / "c" / "d" / "hf" / "config.json").is_file()
    prefix = tmp_path / "e" / "f" / "tok"
    args = ["tokenizer", "train", "--input", str(_text(corpus)), "--model-prefix", str(prefix)]
    assert cli.main([*args, "--vocab-size", "400"]) == 0
    assert prefix.with_suffix(".model").is_file()
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    assert (
        cli.main(["convert", "hf-import", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "file" / "m")]) == 2
    )
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_finetune_refuses_a_tokenizer_larger_than_the_model(corpus, task, tmp_path):  # noqa: F811
    big = train_sentencepiece([_text(corpus)], tmp_path / "big", vocab_size=700)
    with pytest.raises(ConfigError, match=r"its vocabulary \(700\) is larger than init_from's model's \(512\)"):
        Trainer(load_config(None, _cfg(task, tokenizer=str(big))), log=lambda line: None)


def test_finetune_refuses_a_tokenizer_other_than_the_checkpoints(corpus, task, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    Trainer(load_config(None, _cfg(task, train_steps=1, save=str(run))), log=lambda line: None).train()
    other = train_sentencepiece([_text(corpus)], tmp_path / "other", vocab_size=512, model_type="unigram")
    with pytest.raises(ConfigError, match=r"tokenizer .*other.model is not the tokenizer saved with init_from"):
        Trainer(load_config(None, _cfg(task, init_from=str(run), tokenizer=str(other))), log=lambda line: None)
    # the same tokenizer (the checkpoint's copy of it, or the original file) is taken
    Trainer(load_config(None, _cfg(task, init_from=str(run))), log=lambda line: None)


def test_devices():
    assert load_config(None, {"device": "gpu"}).device == "cuda"
    assert load_config(None, {"device": "GPU:1"}).device == "cuda:1"
    for name in ("tpu", "xpu", "cuda:x", "cpu:0"):
        with pytest.raises(ConfigError, match=f"device '{name}': gptcore runs on auto, cpu, cuda, cuda:N"):
            load_config(None, {"device": name})


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_a_cuda_device_that_does_not_exist(corpus, capsys):  # noqa: F811
    overrides = [f"{k}={v}" for k, v in small(corpus, device="cuda:7").items()]
    assert cli.main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptcore train: error: device 'cuda:7': ")


def test_log_line_has_tokens_per_second_per_device(corpus):  # noqa: F811
    lines = []
    Trainer(load_config(None, small(corpus, train_steps=2)), log=lines.append).train()
    steps = [line for line in lines if line.startswith("step ")]
    assert steps and all(" tok/s (" in line and " per device) | " in line for line in steps)


def test_generate_json_batch_reports_speed_on_stderr(task, capsys):  # noqa: F811
    args = ["generate", "--checkpoint", task[2], "--tokenizer", task[1], "--device", "cpu", "--json"]
    assert cli.main([*args, "--prompt", "digits: 1 =", "--prompt", "digits: 2 =", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr()
    assert [set(json.loads(line)) for line in out.out.splitlines()] == [
        {"prompt", "text", "tokens", "finish_reason"}
    ] * 2  # stdout: the records alone
    assert out.err.startswith("gptcore generate: 2 prompts, ") and out.err.rstrip().endswith(" tokens/s")
