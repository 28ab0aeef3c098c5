"""Perplexity evaluation: the sliding window against a brute-force reference (one float64 forward per
scored token), a short text against one direct forward, bits per byte and word perplexity against
the hand formulas with a real SentencePiece tokenizer, indexed datasets, `gptcore eval` end to end
and its errors, and a WikiText-2 sample."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptcore import cli
from gptcore.checkpoint import load_for_inference, save_model
from gptcore.data import IndexedDataset, IndexedDatasetBuilder, load_tokenizer, preprocess, train_sentencepiece
from gptcore.evaluate import evaluate_file, evaluate_indexed, evaluate_text, perplexity, resolve_window
from gptcore.model import GPT, GPTConfig

V, T = 97, 32  # the tiny random model's vocabulary and n_positions

TEXT = "\n".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog, café {i * 7} 中文 — and again the fox." for i in range(40)
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(vocab_size=V, n_positions=T, use_gptcore_ops=True, seed=0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab_size, n_positions=n_positions, n_layer=2, n_head=2, n_embd=64, use_gptcore_ops=use_gptcore_ops
    )
    return GPT(config).eval()


def float64_copy(model: GPT) -> GPT:
    copy = GPT(GPTConfig(**(model.config.to_dict() | {"use_gptcore_ops": False}))).double().eval()
    copy.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    return copy


def brute_force_nll(model64: GPT, ids: torch.Tensor, window: int, stride: int) -> tuple[float, list[int]]:
    """Sum of -log p(ids[t] | its context) over t = 1..N-1, one forward per token. Windows over the N - 1
    (input, target) pairs start at k * stride and end at min(k * stride + window, N - 1); target t
    (pair t - 1) is scored by the first window whose end reaches past pair t - 1, with the tokens from
    that window's start up to t as context. Returns the sum and the context lengths."""
    pairs = len(ids) - 1
    total, lengths = 0.0, []
    with torch.no_grad():
        for t in range(1, len(ids)):
            k = 0
            while min(k * stride + window, pairs) < t:
                k += 1
            context = ids[k * stride : t]
            logits, _ = model64(context[None])
            total -= F.log_softmax(logits[0, -1], dim=-1)[ids[t]].item()
            lengths.append(len(context))
    return total, lengths


@pytest.fixture(scope="module")
def models():
    model = tiny()
    return model, float64_copy(model)


@pytest.mark.parametrize("window,stride", [(32, 32), (32, 13), (32, 1), (20, 7)])
def test_sliding_window_equals_brute_force(models, window, stride):
    _, model64 = models
    ids = torch.randint(0, V, (100,), generator=torch.Generator().manual_seed(1))
    expected, lengths = brute_force_nll(model64, ids, window, stride)
    # Every target scored once, within the window, with at least window - stride + 1 tokens of context
    # (window - stride in front of the window's first new target, plus that target's own input).
    assert len(lengths) == 99 and max(lengths) <= window
    assert all(n >= min(t, window - stride + 1) for t, n in enumerate(lengths, 1))
    if stride == 1:  # each token sees the longest context that fits
        assert lengths == [min(t, window) for t in range(1, 100)]
    for batch_size in (1, 4):
        r = perplexity(model64, ids, window, stride, batch_size=batch_size)
        assert r["scored_tokens"] == 99 and r["tokens"] == 100
        assert r["nll"] == pytest.approx(expected, rel=1e-12)
        assert r["token_perplexity"] == pytest.approx(math.exp(expected / 99), rel=1e-12)
        assert r["windows"] == 1 + math.ceil((99 - window) / stride)


def test_gptcore_ops_float32_matches_float64_reference(models):
    model, model64 = models
    ids = np.random.default_rng(2).integers(0, V, 80)
    expected, _ = brute_force_nll(model64, torch.from_numpy(ids), 32, 12)
    r = perplexity(model, ids.tolist(), 32, 12, batch_size=3)  # a list, in batches of 3 windows
    assert r["nll"] == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, ids, 32, 12)["nll"] == pytest.approx(r["nll"], rel=1e-6)  # numpy, batch 4


