"""Generation: KV-cache decode against the full forward, greedy against transformers' generate,
batched against one prompt at a time, sampling statistics, stops, streaming, argument errors
and the `gptcore generate` command."""

import dataclasses
import io
import json

import pytest
import torch

from gptcore import cli, convert
from gptcore.checkpoint import load_for_inference, load_model, save_model
from gptcore.data import train_sentencepiece
from gptcore.generate import Engine, Generator, KVCache, Request, SamplingParams, argmax_rows, sample_logits
from gptcore.model import GPT, GPTConfig

VOCAB = 1000


def _hf_greedy(hf, prompt, max_new_tokens, **kwargs):
    """transformers' greedy continuation (an explicit attention mask: token 0 is a prompt token here,
    not padding)."""
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=None, pad_token_id=0, **kwargs,
    )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def _hf_model(seed=0, n_positions=64):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=n_positions, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger than HF's init so greedy paths are not all one repeated token
        for p in hf.parameters():
            p.normal_(0.0, 0.08)
    return hf


@pytest.fixture(scope="module")
def hf():
    return _hf_model()


# Two of length 5: prefilled together in one forward.
PROMPTS = [[5, 6, 7, 8, 9], [100, 200], [3] * 11, [42, 17, 999, 1, 0, 64, 300], [70, 71, 72, 73, 74]]


