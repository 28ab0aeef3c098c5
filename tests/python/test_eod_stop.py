"""End of document: generation stops at the tokenizer's end-of-document token by default and goes on
past it with ignore_eos, in `Generator`, in `gptcore generate` and in the HTTP server (`Server` and a
`gptcore serve` process). The model is built so that greedy decoding picks one chosen token at
every step (LN_f's weight zero, its bias a scaled copy of the token's embedding), so the expected
tokens are known without running it."""

from __future__ import annotations

import http.client
import inspect
import json
import json.decoder
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gptcore
from gptcore import cli
from gptcore.checkpoint import save_model
from gptcore.data import load_tokenizer, train_sentencepiece
from gptcore.generate import Generator
from gptcore.model import GPT, GPTConfig
from gptcore.serve import Server

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW = 5  # max new tokens asked for


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("eod_spm")
    lines = [line for line in inspect.getsource(json.decoder).splitlines() if line.strip() and line.isascii()]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    return train_sentencepiece([root / "text.txt"], root / "spm", vocab_size=400)  # >= 356: ASCII + 256 bytes


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    tok = load_tokenizer(tokenizer_file)
    assert tok.eod_id is not None
    return tok


def always(token: int, vocab_size: int) -> GPT:
    """A GPT whose logits at every position are largest at `token`: LN_f's output is its bias
    whatever the input, and the bias is the token's embedding, made the longest row of wte."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, n_positions=64, n_layer=1, n_head=1, n_embd=32))
    with torch.no_grad():
        wte, ln_f = model.transformer.wte.weight, model.transformer.ln_f
        wte[token] *= 50
        ln_f.weight.zero_()
        ln_f.bias.copy_(wte[token])
        logits, _ = model(torch.tensor([[1, 2, 3]]))
    assert logits[0].argmax(-1).tolist() == [token] * 3  # the construction does what it says
    return model.eval()


@pytest.fixture(scope="module")
def eod_model(tokenizer):
    return always(tokenizer.eod_id, tokenizer.vocab_size)


def other_token(tokenizer) -> int:
    return next(i for i in range(3, tokenizer.vocab_size) if i != tokenizer.eod_id)


# ---- Generator ---------------------------------------------------------------------------------------
def test_generator_stops_at_end_of_document_by_default(eod_model, tokenizer):
    gen = Generator(eod_model, tokenizer)
    result = gen.generate("the cat", max_new_tokens=NEW, temperature=0)[0]
    assert result.tokens == [] and result.finish_reason == "stop" and result.text == ""
    chunks = list(gen.stream("the cat", max_new_tokens=NEW, temperature=0))
    assert [c.finish_reason for c in chunks] == ["stop"] and chunks[0].token is None


def test_generator_goes_past_end_of_document_without_stop_ids(eod_model, tokenizer):
    gen = Generator(eod_model, tokenizer)
    result = gen.generate("the cat", max_new_tokens=NEW, temperature=0, stop_ids=())[0]
    assert result.tokens == [tokenizer.eod_id] * NEW and result.finish_reason == "length"


def test_generator_without_tokenizer_has_no_default_stop(eod_model, tokenizer):
    result = Generator(eod_model).generate([1, 2, 3], max_new_tokens=NEW, temperature=0)[0]
    assert result.tokens == [tokenizer.eod_id] * NEW and result.finish_reason == "length"


def test_generator_explicit_stop_id_replaces_the_default(tokenizer):
    token = other_token(tokenizer)
    gen = Generator(always(token, tokenizer.vocab_size), tokenizer)
    assert gen.generate("the", max_new_tokens=NEW, temperature=0)[0].tokens == [token] * NEW
    result = gen.generate("the", max_new_tokens=NEW, temperature=0, stop_ids=[token])[0]
    assert result.tokens == [] and result.finish_reason == "stop"


# ---- gptcore generate --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory, eod_model, tokenizer_file):
    root = tmp_path_factory.mktemp("eod_model")
    save_model(eod_model, root / "model.safetensors")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "spm.model").write_bytes(Path(tokenizer_file).read_bytes())
    return root / "model.safetensors"


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("ignore_eos", [False, True], ids=["default", "ignore-eos"])
def test_cli_generate_stops_at_end_of_document_unless_ignore_eos(model_file, tokenizer, capsys, ignore_eos, weights):
    argv = ["generate", "--checkpoint", str(model_file), "--prompt", "the cat", "--temperature", "0"]
    argv += ["--max-new-tokens", str(NEW), "--json", "--device", "cpu", "--weights", weights]
    argv += ["--ignore-eos"] * ignore_eos
    assert cli.main(argv) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    if ignore_eos:
        assert record["tokens"] == [tokenizer.eod_id] * NEW and record["finish_reason"] == "length"
    else:
        assert record["tokens"] == [] and record["finish_reason"] == "stop"


# ---- the server --------------------------------------------------------------------------------------
def post(host, port, body, timeout=60):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode())
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def completion(server, **body):
    status, data = post(server.host, server.port, dict(body, return_token_ids=True, temperature=0))
    assert status == 200, data
    (choice,) = data["choices"]
    return choice["token_ids"], choice["finish_reason"], data["usage"]["completion_tokens"]


def test_server_stops_at_end_of_document_unless_ignore_eos(eod_model, tokenizer):
    eod = tokenizer.eod_id
    with Server(eod_model, tokenizer, port=0, max_batch=2) as server:
        assert completion(server, prompt="the cat", max_tokens=NEW) == ([], "stop", 0)
        assert completion(server, prompt="the cat", max_tokens=NEW, ignore_eos=True) == ([eod] * NEW, "length", NEW)
        # stop_token_ids still apply with ignore_eos: it only drops the default end-of-document stop
        got = completion(server, prompt="the cat", max_tokens=NEW, ignore_eos=True, stop_token_ids=[eod])
        assert got == ([], "stop", 0)


def test_server_stop_token_ids(tokenizer):
    token = other_token(tokenizer)
    with Server(always(token, tokenizer.vocab_size), tokenizer, port=0, max_batch=2) as server:
        assert completion(server, prompt="the", max_tokens=NEW) == ([token] * NEW, "length", NEW)
        assert completion(server, prompt="the", max_tokens=NEW, stop_token_ids=[token]) == ([], "stop", 0)
        assert completion(server, prompt="the", max_tokens=NEW, stop_token_ids=[token + 1]) == (
            [token] * NEW,
            "length",
            NEW,
        )


def test_cli_serve_stops_at_end_of_document_and_exits_cleanly_on_sigterm(model_file, tokenizer):
    args = [sys.executable, "-m", "gptcore", "serve", "--checkpoint", str(model_file), "--port", "0"]
    args += ["--device", "cpu"]
    package_root = str(Path(gptcore.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "at http://127.0.0.1:" in line, line + proc.stderr.read()
        host, port = line.split(" at http://")[-1].split("/")[0].split(":")
        body = dict(prompt="the cat", max_tokens=NEW, temperature=0, return_token_ids=True)
        status, data = post(host, int(port), body)
        assert status == 200 and data["choices"][0]["token_ids"] == [], data
        assert data["choices"][0]["finish_reason"] == "stop"
        status, data = post(host, int(port), dict(body, ignore_eos=True))
        assert status == 200 and data["choices"][0]["token_ids"] == [tokenizer.eod_id] * NEW, data
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err
