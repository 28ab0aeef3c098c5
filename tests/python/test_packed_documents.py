"""Packed documents without cross-talk: an example inside a packed row (cu_seqlens, positions
restarting per document) gives the logits, loss and weight gradients it gives alone, on either op
set and under activation recompute; the boundaries from eod tokens equal Megatron's
reset_attention_mask / reset_position_ids; packed SFT trains each example as unpacked SFT does; the
trainer's reset_attention_mask under tp, sp, pp and dp equals the one-process trainer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_fixtures import corpus, quiet, small  # noqa: F401 (corpus is a fixture)

from gptcore.cli.foreign import translate
from gptcore.data import (
    IndexedDataset,
    IndexedDatasetBuilder,
    SFTDataset,
    document_boundaries,
    document_positions,
    loss_mask_prefix,
)
from gptcore.model import GPT, IGNORE_INDEX, GPTConfig
from gptcore.ops import reference
from gptcore.parallel.testing import run_distributed
from gptcore.training.batches import DocumentReset, make_batch, model_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OP_SETS = [pytest.param(False, id="pytorch"), pytest.param(True, id="gptcore")]
T = 24


def _model(use_gptcore_ops: bool, recompute: str = "none") -> GPT:
    torch.manual_seed(0)
    config = GPTConfig.preset("tiny", n_positions=T, use_gptcore_ops=use_gptcore_ops)
    model = GPT(config)
    model.recompute = recompute
    return model


def _packing(seed: int) -> list[list[int]]:
    """Two rows of random example lengths, each row filling T."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(2):
        cuts = np.sort(rng.choice(np.arange(1, T), size=rng.integers(1, 5), replace=False))
        rows.append(np.diff([0, *cuts, T]).tolist())
    return rows