def test_argmax_rows_is_torch_argmax():
    """The greedy pick (NumPy's argmax on the CPU) agrees with torch.argmax: first of equal maxima,
    a NaN counts as the largest, rows independent; bfloat16 falls back to torch."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 4, (6, 50257), generator=g).float()  # many ties
    logits[2, 17], logits[2, 5] = float("nan"), float("nan")
    logits[3, :] = float("-inf")
    logits[4, 9] = float("inf")
    want = logits.argmax(-1)
    assert want[2] == 5 and want[3] == 0 and want[4] == 9
    assert torch.equal(argmax_rows(logits), want)
    assert torch.equal(argmax_rows(logits[:, ::2]), logits[:, ::2].argmax(-1))  # strided
    assert torch.equal(argmax_rows(logits.bfloat16()), logits.bfloat16().argmax(-1))


@pytest.mark.parametrize("use_gptcore_ops", [True, False])
def test_kv_cache_decode_logits_equal_full_forward(hf, use_gptcore_ops):
    model = convert.from_hf(hf, use_gptcore_ops=use_gptcore_ops).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 500, 501, 502, 3]])
    with torch.no_grad():
        full = model(ids)[0][0]
        cache = KVCache(model, slots=3, max_len=16, device="cpu", dtype=torch.float32)
        prompt = 4
        logits = model.forward_cached(ids[:, :prompt], torch.arange(prompt), cache.prefill_attend([1]))
        torch.testing.assert_close(logits[0], full[prompt - 1], atol=1e-5, rtol=1e-5)
        # One attend for every step, as a CUDA graph replays one capture: it must read the positions
        # and lengths from the cache's buffers at each call.
        attend = cache.decode_attend(2)
        for t in range(prompt, ids.shape[1]):  # one token a step in slot 1; slot 0 is a free row in the batch
            cache.positions[:2, 0] = torch.tensor([0, t])
            cache.lens[:2] = torch.tensor([1, t + 1], dtype=torch.int32)
            step_ids = torch.tensor([[0], [ids[0, t].item()]])
            logits = model.forward_cached(step_ids, cache.positions[:2], attend)
            torch.testing.assert_close(logits[1], full[t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_gptcore_ops", [True, False])
def test_greedy_equals_transformers_generate(hf, use_gptcore_ops):
    model = convert.from_hf(hf, use_gptcore_ops=use_gptcore_ops)
    results = Generator(model).generate(PROMPTS, max_new_tokens=24, temperature=0)
    for prompt, result in zip(PROMPTS, results):
        ref = _hf_greedy(hf, prompt, 24)
        assert result.tokens == ref
        assert result.finish_reason == "length" and result.prompt_tokens == len(prompt)
        assert len(set(ref)) > 3  # a real path, not one token repeated


def test_greedy_with_repetition_penalty_equals_transformers(hf):
    model = convert.from_hf(hf)
    for prompt in PROMPTS:
        ours = Generator(model).generate([prompt], max_new_tokens=20, temperature=0, repetition_penalty=1.3)[0]
        assert ours.tokens == _hf_greedy(hf, prompt, 20, repetition_penalty=1.3)


def test_stop_id_ends_generation_without_the_stop_token(hf):
    model = convert.from_hf(hf)
    gen = Generator(model)
    free = gen.generate([PROMPTS[0]], max_new_tokens=20, temperature=0)[0].tokens
    stop = free[5]
    first = free.index(stop)
    result = gen.generate([PROMPTS[0]], max_new_tokens=20, temperature=0, stop_ids=[stop])[0]
    assert result.tokens == free[:first] and result.finish_reason == "stop"


def test_batched_equals_unbatched_greedy_and_seeded_sampling(hf):
    model = convert.from_hf(hf)
    # max_batch 3 < 4 prompts: the fourth joins the running batch when a slot frees up.
    gen = Generator(model, max_batch=3)
    for kwargs in (dict(temperature=0), dict(temperature=0.9, top_k=50, top_p=0.9, seed=7, repetition_penalty=1.1)):
        batched = gen.generate(PROMPTS, max_new_tokens=16, **kwargs)
        alone = [Generator(model, max_batch=1).generate([p], max_new_tokens=16, **kwargs)[0] for p in PROMPTS]
        assert [r.tokens for r in batched] == [r.tokens for r in alone]
    # Different lengths finishing at different steps (stop ids) leave the others unchanged.
    stop = batched[1].tokens[3]
    with_stop = gen.generate(PROMPTS, max_new_tokens=16, temperature=0.9, top_k=50, top_p=0.9, seed=7,
                             repetition_penalty=1.1, stop_ids=[stop])  # fmt: skip
    for r, full in zip(with_stop, batched):
        assert r.tokens == full.tokens[: len(r.tokens)]
    assert with_stop[1].finish_reason == "stop" and len(with_stop[1].tokens) <= 3


def test_seed_reproducible_and_seeds_differ(hf):
    gen = Generator(convert.from_hf(hf))
    a, b, c = (gen.generate([PROMPTS[0]], max_new_tokens=16, temperature=1.0, seed=s)[0].tokens for s in (1, 1, 2))
    assert a == b and a != c


def _draws(logits, n, **params):
    """n samples of one row of logits, each from its own seeded generator (vectorized over rows)."""
    p = SamplingParams(**params)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    return sample_logits(logits.expand(n, -1), [p] * n, gens)


def _frequencies(tokens, size):
    return torch.bincount(tokens, minlength=size).double() / len(tokens)


LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])


def _binomial_bound(p, n):  # 5 standard deviations of a frequency (plus a floor for p near 0)
    return 5 * (p * (1 - p) / n).sqrt() + 1e-3


def test_temperature_sampling_matches_softmax():
    n = 6000
    for temperature in (0.5, 1.0, 2.0):
        freq = _frequencies(_draws(LOGITS, n, temperature=temperature), 8)
        expected = torch.softmax(LOGITS.double() / temperature, -1)
        assert ((freq - expected).abs() <= _binomial_bound(expected, n)).all(), (temperature, freq, expected)


def test_top_k_sampling_stays_in_top_k_with_renormalized_frequencies():
    n = 6000
    freq = _frequencies(_draws(LOGITS, n, temperature=1.0, top_k=3), 8)
    expected = torch.zeros(8, dtype=torch.float64)
    expected[:3] = torch.softmax(LOGITS[:3].double(), -1)
    assert freq[3:].sum() == 0
    assert ((freq - expected).abs() <= _binomial_bound(expected, n)).all()


def test_top_p_sampling_keeps_the_smallest_set_reaching_p():
    transformers = pytest.importorskip("transformers")
    n = 6000
    probs = torch.softmax(LOGITS.double(), -1)  # cumulative 0.405, 0.650, 0.799, 0.889, ...
    for top_p, kept in ((0.6, 2), (0.7, 3), (0.85, 4), (0.3, 1)):
        freq = _frequencies(_draws(LOGITS, n, temperature=1.0, top_p=top_p), 8)
        expected = torch.zeros(8, dtype=torch.float64)
        expected[:kept] = probs[:kept] / probs[:kept].sum()
        assert freq[kept:].sum() == 0, (top_p, freq)
        assert ((freq - expected).abs() <= _binomial_bound(expected, n)).all(), (top_p, freq, expected)
    # The same nucleus as transformers' TopPLogitsWarper.
    warper = transformers.TopPLogitsWarper(top_p=0.85)
    assert torch.isfinite(warper(None, LOGITS[None].clone())[0]).sum().item() == 4


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    seen_ids = [[1, 2, 3, 40], [0], [7, 7, 9]]
    seen = torch.zeros(3, 50, dtype=torch.bool)
    for row, ids in enumerate(seen_ids):
        seen[row, ids] = True
    params = [SamplingParams(temperature=0, repetition_penalty=1.7)] * 3
    ref = transformers.RepetitionPenaltyLogitsProcessor(1.7)
    for row, ids in enumerate(seen_ids):
        penalized = ref(torch.tensor([ids]), logits[row : row + 1].clone())
        expected = penalized.argmax(-1).item()
        assert sample_logits(logits[row : row + 1], params[:1], [None], seen[row : row + 1]).item() == expected
    # Hand check: a seen token with a positive logit is divided, a negative one multiplied.
    row = torch.tensor([[1.0, 0.9, -0.1]])
    mask = torch.tensor([[True, False, True]])
    assert sample_logits(row, [SamplingParams(temperature=0, repetition_penalty=2.0)], [None], mask).item() == 1


class CharTokenizer:
    """id i <-> one letter: enough for stop strings and streaming."""

    name, eod_id, pad_id, vocab_size = "chars", None, None, VOCAB

    def encode(self, text):
        return [ord(c) - ord("a") for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_cut_the_text_and_stream_matches(hf):
    gen = Generator(convert.from_hf(hf), CharTokenizer())
    free = gen.generate("hello", max_new_tokens=30, temperature=0)[0]
    assert free.text == CharTokenizer().decode(free.tokens)
    stop = free.text[10:13]
    cut = free.text.index(stop)
    result = gen.generate("hello", max_new_tokens=30, temperature=0, stop=[stop, "nevermatches"])[0]
    assert result.text == free.text[:cut] and result.finish_reason == "stop"
    chunks = list(gen.stream("hello", max_new_tokens=30, temperature=0, stop=[stop]))
    assert "".join(c.text for c in chunks) == free.text[:cut]
    assert all(stop not in c.text for c in chunks) and chunks[-1].finish_reason == "stop"


def test_stream_yields_tokens_as_they_are_produced(hf):
    gen = Generator(convert.from_hf(hf), CharTokenizer())
    stream = gen.stream("hello", max_new_tokens=20, temperature=0)
    first = next(stream)
    assert first.token is not None and first.finish_reason is None
    assert len(gen.engine.active) == 1 and len(gen.engine.active[0].tokens) == 1  # nothing computed ahead
    rest = list(stream)
    tokens = [first.token] + [c.token for c in rest]
    assert tokens == gen.generate("hello", max_new_tokens=20, temperature=0)[0].tokens
    assert rest[-1].finish_reason == "length" and not gen.engine.active
    # A consumer that stops early frees its slot.
    stream = gen.stream("hello", max_new_tokens=20, temperature=0)
    next(stream)
    stream.close()
    assert not gen.engine.active and gen.engine.free_slots() == gen.max_batch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=VOCAB + 1), "top_k must be an integer in"),
        (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(logprobs=21), r"logprobs must be an integer in \[0, 20\]"),
        (dict(prompt_logprobs=-1), r"prompt_logprobs must be an integer in \[0, 20\]"),
        (dict(max_new_tokens=60), "exceeds the model's 64 positions"),
        (dict(stop_ids=[VOCAB]), "outside the vocabulary"),
        (dict(nucleus=0.9), "unknown generation parameter 'nucleus'"),
    ],
)
def test_bad_arguments_stop_with_a_message(hf, kwargs, message):
    gen = Generator(convert.from_hf(hf))
    with pytest.raises(ValueError, match=message):
        gen.generate([PROMPTS[0]], **({"max_new_tokens": 8} | kwargs))


def test_bad_prompts_stop_with_a_message(hf):
    gen = Generator(convert.from_hf(hf))
    with pytest.raises(ValueError, match="empty prompt"):
        gen.generate([[]], max_new_tokens=4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen.generate([[1, VOCAB]], max_new_tokens=4)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        gen.generate("text", max_new_tokens=4)
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        Engine(gen.model).run([Request([1, 2], SamplingParams(max_new_tokens=2, stop=("x",)))])
    # Nothing was left behind in the engine by the failures.
    assert gen.engine.free_slots() == gen.max_batch


@pytest.mark.cuda
def test_cuda_graph_decode_equals_eager_on_cuda(hf):
    """Graph replays give the eager tokens, also after other graphs were captured and the memory
    freed in between was reused (a temporary read by a graph once made replays index garbage);
    every token is the full forward's argmax up to bf16 near-ties (a random model ties often)."""
    model = convert.from_hf(hf).cuda().to(torch.bfloat16)
    eager = Generator(model, cuda_graph=False).generate(PROMPTS, max_new_tokens=16, temperature=0)
    eager_alone = Generator(model, cuda_graph=False).generate(PROMPTS[:1], max_new_tokens=16, temperature=0)
    graphed_gen = Generator(model, cuda_graph=True)
    first = graphed_gen.generate(PROMPTS[:1], max_new_tokens=16, temperature=0)  # captures bucket 1
    graphed = graphed_gen.generate(PROMPTS, max_new_tokens=16, temperature=0)  # buckets up to 8
    for _ in range(3):  # churn the caching allocator's free blocks with large values
        torch.full((1 << 20,), 2**30, dtype=torch.int64, device="cuda").sum().item()
    again = graphed_gen.generate(PROMPTS[:1], max_new_tokens=16, temperature=0)  # replays bucket 1
    assert [r.tokens for r in graphed] == [r.tokens for r in eager]
    assert first[0].tokens == again[0].tokens == eager_alone[0].tokens
    ref = convert.from_hf(hf).cuda().to(torch.bfloat16)
    for prompt, result in zip(PROMPTS, eager):
        logits = ref(torch.tensor([prompt + result.tokens[:-1]], device="cuda"))[0][0, len(prompt) - 1 :].float()
        chosen = logits.gather(-1, torch.tensor(result.tokens, device="cuda")[:, None])[:, 0]
        assert (logits.max(-1).values - chosen).max().item() <= 0.1  # bench_generate's bf16 tie tolerance


