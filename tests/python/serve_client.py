"""What the serving tests share: a tiny SentencePiece tokenizer and random model, a server on a free
port, and an HTTP client (request, complete, stream). Test modules import the fixtures by name."""

from __future__ import annotations

import http.client
import inspect
import json

import pytest
import torch

from gptcore.data import load_tokenizer, train_sentencepiece
from gptcore.generate import Generator
from gptcore.model import GPT, GPTConfig
from gptcore.serve import Server


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    sources = (inspect.getsource(m) for m in (json, http.client))
    lines = [line for text in sources for line in text.splitlines() if line.strip() and line.isascii()]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    return train_sentencepiece([root / "text.txt"], root / "spm", vocab_size=400)  # >= 356: ASCII + 256 bytes


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    return load_tokenizer(tokenizer_file)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_positions=64, n_layer=2, n_head=2, n_embd=64)).eval()


@pytest.fixture(scope="module")
def generator(model, tokenizer):
    return Generator(model, tokenizer)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    with Server(model, tokenizer, port=0, max_batch=4, max_queue=8, max_prompt_tokens=40) as s:
        yield s


def request(server, method="POST", path="/v1/completions", body=None, headers=None, timeout=60):
    """(status, headers, parsed JSON or raw bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        return resp.status, resp, data
    finally:
        conn.close()


def complete(server, **body):
    status, _, data = request(server, body=body)
    assert status == 200, data
    return data


def stream(server, **body):
    """The parsed events of a streaming completion, and whether it ended with [DONE]."""
    status, resp, data = request(server, body=dict(body, stream=True))
    assert status == 200, data
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    blocks = data.decode().split("\n\n")
    assert blocks[-1] == "" and all(b.startswith("data: ") for b in blocks[:-1]), data
    payloads = [b.removeprefix("data: ") for b in blocks[:-1]]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]
