"""Checkpoint resharding between (tensor parallel, pipeline parallel) layouts, single process."""

import pytest
import torch

from gptcore.model import GPT, GPTConfig
from gptcore.parallel.reshard import layout_of, merge, reshard, split

CONFIG = GPTConfig(vocab_size=256, n_positions=32, n_layer=4, n_head=4, n_embd=64, use_gptcore_ops=False)
WTE = "transformer.wte.weight"


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture(scope="module")
def full(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)])
def test_split_merge_round_trip(full, tp, pp):
    shards = split(full, CONFIG, tp, pp)
    assert sorted(shards) == [(t, p) for t in range(tp) for p in range(pp)]
    assert layout_of(shards) == (tp, pp)
    for (_, p), state in shards.items():
        assert (WTE in state) == (p in (0, pp - 1))
        if WTE in state:
            assert state[WTE].shape == (CONFIG.padded_vocab_size // tp, CONFIG.n_embd)
        assert ("transformer.wpe.weight" in state) == (p == 0)
        assert ("transformer.ln_f.weight" in state) == (p == pp - 1)
    # every layer on exactly one stage
    for layer in range(CONFIG.n_layer):
        holders = {p for (t, p), s in shards.items() if f"transformer.h.{layer}.attn.c_attn.weight" in s}
        assert len(holders) == 1
    _assert_equal_states(merge(shards, CONFIG), full)


def _logits(state: dict[str, torch.Tensor]) -> torch.Tensor:
    model = GPT(CONFIG).eval()
    model.load_state_dict(state)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("chain", [[(2, 1), (1, 1), (4, 1)], [(1, 2), (1, 1), (2, 2)]])
def test_reshard_chain(model, full, chain):
    tp, pp = chain[0]
    shards = split(full, CONFIG, tp, pp)
    for tp, pp in chain[1:]:
        shards = reshard(shards, CONFIG, tp, pp)
        assert layout_of(shards) == (tp, pp)
    merged = merge(shards, CONFIG)
    _assert_equal_states(merged, full)
    with torch.no_grad():
        idx = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
        expected = model(idx)[0]
    assert torch.equal(_logits(merged), expected)


def test_tp_must_divide_heads(full):
    shards = split(full, CONFIG, 2, 1)
    with pytest.raises(ValueError, match=r"n_head \(4\) must be divisible by the tensor-parallel size \(3\)"):
        reshard(shards, CONFIG, 3, 1)
    with pytest.raises(ValueError, match="n_head"):
        split(full, CONFIG, 8, 1)


def test_tp_must_divide_padded_vocab():
    config = GPTConfig(
        vocab_size=250, n_positions=32, n_layer=4, n_head=4, n_embd=64, pad_vocab_multiple=2, use_gptcore_ops=False
    )
    torch.manual_seed(0)
    state = GPT(config).state_dict()
    shards = split(state, config, 2, 1)
    with pytest.raises(ValueError, match=r"padded vocab \(250.*divisible by the tensor-parallel size \(4\)"):
        reshard(shards, config, 4, 1)


def test_pp_must_divide_layers(full):
    shards = split(full, CONFIG, 1, 2)
    with pytest.raises(ValueError, match=r"n_layer \(4\) is not divisible by 3 stages"):
        reshard(shards, CONFIG, 1, 3)
    with pytest.raises(ValueError, match="4 layers cannot fill 8 stages"):
        split(full, CONFIG, 1, 8)


def test_missing_shard(full):
    shards = split(full, CONFIG, 2, 2)
    del shards[(1, 0)]
    with pytest.raises(ValueError, match=r"missing shard\(s\) \[\(1, 0\)\].*tp=2 x pp=2"):
        merge(shards, CONFIG)
    with pytest.raises(ValueError, match="missing shard"):
        reshard(shards, CONFIG, 1, 1)
    with pytest.raises(ValueError, match="no shards"):
        merge({}, CONFIG)
    with pytest.raises(ValueError, match=r"\(tp_rank, pp_rank\) pairs"):
        merge({0: full}, CONFIG)


def test_mismatched_wte_copies(full):
    shards = split(full, CONFIG, 2, 2)
    shards[(1, 1)][WTE][0, 0] += 1.0  # the last stage's copy of tp rank 1's wte rows
    with pytest.raises(ValueError, match="'transformer.wte.weight' differs between stage 1.*tied embedding"):
        merge(shards, CONFIG)


def test_merge_rejects_wrong_config(full):
    shards = split(full, CONFIG, 2, 1)
    other = GPTConfig(vocab_size=256, n_positions=32, n_layer=2, n_head=4, n_embd=64, use_gptcore_ops=False)
    with pytest.raises(ValueError, match="does not match the config's GPT"):
        merge(shards, other)
