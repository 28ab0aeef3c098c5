"""Generation in the core (gc_dense_fwd, gc_gpt_decode, gptcore.core_decoder) against float64
PyTorch: the weight-only products for every format and layout, row count and odd size; the packed
layout against its definition; the whole decoder over prefills, decode steps and ragged batches;
the kernels of each instruction set; bad input."""

import os
import subprocess
import sys

import pytest
import torch

from gptcore import _C
from gptcore.core_decoder import CoreDecoder, dequantize, pack, quantize, unsupported
from gptcore.generate import Engine, Generator
from gptcore.model import GPT, GPTConfig
from gptcore.ops._views import view

FORMATS = ("fp32", "bf16", "int8")
# Each format in each layout it comes in: bfloat16 and int8 also packed (gc_dense_pack).
STORED = ("fp32", "bf16", "bf16-packed", "int8", "int8-packed")


def dequantized(weight: torch.Tensor, weights: str) -> torch.Tensor:
    """The float64 weight a format stores (what the kernels must multiply by)."""
    return dequantize(*quantize(weight, weights))


def dense(weight: torch.Tensor, bias, weights: str, x: torch.Tensor) -> torch.Tensor:
    """gc_dense_fwd with the weight stored as `weights` (one of STORED)."""
    weights, _, layout = weights.partition("-")
    stored, scale = quantize(weight, weights)
    y = torch.empty(x.shape[0], weight.shape[0])
    if layout == "packed":
        stored = pack(stored)  # kept alive here: the view does not own it
        d = _C.Dense(view(stored, "w"), view(scale, "s"), view(bias, "b"), packed_shape=tuple(weight.shape))
    else:
        d = _C.Dense(view(stored, "w"), view(scale, "s"), view(bias, "b"))
    _C.dense_fwd(d, view(x, "x"), view(y, "y"))
    return y


# ---- quantization --------------------------------------------------------------------------------
def test_quantize_formats():
    w = torch.randn(37, 70) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different size
    w[5] = 0  # an all-zero row keeps a finite scale
    bf16, none = quantize(w, "bf16")
    assert none is None and torch.equal(bf16, w.to(torch.bfloat16))
    q, scale = quantize(w, "int8")
    assert q.dtype == torch.int8 and scale.shape == (37,) and torch.isfinite(scale).all()
    assert torch.equal(q.abs().amax(1)[torch.arange(37) != 5], torch.full((36,), 127, dtype=torch.int8))
    err = (q.double() * scale.double()[:, None] - w.double()).abs()
    assert (err <= scale.double()[:, None] / 2 + 1e-12).all()  # round to nearest, within half a step