def _examples(rows, vocab: int, seed: int):
    """Per example (tokens [n], targets [n]: the next token, -100 at the example's last and at random)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for row in rows:
        for n in row:
            tokens = torch.randint(0, vocab, (n + 1,), generator=g)
            targets = tokens[1:].clone()
            targets[torch.rand(n, generator=g) < 0.2] = IGNORE_INDEX
            out.append((tokens[:-1], targets))
    return out


def _pack(rows, examples):
    tokens, targets, positions, cu = [], [], [], []
    k = 0
    for row in rows:
        parts = examples[k : k + len(row)]
        k += len(row)
        tokens.append(torch.cat([t for t, _ in parts]))
        targets.append(torch.cat([y for _, y in parts]))
        positions.append(torch.cat([torch.arange(n) for n in row]))
        cu.append(torch.tensor(np.cumsum([0, *row])))
    width = max(len(c) for c in cu)
    cu = torch.stack([F.pad(c, (0, width - len(c)), value=T) for c in cu]).to(torch.int32)
    return torch.stack(tokens), torch.stack(targets), torch.stack(positions), cu


@pytest.mark.parametrize("recompute", ["none", "full", "selective"])
@pytest.mark.parametrize("use_gptcore_ops", OP_SETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_packed_examples_equal_examples_alone(use_gptcore_ops, recompute, seed):
    model = _model(use_gptcore_ops, recompute)
    rows = _packing(seed)
    examples = _examples(rows, model.config.vocab_size, seed)
    tokens, targets, positions, cu_seqlens = _pack(rows, examples)
    reference.check_cu_seqlens(cu_seqlens, *tokens.shape)
    total = int((targets != IGNORE_INDEX).sum())

    logits, loss = model(tokens, targets, position_ids=positions, cu_seqlens=cu_seqlens)
    loss.backward()
    packed_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    flat = logits.reshape(-1, logits.shape[-1])
    start = 0
    for k, (x, y) in enumerate(examples):
        n = len(x)
        alone, alone_loss = model(x[None], y[None])
        torch.testing.assert_close(flat[start : start + n], alone[0], rtol=1e-5, atol=1e-5, msg=f"example {k}")
        count = int((y != IGNORE_INDEX).sum())
        if count:
            (alone_loss * (count / total)).backward()
        start += n
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("use_gptcore_ops", OP_SETS)
def test_without_boundaries_the_examples_see_each_other(use_gptcore_ops):
    model = _model(use_gptcore_ops).eval()
    rows = [[8, 16], [8, 16]]
    tokens, _, positions, cu_seqlens = _pack(rows, _examples(rows, model.config.vocab_size, 0))
    masked = model(tokens, position_ids=positions, cu_seqlens=cu_seqlens)[0]
    leaky = model(tokens, position_ids=positions)[0]
    torch.testing.assert_close(masked[:, :8], leaky[:, :8])  # the first example has nothing before it
    assert (masked[:, 8:] - leaky[:, 8:]).abs().max() > 1e-3


def _megatron_masks():
    gpt_dataset = pytest.importorskip("megatron.core.datasets.gpt_dataset")
    return gpt_dataset._get_ltor_masks_and_position_ids


@pytest.mark.parametrize("seed", range(4))
def test_document_boundaries_match_megatron(seed):
    megatron = _megatron_masks()
    eod, length = 7, 40
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 12, (6, length), generator=g)  # eods at random places, about one in twelve
    tokens[0, 0] = eod  # a row opening with an eod
    tokens[1, -1] = eod  # a row ending with one
    tokens[2] = eod  # every token an eod
    tokens[3] = tokens[3].masked_fill(tokens[3] == eod, 0)  # none at all
    tokens[4, :2] = eod  # two in a row at the start
    cu_seqlens = document_boundaries(tokens, eod)
    assert cu_seqlens.dtype == torch.int32
    reference.check_cu_seqlens(cu_seqlens, *tokens.shape)
    ours_mask = reference.document_mask(cu_seqlens, length)
    ours_positions = document_positions(tokens, eod)
    for b in range(tokens.shape[0]):
        masked, _, positions = megatron(tokens[b], eod, True, True, False, True)
        assert torch.equal(ours_mask[b, 0], ~masked[0]), b  # Megatron's True: masked out
        assert torch.equal(ours_positions[b], positions), b


def _sft_data(tmp_path, lengths, seed=0):
    rng = np.random.default_rng(seed)
    prefix = tmp_path / "sft"
    with IndexedDatasetBuilder(prefix, np.int32) as tok, IndexedDatasetBuilder(loss_mask_prefix(prefix), np.uint8) as m:
        for n in lengths:
            tok.add_document(rng.integers(1, 500, n))
            m.add_document(rng.integers(0, 2, n).astype(np.uint8))
    return IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix))


@torch.no_grad()
def _example_losses(model, dataset) -> dict[int, float]:
    """Per example (document id): its summed cross-entropy over its target tokens."""
    losses = {}
    for i in range(len(dataset)):
        item = dataset[i]
        batch = make_batch([item], DocumentReset(), torch.device("cpu"))
        logits = model(batch["tokens"], **model_inputs(batch))[0][0]
        ce = F.cross_entropy(logits.float(), batch["labels"][0], ignore_index=IGNORE_INDEX, reduction="none")
        segment = item.get("segment_ids", torch.ones(T, dtype=torch.long))  # a label's example: its input token's
        for s, document in enumerate(dataset.sample_examples(i).tolist(), 1):
            losses[document] = float(ce[segment == s].sum())
    return losses


@pytest.mark.parametrize("use_gptcore_ops", OP_SETS)
def test_sft_packed_equals_unpacked_per_example(tmp_path, use_gptcore_ops):
    model = _model(use_gptcore_ops).eval()
    tokens, mask = _sft_data(tmp_path, [3, 9, 5, 14, 2, 7, 11, 4, 6, 25])
    args = (tokens, mask, np.arange(tokens.num_documents), None, T, 3, 0)
    packed = SFTDataset(*args, pack=True, return_segments=True)
    alone = SFTDataset(*args, pack=False)
    assert len(packed) < len(alone)  # several examples share rows
    ours, theirs = _example_losses(model, packed), _example_losses(model, alone)
    assert ours.keys() == theirs.keys() == set(range(10))
    for document in ours:
        assert ours[document] == pytest.approx(theirs[document], rel=1e-5, abs=1e-5), document


def test_make_batch_boundaries():
    eod = 3
    items = [
        {
            "tokens": torch.tensor([1, 3, 2, 2, 3, 1]),
            "labels": torch.zeros(6, dtype=torch.long),
            "loss_mask": torch.ones(6),
        },
        {
            "tokens": torch.tensor([2, 2, 2, 2, 2, 2]),
            "labels": torch.zeros(6, dtype=torch.long),
            "loss_mask": torch.ones(6),
        },
    ]
    cpu = torch.device("cpu")
    assert make_batch(items, DocumentReset(), cpu).keys() == {"tokens", "labels"}
    batch = make_batch(items, DocumentReset(True, False, eod), cpu)
    assert batch.keys() == {"tokens", "labels", "cu_seqlens"}
    assert batch["cu_seqlens"].tolist() == [[0, 2, 5, 6], [0, 6, 6, 6]]
    batch = make_batch(items, DocumentReset(False, True, eod), cpu)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]
    sft = dict(items[1], segment_ids=torch.tensor([1, 1, 2, 2, 2, 0]))  # SFT: always kept apart
    batch = make_batch([sft, items[1]], DocumentReset(), cpu)
    assert batch["cu_seqlens"].tolist() == [[0, 2, 5, 6], [0, 6, 6, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]


def test_megatron_flags():
    for flag in ("reset-attention-mask", "reset_position_ids"):
        t = translate(flag, [], flag=True)
        assert (t.key, t.value) == (flag.replace("-", "_"), True)


# ---- the trainer -------------------------------------------------------------------------------

STEPS = 3


def _cfg(corpus, **overrides) -> dict:  # noqa: F811
    base = dict(dropout=0.0, attn_dropout=0.0, clip_grad=0.5, decay_style="constant", weight_decay=0.1)
    reset = dict(reset_attention_mask=True, reset_position_ids=True)
    return small(corpus, **(base | reset | overrides))


def _train(rank, world, cfg, steps):
    trainer = quiet(cfg)
    return [trainer.train_step() for _ in range(steps)]


@pytest.fixture(scope="module")
def one_process(corpus):  # noqa: F811
    return _train(0, 1, _cfg(corpus), STEPS)


def test_reset_attention_mask_is_in_effect(corpus, one_process):  # noqa: F811
    trainer = quiet(_cfg(corpus))
    batch = trainer._step_batches()[0]
    assert batch["cu_seqlens"].shape[1] > 2  # the rows hold several documents
    plain = _train(0, 1, _cfg(corpus, reset_attention_mask=False, reset_position_ids=False), 1)
    assert plain[0]["loss"] != pytest.approx(one_process[0]["loss"], rel=1e-4)


LAYOUTS = {
    "dp2": (2, {}),
    "dp2-zero3-recompute": (2, {"zero_stage": 3, "recompute": "full"}),
    "tp2": (2, {"tensor_parallel": 2}),
    "tp2-sp": (2, {"tensor_parallel": 2, "sequence_parallel": True}),
    "pp2": (2, {"pipeline_parallel": 2}),
    "tp2-pp2-sp-recompute": (
        4,
        {"tensor_parallel": 2, "pipeline_parallel": 2, "sequence_parallel": True, "recompute": "selective"},
    ),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_one_process(corpus, one_process, name):  # noqa: F811
    world, overrides = LAYOUTS[name]
    results = run_distributed(_train, world, _cfg(corpus, **overrides), STEPS)
    assert all(r == results[0] for r in results)
    for ours, ref in zip(results[0], one_process):
        assert ours["tokens"] == ref["tokens"]
        assert ours["loss"] == pytest.approx(ref["loss"], rel=2e-5), name
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=2e-4), name
