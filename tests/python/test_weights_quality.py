"""Quality of the bf16 and int8 weight formats on a trained model: greedy tokens equal fp32's
wherever the fp32 logit gaps allow, and logits within a bound that follows from each format's
rounding. A model trained for a few seconds, not a random one: its logits are peaked the way a real
model's are, so many greedy steps are decided by a clear margin and the rule below has teeth."""

import pytest
import torch
from train_fixtures import corpus, quiet, small  # noqa: F401 (corpus is a fixture)

from gptcore.core_decoder import CoreDecoder, quantize, unsupported
from gptcore.data import IndexedDataset
from gptcore.generate import Engine, Generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS, PROMPT_LEN, NEW_TOKENS = 8, 16, 48
# fp32 greedy tokens come from decode steps, the fp32 gaps from a prefill over the same tokens:
# the same float32 math in another order, which may move a logit by ~1e-6 (tests against float64).
FP32_SLOP = 1e-4


@pytest.fixture(scope="module")
def trained(corpus):  # noqa: F811 (the fixture imported above)
    """(model, prompts): 2 layers, 2 heads of 64, C 128, 512-piece vocabulary, trained 300 steps
    (~7 s, loss ~4.6; a 60-step model's median greedy margin is ~0.04, the size of a bf16 error)."""
    cfg = small(corpus, n_positions=96, n_embd=128, seq_len=64, train_steps=300, lr=5e-3, warmup_steps=5)
    trainer = quiet(cfg | dict(log_interval=300))
    trainer.train()
    model = trainer.model.eval()
    assert unsupported(model) is None
    tokens = IndexedDataset(corpus[0]).tokens
    step = (len(tokens) - PROMPT_LEN) // PROMPTS
    prompts = [[int(t) for t in tokens[i * step : i * step + PROMPT_LEN]] for i in range(PROMPTS)]
    return model, prompts


def greedy(model, prompts, weights: str) -> list[list[int]]:
    engine = Engine(model, slots=len(prompts), weights=weights)
    results = Generator(model, engine=engine).generate(prompts, max_new_tokens=NEW_TOKENS, temperature=0.0, stop_ids=())
    return [r.tokens for r in results]


def logits_over(model, weights: str, sequences) -> list[torch.Tensor]:
    """The core's logits [T, vocab] at every position of each sequence (a prefill)."""
    decoder = CoreDecoder(model, slots=1, max_len=max(map(len, sequences)), weights=weights)
    return [decoder.forward(s, [0], [0], [len(s)], every_position=True) for s in sequences]


def head_error_bound(model, weights: str, sequences) -> list[torch.Tensor]:
    """[T, vocab] per sequence: a worst-case bound on |logit(weights) - logit(fp32)|.

    The head's own rounding is bounded exactly: logit_v = h . w_v, so |delta logit_v| <=
    sum_k |h_k| e_vk with e the largest error the format allows on each weight: bf16 rounds to
    nearest with 8 significant bits, e = 2^-9 |w|; int8 rounds w / s to the nearest integer, e = s / 2
    with s = max|w_v| / 127. Each of the 4 n_layer matrices before it rounds its weights the same
    way and is allowed as much again, a first-order bound (errors add; their products neglected)
    that assumes no layer amplifies the error it receives more than the head's worst case.
    """
    c = model.config
    head = model.transformer.wte.weight[: c.vocab_size].detach()
    if weights == "bf16":
        e = head.abs() * 2.0**-9
    else:
        _, scale = quantize(head, "int8")
        e = (scale / 2)[:, None].expand_as(head)
    matrices = 4 * c.n_layer + 1
    out = []
    with torch.no_grad():
        for s in sequences:
            t = model.transformer
            h = model.final_norm(model.blocks(t.wte(torch.tensor([s])) + t.wpe(torch.arange(len(s)))))[0]
            out.append(matrices * (h.abs() @ e.T))
    return out


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_greedy_tokens_equal_fp32_where_the_gaps_allow(trained, weights):
    model, prompts = trained
    ref, got = greedy(model, prompts, "fp32"), greedy(model, prompts, weights)
    sequences = [p + t[:-1] for p, t in zip(prompts, ref)]  # position P - 1 + j predicts token j
    fp32 = logits_over(model, "fp32", sequences)
    quantized = logits_over(model, weights, sequences)
    diff = [(q - f).abs() for q, f in zip(quantized, fp32)]

    # Every logit stays within the format's bound, and the bound means something: it is a small
    # part of the logits' spread (max - min at a position), and the worst error reaches a fair part
    # of it (a bound 1000x above every error would pass anything; this one is ~10-20x).
    bound = head_error_bound(model, weights, sequences)
    excess = max((d - b).max().item() for d, b in zip(diff, bound))
    assert excess <= 0, f"a {weights} logit error is {excess:.3g} over its bound"
    spread = torch.cat([f.max(-1).values - f.min(-1).values for f in fp32]).median().item()
    assert max(b.max().item() for b in bound) < spread / 5
    assert max((d / b).max().item() for d, b in zip(diff, bound)) > 1 / 50

    top2 = [f[PROMPT_LEN - 1 :].topk(2, dim=-1).values for f in fp32]
    gaps = [t[:, 0] - t[:, 1] for t in top2]  # fp32's top-1 minus top-2 at each greedy step

    # Greedy: at a step whose context is fp32's, the format's argmax is fp32's when the fp32 gap
    # there is at least 2 x the largest |logit change| at that position (top-1 loses at most that
    # much, any other logit gains at most that much), + float32 slop. So the format's tokens must
    # equal fp32's up to the first step where that fails: a near-tie. The largest change at a position
    # is at most the largest over all of them, so this checks every step that 2 x that one would.
    checked = 0
    for r, (a, b, g, d) in enumerate(zip(ref, got, gaps, diff)):
        allowed = 2 * d[PROMPT_LEN - 1 :].max(-1).values + FP32_SLOP
        near = (g < allowed).nonzero()
        first_near_tie = int(near[0]) if len(near) else NEW_TOKENS
        assert a[:first_near_tie] == b[:first_near_tie], (
            f"{weights} row {r} parts from fp32 at step"
            f" {next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)}, before its first near-tie at step"
            f" {first_near_tie} (fp32 gaps {g[: first_near_tie + 1].tolist()},"
            f" near-tie below {allowed[: first_near_tie + 1].tolist()})"
        )
        checked += first_near_tie
    # Steps decided by a clear margin, where the rule demands equal tokens: bf16 ~250, int8 ~110.
    assert checked >= PROMPTS * NEW_TOKENS // 8