def test_defaults_and_bad_arguments(models):
    model, _ = models
    assert resolve_window(model.config) == (T, T // 2)
    assert resolve_window(model.config, 10) == (10, 5)
    assert resolve_window(model.config, 1) == (1, 1)
    with pytest.raises(ValueError, match="window 33 exceeds the model's n_positions 32"):
        perplexity(model, [1, 2, 3], window=33)
    with pytest.raises(ValueError, match="stride 9: must be between 1 and the window"):
        perplexity(model, [1, 2, 3], window=8, stride=9)
    with pytest.raises(ValueError, match="stride 0"):
        perplexity(model, [1, 2, 3], stride=0)
    with pytest.raises(ValueError, match="1 token"):
        perplexity(model, [5])
    with pytest.raises(ValueError, match=f"token id {V} at position 2 is outside"):
        perplexity(model, [1, 2, V, 3])
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, [[1, 2], [3, 4]])


def test_short_stream_is_one_forward(models):
    model, _ = models
    model.train()  # perplexity runs in eval mode and puts the mode back
    ids = torch.randint(0, V, (21,), generator=torch.Generator().manual_seed(3))
    r = perplexity(model, ids, window=32, stride=8)
    assert model.training
    model.eval()
    assert r["windows"] == 1 and r["scored_tokens"] == 20
    with torch.no_grad():
        _, loss = model(ids[None, :-1], ids[None, 1:])  # mean cross-entropy of one direct forward
    assert r["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert r["token_perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_uniform_model_has_the_vocabulary_as_perplexity():
    """By hand: zero embeddings give zero logits, p = 1/V for every token, so ppl = V for any window."""
    model = tiny()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    ids = list(range(60))
    for window, stride in [(32, 32), (32, 5), (7, 3)]:
        r = perplexity(model, ids, window, stride)
        assert r["nll"] == pytest.approx(59 * math.log(V), rel=1e-6)
        assert r["token_perplexity"] == pytest.approx(V, rel=1e-6)


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    (d / "train.txt").write_text(TEXT + "\n")
    return load_tokenizer(train_sentencepiece([d / "train.txt"], d / "spm", 400, num_threads=1))


def test_bits_per_byte_and_word_perplexity(spm, capsys):
    model = tiny(vocab_size=spm.vocab_size)
    ids = spm.encode(TEXT)
    assert spm.eod_id is not None and len(ids) > 100
    r = evaluate_text(model, spm, TEXT, window=32, stride=16, progress=True)
    assert "perplexity" in capsys.readouterr().err  # the bar
    nbytes, words = len(TEXT.encode("utf-8")), len(TEXT.split())
    assert nbytes > len(TEXT)  # é, 中文 and — are several bytes
    assert (r["tokens"], r["scored_tokens"], r["bytes"], r["words"]) == (len(ids), len(ids), nbytes, words)
    assert r["prepend_eod"] and r["windows"] == 1 + math.ceil((len(ids) - 32) / 16)
    assert r["nll"] == pytest.approx(perplexity(model, [spm.eod_id, *ids], 32, 16)["nll"], rel=1e-6)
    assert r["token_perplexity"] == pytest.approx(math.exp(r["nll"] / len(ids)), rel=1e-12)
    assert r["bits_per_byte"] == pytest.approx(r["nll"] / (math.log(2) * nbytes), rel=1e-12)
    assert r["word_perplexity"] == pytest.approx(math.exp(r["nll"] / words), rel=1e-12)
    assert r["word_perplexity"] > r["token_perplexity"]  # more tokens than words

    plain = evaluate_text(model, spm, TEXT, window=32, stride=16, prepend_eod=False)
    assert not plain["prepend_eod"] and plain["scored_tokens"] == len(ids) - 1
    assert plain["nll"] == pytest.approx(perplexity(model, ids, 32, 16)["nll"], rel=1e-6)

    head = evaluate_text(model, spm, TEXT, window=32, stride=16, max_tokens=25)
    assert (head["tokens"], head["scored_tokens"]) == (25, 25)
    assert head["bytes"] == len(spm.decode(ids[:25]).encode("utf-8"))
    assert head["words"] == len(spm.decode(ids[:25]).split())

    with torch.no_grad():  # by hand: a uniform model scores ln V nats a token
        model.transformer.wte.weight.zero_()
    r = evaluate_text(model, spm, TEXT, window=32, stride=16)
    nll = len(ids) * math.log(spm.vocab_size)
    assert r["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-6)
    assert r["word_perplexity"] == pytest.approx(spm.vocab_size ** (len(ids) / words), rel=1e-5)


def test_indexed_dataset(spm, tmp_path):
    lines = TEXT.splitlines()
    (tmp_path / "doc.txt").write_text(TEXT + "\n")
    preprocess(tmp_path / "doc.txt", tmp_path / "ds", spm, append_eod=True, progress=False)
    prefix = tmp_path / "ds_text_document"
    tokens = IndexedDataset(prefix).tokens
    assert (tokens == spm.eod_id).sum() == len(lines)
    model = tiny(vocab_size=spm.vocab_size)
    r = evaluate_indexed(model, prefix, spm, window=32, stride=16)
    assert (r["tokens"], r["scored_tokens"], r["source"]) == (len(tokens), len(tokens), str(prefix))
    assert r["nll"] == pytest.approx(perplexity(model, [spm.eod_id, *tokens], 32, 16)["nll"], rel=1e-6)
    # Documents decode to their lines; the eod tokens add no bytes and no words.
    assert r["bytes"] == sum(len(line.encode("utf-8")) for line in lines)
    assert r["words"] == len(TEXT.split())
    assert r["bits_per_byte"] == pytest.approx(r["nll"] / (math.log(2) * r["bytes"]), rel=1e-12)
    assert evaluate_indexed(model, f"{prefix}.idx", spm, window=32, stride=16)["nll"] == r["nll"]

    bare = evaluate_indexed(model, prefix, window=32, stride=16, max_tokens=50)  # no tokenizer: tokens only
    assert (bare["tokens"], bare["scored_tokens"], bare["prepend_eod"]) == (50, 49, False)
    assert bare["bits_per_byte"] is None and bare["word_perplexity"] is None and bare["bytes"] is None
    assert bare["nll"] == pytest.approx(perplexity(model, tokens[:50], 32, 16)["nll"], rel=1e-6)


@pytest.fixture(scope="module")
def checkpoint(spm, tmp_path_factory):
    """A saved tiny model with its tokenizer folder beside it, and a text file."""
    d = tmp_path_factory.mktemp("ckpt")
    (d / "model").mkdir()
    save_model(tiny(vocab_size=spm.vocab_size), d / "model" / "model.safetensors")
    (d / "model" / "tokenizer").mkdir()
    shutil.copy(spm.name.removeprefix("sentencepiece:"), d / "model" / "tokenizer" / "spm.model")
    (d / "text.txt").write_text(TEXT)
    return d


def test_cli_text_and_dataset(checkpoint, tmp_path, capsys):
    d = checkpoint
    out = tmp_path / "res" / "text.json"
    argv = ["--checkpoint", str(d / "model"), "--window", "32", "--stride", "16", "--batch-size", "2"]
    assert cli.main(["eval", *argv, "--text", str(d / "text.txt"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "token perplexity" in printed and "bits per byte" in printed and f"results: {out}" in printed
    got = json.loads(out.read_text())
    model, tok = load_for_inference(d / "model", device="cpu")
    want = evaluate_file(model, tok, d / "text.txt", window=32, stride=16)
    for key in ("tokens", "scored_tokens", "bytes", "words", "window", "stride", "windows", "source"):
        assert got[key] == want[key], key
    for key in ("nll", "token_perplexity", "bits_per_byte", "word_perplexity"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    assert (got["task"], got["model"], got["device"], got["dtype"]) == ("ppl", str(d / "model"), "cpu", "float32")

    preprocess(d / "text.txt", tmp_path / "ds", tok, append_eod=True, progress=False)
    prefix = tmp_path / "ds_text_document"
    out = tmp_path / "ds.json"
    argv += ["--data-prefix", str(prefix), "--max-tokens", "90", "--output", str(out)]
    assert cli.main(["eval", "ppl", *argv]) == 0
    got = json.loads(out.read_text())
    want = evaluate_indexed(model, prefix, tok, window=32, stride=16, max_tokens=90)
    assert (got["tokens"], got["scored_tokens"], got["bytes"]) == (90, 90, want["bytes"])
    assert got["nll"] == pytest.approx(want["nll"], rel=1e-6)


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_cli_weights_in_the_core(checkpoint, tmp_path, weights, capsys):
    """`eval ppl --weights W` is evaluate_file through the core in that format: fp32 equals the PyTorch
    forward's perplexity, int8 moves it a little."""
    d = checkpoint
    out = tmp_path / "w.json"
    argv = ["eval", "ppl", "--checkpoint", str(d / "model"), "--text", str(d / "text.txt"), "--window", "32"]
    assert cli.main([*argv, "--weights", weights, "--output", str(out)]) == 0
    assert f"{weights} weights in gptcore's core" in capsys.readouterr().out
    got = json.loads(out.read_text())
    model, tok = load_for_inference(d / "model", device="cpu")
    assert got["nll"] == pytest.approx(evaluate_file(model, tok, d / "text.txt", window=32, weights=weights)["nll"])
    pytorch = evaluate_file(model, tok, d / "text.txt", window=32)["token_perplexity"]
    rel = 1e-5 if weights == "fp32" else 1e-2
    assert got["token_perplexity"] == pytest.approx(pytorch, rel=rel) and got["weights"] == weights
    with pytest.raises(SystemExit) as usage:
        cli.main([*argv, "--weights", weights, "--nproc-per-node", "2"])
    assert usage.value.code == 2 and "runs in one process on the CPU; drop --nproc-per-node" in capsys.readouterr().err


def test_cli_errors(checkpoint, tmp_path, capsys):
    d = checkpoint
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bare").mkdir()
    shutil.copy(d / "model" / "model.safetensors", tmp_path / "bare" / "model.safetensors")
    with IndexedDatasetBuilder(tmp_path / "big", np.int32) as b:
        b.add_document(np.array([1, 2, 999], dtype=np.int32))
    model, text = ["--checkpoint", str(d / "model")], ["--text", str(d / "text.txt")]
    cases = [
        ([*model, "--text", str(tmp_path / "missing.txt")], "missing.txt: no such text file"),
        (["--checkpoint", str(tmp_path / "nowhere"), *text], "nowhere: no such model file or folder"),
        ([*model, *text, "--window", "64"], "window 64 exceeds the model's n_positions 32"),
        ([*model, *text, "--window", "32", "--stride", "40"], "stride 40: must be between 1 and the window (32)"),
        ([*model, *text, "--stride", "0"], "stride 0"),
        ([*model, *text, "--max-tokens", "0"], "max_tokens 0: must be at least 1"),
        ([*model, "--text", str(tmp_path / "empty.txt")], "the text is 0 token(s)"),
        (["--checkpoint", str(tmp_path / "bare"), *text], "no tokenizer found beside the model; give --tokenizer"),
        ([*model, "--data-prefix", str(tmp_path / "absent")], "absent.bin: no such file"),
        ([*model, "--data-prefix", str(tmp_path / "big")], "token id 999 at position 2 is outside"),
        (["--checkpoint", str(tmp_path / "bare"), "--data-prefix", str(tmp_path / "big")], "token id 999"),
    ]
    for argv, message in cases:
        assert cli.main(["eval", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("gptcore eval: error: ") and message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SystemExit):  # one source, not two
        cli.main(["eval", *model, *text, "--data-prefix", str(tmp_path / "big")])
    with pytest.raises(SystemExit):
        cli.main(["eval", *model])


def test_wikitext2_sample(shared_data, tmp_path):
    """Word-tokenized WikiText-2: more tokens than words, so word perplexity exceeds token perplexity."""
    valid = (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    (tmp_path / "train.txt").write_text(valid[:100_000])
    tok = load_tokenizer(train_sentencepiece([tmp_path / "train.txt"], tmp_path / "spm", 500, num_threads=1))
    model = tiny(vocab_size=tok.vocab_size, n_positions=64)
    r = evaluate_file(model, tok, shared_data / "wikitext-2" / "test.txt", max_tokens=2000, batch_size=8)
    assert (r["tokens"], r["scored_tokens"], r["window"], r["stride"]) == (2000, 2000, 64, 32)
    assert all(math.isfinite(r[k]) for k in ("nll", "token_perplexity", "bits_per_byte", "word_perplexity"))
    assert 1 < r["tokens"] / r["words"] < 10 and r["word_perplexity"] > r["token_perplexity"] > 1
    assert r["bits_per_byte"] == pytest.approx(r["nll"] / (math.log(2) * r["bytes"]), rel=1e-12)