# ---- the packed layout ---------------------------------------------------------------------------
def packed_by_definition(w: torch.Tensor) -> torch.Tensor:
    """gptcore/decode.h's GC_DENSE_PACKED order built from its text with tensor ops: rows padded to
    groups of 4, columns to chunks of 32; [group, chunk, row in group, value]; bfloat16 values j and
    j + 16 of a chunk side by side."""
    N, K = w.shape
    padded = torch.zeros(-(-N // 4) * 4, -(-K // 32) * 32, dtype=w.dtype)
    padded[:N, :K] = w
    blocks = padded.view(-1, 4, padded.shape[1] // 32, 32).permute(0, 2, 1, 3)  # [g, c, r, j]
    if w.dtype == torch.bfloat16:
        blocks = blocks.reshape(*blocks.shape[:3], 2, 16).transpose(3, 4)  # [g, c, r, j % 16, j // 16]
    return blocks.reshape(-1)


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("N,K", [(8, 64), (70, 768), (19, 100), (3, 37), (1, 1)])
def test_pack_follows_the_documented_order(weights, N, K):
    stored, _ = quantize(torch.randn(N, K), weights)
    packed = pack(stored)
    assert packed.numel() == _C.dense_packed_numel(N, K) == -(-N // 4) * 4 * -(-K // 32) * 32
    assert torch.equal(
        packed.view(torch.int16 if weights == "bf16" else torch.int8),
        packed_by_definition(stored).view(torch.int16 if weights == "bf16" else torch.int8),
    )


def test_packed_int8_sums_the_same_int32_lanes_as_rows():
    """With K a multiple of 32 a packed int8 row sums exactly what the row layout sums (gptcore/
    decode.h): the results are bitwise equal, for decode rows and for prefill panels alike."""
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(70, 768, generator=g) * 0.05, torch.randn(70, generator=g)
    for M in (1, 3, 9):
        x = torch.randn(M, 768, generator=g)
        assert torch.equal(dense(w, b, "int8", x), dense(w, b, "int8-packed", x))


# ---- gc_dense_fwd --------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", STORED)
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 33])
@pytest.mark.parametrize("N,K", [(70, 768), (19, 100), (300, 37)])
def test_dense_against_float64(weights, M, N, K):
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    w, b = torch.randn(N, K, generator=g) * 0.05, torch.randn(N, generator=g)
    x = torch.randn(M, K, generator=g)
    want = x.double() @ dequantized(w, weights.split("-")[0]).T + b.double()
    got = dense(w, b, weights, x)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * K**0.5)


@pytest.mark.parametrize("weights", STORED)
def test_dense_rows_do_not_depend_on_each_other(weights):
    """Up to DENSE_STREAM_ROWS rows, each row's result is bitwise its result alone."""
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(90, 200, generator=g), torch.randn(_C.DENSE_STREAM_ROWS, 200, generator=g)
    together = dense(w, None, weights, x)
    for m in range(x.shape[0]):
        assert torch.equal(together[m], dense(w, None, weights, x[m : m + 1])[0])


def rounded_x(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] as the int8 kernels multiply it (gptcore/decode.h), in float64: each row rounded to
    int16 per block of 1024 values, q = round(x * (32767 / max|x|)) and scale = max|x| / 32767, both
    in float32 as the kernels compute them (so a value near a half step rounds the same way)."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    for k0 in range(0, x.shape[1], 1024):
        block = x[:, k0 : k0 + 1024].float()
        amax = block.abs().amax(1, keepdim=True)
        q = torch.round(block * torch.where(amax > 0, 32767 / amax, 0))
        out[:, k0 : k0 + 1024] = q.double() * (amax / 32767).double()
    return out


@pytest.mark.parametrize("layout", ["rows", "packed"])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("K", [2500, 768, 37])  # blocks of 1024 with a partial last one; one short block
def test_int8_streaming_multiplies_x_rounded_to_int16_blocks(M, K, layout):
    """Up to DENSE_STREAM_ROWS rows, int8 products take x rounded to int16 per block of 1024: the
    result matches the float64 product with x rounded that way (tightly), and differs from the
    exact x by no more than the documented bound (half a step of each block's scale per value)."""
    g = torch.Generator().manual_seed(K + M)
    w, b = torch.randn(90, K, generator=g) * 0.05, torch.randn(90, generator=g)
    x = torch.randn(M, K, generator=g)
    x[:, ::97] *= 300  # an outlier in each block: coarse steps, so the rounding shows
    stored = dequantized(w, "int8")
    got = dense(w, b, "int8" if layout == "rows" else "int8-packed", x).double()
    want = rounded_x(x) @ stored.T + b.double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    exact = x.double() @ stored.T + b.double()
    blocks = range(0, K, 1024)
    steps = torch.cat([x[:, k : k + 1024].abs().amax(1, keepdim=True).expand(-1, min(1024, K - k)) for k in blocks], 1)
    bound = (steps.double() / 32767 / 2) @ stored.abs().T
    assert ((got - exact).abs() <= bound * 1.01 + 1e-4).all()
    assert not torch.allclose(exact, want, rtol=1e-5, atol=1e-4)  # the first check tells the two apart


@pytest.mark.parametrize("weights", ["int8", "int8-packed"])
def test_int8_non_finite_x_gives_nan(weights):
    """An infinite or NaN x makes the int8 outputs of its row NaN, as float32 products would."""
    w = torch.randn(40, 300) * 0.05
    x = torch.randn(3, 300)
    x[0, 7], x[1, 290] = float("inf"), float("nan")
    y = dense(w, None, weights, x)
    assert y[0].isnan().all() and y[1].isnan().all() and y[2].isfinite().all()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


KERNELS = [
    "generic",
    pytest.param("avx2", marks=pytest.mark.skipif(not {"avx2", "fma"} <= _cpu_flags(), reason="no AVX2 here")),
    pytest.param("avx512", marks=pytest.mark.skipif("avx512bw" not in _cpu_flags(), reason="no AVX-512 here")),
]


@pytest.mark.parametrize("kernels", KERNELS)
def test_each_instruction_set_against_float64(kernels):
    """GPTCORE_CPU_KERNELS picks each kernel (chosen once per process, so in a fresh one)."""
    script = f"""
import torch, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_core_decoder import STORED, dense, dequantized
g = torch.Generator().manual_seed(0)
for weights in STORED:
    for M in (1, 2, 3):
        w, b = torch.randn(45, 300, generator=g) * 0.05, torch.randn(45, generator=g)
        x = torch.randn(M, 300, generator=g)
        want = x.double() @ dequantized(w, weights.split("-")[0]).T + b.double()
        torch.testing.assert_close(dense(w, b, weights, x).double(), want, rtol=1e-5, atol=2e-4)
print("ok")
"""
    env = dict(os.environ, GPTCORE_CPU_KERNELS=kernels)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_dense_bad_input_is_one_line():
    w, x = torch.randn(8, 16), torch.randn(2, 16)
    y = torch.empty(2, 8)
    q, scale = quantize(w, "int8")
    with pytest.raises(_C.Error, match="int8 weights need one float32 scale per output row"):
        _C.dense_fwd(_C.Dense(view(q, "w"), None, None), view(x, "x"), view(y, "y"))
    with pytest.raises(_C.Error, match=r"'x' has shape \[2, 15\]; expected \[M, K = 16\]"):
        _C.dense_fwd(_C.Dense(view(w, "w"), None, None), view(torch.randn(2, 15), "x"), view(y, "y"))
    with pytest.raises(_C.Error, match="dtype"):
        _C.dense_fwd(_C.Dense(view(w.half(), "w"), None, None), view(x, "x"), view(y, "y"))
    fp32_packed = _C.Dense(view(torch.zeros(_C.dense_packed_numel(8, 16)), "w"), None, None, packed_shape=(8, 16))
    with pytest.raises(_C.Error, match="only bfloat16 and int8 weights are packed"):
        _C.dense_fwd(fp32_packed, view(x, "x"), view(y, "y"))
    with pytest.raises(ValueError, match="1-D with dense_packed_numel"):
        _C.Dense(view(q, "w"), view(scale, "s"), None, packed_shape=(8, 16))
    with pytest.raises(_C.Error, match=r"gc_dense_pack: 'packed' has shape \[128\]; expected \[256\]"):
        _C.dense_pack(view(q, "w"), view(torch.empty(128, dtype=torch.int8), "packed"))
    with pytest.raises(_C.Error, match="gc_dense_pack: 'weight' has dtype float32"):
        _C.dense_pack(view(w, "w"), view(torch.empty(256), "packed"))


# ---- the decoder ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    """A small GPT with non-trivial layer norms and biases (head dim 32, odd vocabulary, padded rows)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=301, n_positions=96, n_layer=3, n_head=2, n_embd=64, pad_vocab_multiple=64))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * (0.5 if ".ln_" in name else 0.05) + (1.0 if "ln" in name else 0.0))
    return m.eval()


def reference(model: GPT, weights: str) -> GPT:
    """A float64 copy of the model with every matrix the core reads replaced by what the format stores."""
    ref = GPT(GPTConfig(**(model.config.to_dict() | {"use_gptcore_ops": False}))).double().eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block in ref.transformer.h.values():
            for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                linear.weight.copy_(dequantized(linear.weight.float(), weights))
    return ref


def reference_logits(ref: GPT, weights: str, tokens: list[int], vocab: int) -> torch.Tensor:
    """[T, vocab] float64 logits of one sequence; the tied head reads the format's wte."""
    with torch.no_grad():
        t = ref.transformer
        x = ref.final_norm(ref.blocks(t.wte(torch.tensor([tokens])) + t.wpe(torch.arange(len(tokens)))))[0]
        head = dequantized(t.wte.weight[:vocab].float(), weights)
        return x @ head.T


@pytest.mark.parametrize("stored", STORED)
def test_prefill_then_decode_against_float64(model, stored):
    """A prompt prefilled, then tokens one at a time, in slot 2 of 4: every logit vs float64."""
    c = model.config
    weights, _, layout = stored.partition("-")
    tokens = torch.randint(0, c.vocab_size, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    decoder = CoreDecoder(model, slots=4, max_len=64, weights=weights, packed=layout == "packed")
    got = [decoder.forward(tokens[:25], [2], [0], [25], every_position=True)]
    got += [decoder.forward([tokens[t]], [2], [t], [1]) for t in range(25, 40)]
    want = reference_logits(reference(model, weights), weights, tokens, c.vocab_size)
    torch.testing.assert_close(torch.cat(got).double(), want, rtol=1e-4, atol=1e-4)
    # The cache holds the float64 model's keys: the last position of layer 0, head 1.
    assert decoder.k_cache[0, 2, 1, 39].abs().sum() > 0 and decoder.k_cache[0, 2, 1, 40:].abs().sum() == 0


def test_ragged_batch_equals_each_sequence_alone(model):
    """Prefills of different lengths and decode steps of other slots in one call == each alone; a
    decode batch of up to DENSE_STREAM_ROWS tokens is bitwise each one alone."""
    c = model.config
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, c.vocab_size, (n,), generator=g).tolist() for n in (7, 1, 30, 12)]
    alone = CoreDecoder(model, slots=4, max_len=64)
    together = CoreDecoder(model, slots=4, max_len=64)
    want = [alone.forward(p, [s], [0], [len(p)]) for s, p in enumerate(prompts)]
    got = together.forward([t for p in prompts for t in p], [0, 1, 2, 3], [0] * 4, [len(p) for p in prompts])
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-5, atol=1e-5)
    # The same decode step, each alone and then all four at once over the same caches (the batched
    # call writes each slot's new key and value again, the same bits when the rows are independent).
    steps = [5, 6, 7, 8]
    want = torch.cat([alone.forward([steps[s]], [s], [len(p)], [1]) for s, p in enumerate(prompts)])
    got = alone.forward(steps, [0, 1, 2, 3], [len(p) for p in prompts], [1] * 4)
    assert torch.equal(got, want)