# ---- the command -----------------------------------------------------------------------------------
TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "To be or not to be, that is the question. All that glitters is not gold.\n"
) * 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model file with a SentencePiece tokenizer folder beside it, and an HF folder
    of the same weights with the tokenizer inside."""
    root = tmp_path_factory.mktemp("gen")
    (root / "text.txt").write_text(TEXT)
    spm = train_sentencepiece([root / "text.txt"], root / "spm", vocab_size=512)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_positions=64, n_layer=2, n_head=2, n_embd=64))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "spm.model").write_bytes(spm.read_bytes())
    save_model(model, root / "model.safetensors")
    convert.to_hf(model, root / "hf")
    (root / "hf" / "spm.model").write_bytes(spm.read_bytes())
    return root


def _run(capsys, *argv):
    code = cli.main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_generates_from_model_file_and_hf_folder_alike(checkpoint, capsys):
    args = ["--prompt", "To be or", "--max-new-tokens", "12", "--temperature", "0", "--ignore-eos"]
    code, out, _ = _run(capsys, "--checkpoint", str(checkpoint / "model.safetensors"), *args)
    assert code == 0 and out.startswith("To be or")
    code, out_hf, _ = _run(capsys, "--checkpoint", str(checkpoint / "hf"), *args)
    assert code == 0 and out_hf == out
    model, tokenizer = load_for_inference(checkpoint / "model.safetensors")
    expected = Generator(model, tokenizer).generate("To be or", max_new_tokens=12, temperature=0, stop_ids=())[0]
    assert out.rstrip("\n") == "To be or" + expected.text


def test_cli_prompt_file_batch_as_json(checkpoint, capsys, tmp_path):
    prompts = ["The quick", "", "All that", "A stitch"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    code, out, _ = _run(
        capsys, "--checkpoint", str(checkpoint), "--prompt-file", str(tmp_path / "prompts.txt"),
        "--max-new-tokens", "8", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--json",
    )  # fmt: skip
    # `checkpoint` (the folder) holds model.safetensors: read as a model file.
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in records] == ["The quick", "All that", "A stitch"]
    model, tokenizer = load_for_inference(checkpoint / "model.safetensors")
    gen = Generator(model, tokenizer)
    for r in records:
        alone = gen.generate(r["prompt"], max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)[0]
        assert r["tokens"] == alone.tokens and r["text"] == alone.text


def test_cli_interactive_reads_prompts_until_blank_line(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("The quick\nAll that\n\nnot read\n"))
    code, out, _ = _run(
        capsys, "--checkpoint", str(checkpoint / "model.safetensors"), "--interactive",
        "--max-new-tokens", "6", "--temperature", "0",
    )  # fmt: skip
    assert code == 0 and "The quick" in out and "All that" in out and "not read" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", "x", "--temperature", "-1"], "temperature must be >= 0"),
        (["--prompt", "x", "--top-p", "0"], "top_p must be in"),
        (["--prompt", "x", "--top-k", "100000"], "top_k must be an integer in"),
        (["--prompt", "x", "--max-new-tokens", "64"], "exceeds the model's 64 positions"),
        (["--prompt", ""], "empty prompt"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_message(checkpoint, capsys, argv, message):
    code, _, err = _run(capsys, "--checkpoint", str(checkpoint / "model.safetensors"), *argv)
    assert code == 2 and err.startswith("gptcore generate: error:") and message.split("(")[0] in err
    assert "Traceback" not in err


def test_cli_missing_checkpoint_and_tokenizer(checkpoint, capsys, tmp_path):
    code, _, err = _run(capsys, "--checkpoint", str(tmp_path / "nothing"), "--prompt", "x")
    assert code == 2 and "no such model file or folder" in err
    convert.to_hf(load_model(checkpoint / "model.safetensors"), tmp_path / "bare")
    code, _, err = _run(capsys, "--checkpoint", str(tmp_path / "bare"), "--prompt", "x")
    assert code == 2 and "no tokenizer found" in err


def test_sample_helper_keeps_the_training_mode(hf):
    from gptcore.generate import sample

    model = convert.from_hf(hf).train()
    ids = sample(model, [1, 2, 3], 5, temperature=0)
    assert model.training and ids == _hf_greedy(hf, [1, 2, 3], 5)
    idx = torch.tensor([[1, 2, 3] + ids])
    with torch.no_grad():  # the weights are untouched: the logits are still transformers'
        torch.testing.assert_close(model.eval()(idx)[0], hf(idx).logits, rtol=0, atol=1e-4)


class ByteTokenizer:
    """id i < 256 <-> byte i: characters of several bytes arrive over several tokens."""

    name, eod_id, pad_id, vocab_size = "bytes", None, None, 256

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_partial_characters_and_possible_stop_strings():
    from gptcore.generate import _TextStream

    text = "a é€ 😀 b STOP tail"
    stream = _TextStream(ByteTokenizer(), list(b"> "), ("STOP",))
    deltas, stopped = [], False
    for byte in text.encode():
        delta, stopped = stream.push(byte)
        deltas.append(delta)
        assert "\ufffd" not in delta and "S" not in delta  # nothing half-made or possibly a stop string
        if stopped:
            break
    assert stopped and "".join(deltas) == "a é€ 😀 b " == stream.text
    # Without stop strings, invalid bytes that stay invalid still come out at the end.
    stream = _TextStream(ByteTokenizer(), [1], ())
    out = "".join(stream.push(b)[0] for b in b"x\xff\xfe") + stream.flush()
    assert out == "x\ufffd\ufffd"


def test_scores_against_float64_and_the_same_in_any_batch(hf):
    """prompt_logprobs and logprobs against HF's float64 forward of the same tokens; the scored prompts
    of a Generator batch (prefilled together when unscored: two of PROMPTS have one length) equal
    each one alone, bitwise; max_new_tokens=0 scores the prompt without generating."""
    model = convert.from_hf(hf).eval()
    gen = Generator(model)
    kwargs = dict(max_new_tokens=5, temperature=0.9, seed=3, logprobs=3, prompt_logprobs=2)
    batch = gen.generate(PROMPTS, **kwargs)
    alone = [gen.generate([p], **kwargs)[0] for p in PROMPTS]
    assert batch == alone
    reference = hf.double()
    try:
        for prompt, out in zip(PROMPTS, batch):
            ids = prompt + out.tokens
            with torch.no_grad():
                logprobs = torch.log_softmax(reference(torch.tensor([ids])).logits[0], -1)
            want = [logprobs[t - 1, ids[t]].item() for t in range(1, len(ids))]
            got = [s.logprob for s in out.prompt_logprobs[1:] + out.logprobs]
            assert out.prompt_logprobs[0] is None and got == pytest.approx(want, abs=2e-5)
            top = [[t for t, _ in s.top] for s in out.prompt_logprobs[1:]]
            assert top == logprobs[: len(prompt) - 1].topk(2, dim=-1).indices.tolist()
    finally:
        hf.float()
    scored = gen.generate(PROMPTS[:2], max_new_tokens=0, prompt_logprobs=0)
    assert [s.tokens for s in scored] == [[], []] and [s.finish_reason for s in scored] == ["length"] * 2
    assert [s.prompt_logprobs for s in scored] == [
        [None] + [dataclasses.replace(s, top=()) for s in out.prompt_logprobs[1:]] for out in batch[:2]
    ]