def test_engine_core_and_pytorch_paths_agree(model):
    """Greedy tokens and scores through the core == the PyTorch forward's (Engine(core=False))."""
    prompts = [[1, 2, 3, 4, 5], [9, 8], [100] * 11]
    core = Generator(model, engine=Engine(model, slots=4))
    torch_path = Generator(model, engine=Engine(model, slots=4, core=False))
    assert core.engine.core is not None and torch_path.engine.core is None
    a = core.generate(prompts, max_new_tokens=12, temperature=0, logprobs=2, prompt_logprobs=0)
    b = torch_path.generate(prompts, max_new_tokens=12, temperature=0, logprobs=2, prompt_logprobs=0)
    for x, y in zip(a, b):
        assert x.tokens == y.tokens
        assert [t.logprob for t in x.logprobs] == pytest.approx([t.logprob for t in y.logprobs], abs=1e-4)
        assert [t.logprob for t in x.prompt_logprobs[1:]] == pytest.approx(
            [t.logprob for t in y.prompt_logprobs[1:]], abs=1e-4
        )


@pytest.mark.parametrize("huge_pages", ["1", "0"])
def test_decoder_moves_the_parameters_into_one_block(monkeypatch, huge_pages):
    """The float32 parameters the core streams move into one block (2 MiB aligned with huge pages;
    GPTCORE_HUGE_PAGES=0: plain memory) with the same values: the model's own forward and state are
    unchanged, and decoders made after (any format) and before (its block kept) still agree."""
    monkeypatch.setenv("GPTCORE_HUGE_PAGES", huge_pages)
    torch.manual_seed(4)
    m = GPT(GPTConfig(vocab_size=301, n_positions=96, n_layer=2, n_head=2, n_embd=64, pad_vocab_multiple=64)).eval()
    tokens = torch.randint(0, 301, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before_state, before_logits = {k: v.clone() for k, v in m.state_dict().items()}, m(tokens)[0]
    first = CoreDecoder(m, slots=1, max_len=32, weights="fp32")
    first_logits = first.forward(tokens[0].tolist(), [0], [0], [20], every_position=True)
    second = CoreDecoder(m, slots=1, max_len=32, weights="fp32")  # moves the parameters again
    with torch.no_grad():
        assert all(torch.equal(before_state[k], v) for k, v in m.state_dict().items())
        assert torch.equal(m(tokens)[0], before_logits)
    assert torch.equal(second.forward(tokens[0].tolist(), [0], [0], [20], every_position=True), first_logits)
    assert torch.equal(first.forward(tokens[0].tolist(), [0], [0], [20], every_position=True), first_logits)
    torch.testing.assert_close(first_logits, before_logits[0], rtol=1e-4, atol=1e-4)
    t = m.transformer
    streamed = [t.wte.weight, t.ln_f.weight] + [p for b in t.h.values() for p in b.parameters()]
    starts = [p.data_ptr() for p in streamed]
    assert len({p.untyped_storage().data_ptr() for p in streamed}) == 1  # one block, wte (the tied head) in it
    if huge_pages == "1" and sys.platform == "linux":
        assert min(starts) % (2 << 20) == 0
    assert m.transformer.wpe.weight.untyped_storage().data_ptr() != t.wte.weight.untyped_storage().data_ptr()


def test_decode_bad_input_is_one_line(model):
    decoder = CoreDecoder(model, slots=2, max_len=16)
    v = model.config.vocab_size
    cases = [
        (([v], [0], [0], [1]), f"tokens\\[0\\] = {v} is outside the vocabulary \\[0, {v}\\)"),
        (([1], [2], [0], [1]), "seq_slot\\[0\\] = 2 is outside \\[0, 2\\) or used twice"),
        (([1, 2], [0, 0], [0, 3], [1, 1]), "used twice"),
        (([1], [0], [16], [1]), "positions \\[16, 17\\) must be a non-empty range within the cache \\(16 positions\\)"),
        (([1, 2], [0], [0], [1]), "seq_len sums to 1 but 'tokens' has 2"),
    ]
    for args, message in cases:
        with pytest.raises(_C.Error, match=message):
            decoder.forward(*args)


def test_models_the_core_cannot_run(model):
    assert unsupported(model) is None
    assert "float32" in unsupported(GPT(GPTConfig.preset("tiny")).to(torch.bfloat16))
    assert "head dim 16" in unsupported(GPT(GPTConfig.preset("tiny", n_head=4)))
    with pytest.raises(ValueError, match="weights=int8 needs generation in the core.*not float32"):
        Engine(GPT(GPTConfig.preset("tiny")).to(torch.bfloat16), weights="int8")
    with pytest.raises(ValueError, match="weights must be one of fp32, bf16, int8"):
        Engine(model, weights="int4")
    assert Engine(GPT(GPTConfig.preset("tiny", n_head=4))).core is None  # the PyTorch forward instead
