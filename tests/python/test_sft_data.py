"""SFT data: preprocessing jsonl src/tgt records into tokens plus a loss-mask companion (hand-computed
tokens and masks, a mixed file, workers and partitions, the error cases), and SFTDataset (a loss over
its labels equal to a direct loss over the target tokens; packing that never splits, fills, masks
example boundaries and pads; one example a sample; determinism, epochs, truncation)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gptcore.data import (
    GPTDataset,
    IndexedDataset,
    IndexedDatasetBuilder,
    SFTDataset,
    Tokenizer,
    has_loss_mask,
    loss_mask_prefix,
    pack_examples,
    preprocess,
    preprocess_sft,
)

EOD = 256


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids, eod 256: exact, and picklable for workers."""

    name = "bytes"
    eod_id = EOD
    pad_id = None
    vocab_size = 257

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i != EOD).decode("utf-8")


RECORDS = [
    {"src": "Q: 1+1?", "tgt": " A: 2"},
    {"src": "plain continuation text"},
    {"src": "", "tgt": "only a target"},
    {"src": "context, empty target", "tgt": ""},
    {"src": "x", "tgt": "y", "other": 3},
    {"src": "über", "tgt": " 中文"},
    {"src": "another continuation"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _expected(record, eod=True):
    """(tokens, target flags) of a record, computed directly."""
    src = list(record["src"].encode())
    if "tgt" not in record:
        tokens = src + [EOD] * eod
        return tokens, [1] * len(tokens)
    tgt = list(record["tgt"].encode()) + [EOD] * eod
    return src + tgt, [0] * len(src) + [1] * len(tgt)


def _read(prefix):
    tokens, mask = IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix))
    return [tokens[i].tolist() for i in range(len(tokens))], [mask[i].tolist() for i in range(len(mask))], mask


@pytest.fixture
def sft_prefix(tmp_path):
    prefix = tmp_path / "out" / "sft"
    preprocess_sft(_write_jsonl(tmp_path / "data.jsonl", RECORDS), prefix, ByteTokenizer(), progress=False)
    return prefix


# ---- preprocessing -------------------------------------------------------------------------------


def test_preprocess_sft_marks_exactly_the_targets(tmp_path):
    prefix = tmp_path / "sft"
    stats = preprocess_sft(_write_jsonl(tmp_path / "d.jsonl", RECORDS), prefix, ByteTokenizer(), progress=False)
    tokens, masks, mask_ds = _read(prefix)
    # by hand: "ab" + "c" + eod, targets "c" and eod; a bare "ab" + eod, every token a target
    assert _expected({"src": "ab", "tgt": "c"}) == ([97, 98, 99, EOD], [0, 0, 1, 1])
    assert _expected({"src": "ab"}) == ([97, 98, EOD], [1, 1, 1])
    expected = [_expected(r) for r in RECORDS]
    assert tokens == [t for t, _ in expected]
    assert masks == [m for _, m in expected]
    assert masks[3] == [0] * len("context, empty target") + [1]  # an empty target still learns to stop
    assert mask_ds.dtype == np.uint8
    assert Path(f"{prefix}.bin").is_file() and Path(f"{prefix}_loss_mask.idx").is_file()
    assert stats["examples"] == len(RECORDS)
    assert stats["tokens"] == sum(len(t) for t in tokens)
    assert stats["target_tokens"] == sum(map(sum, masks))
    assert stats["outputs"] == {"tokens": str(prefix), "loss_mask": f"{prefix}_loss_mask"}
    assert has_loss_mask(prefix) and not has_loss_mask(tmp_path / "nothing")


def test_preprocess_sft_without_eod(tmp_path):
    records = [{"src": "ab", "tgt": "c"}, {"src": "de"}]
    prefix = tmp_path / "sft"
    preprocess_sft(_write_jsonl(tmp_path / "d.jsonl", records), prefix, ByteTokenizer(), append_eod=False)
    tokens, masks, _ = _read(prefix)
    assert tokens == [[97, 98, 99], [100, 101]]
    assert masks == [[0, 0, 1], [1, 1]]


def test_preprocess_sft_same_bytes_for_any_workers_and_partitions(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", RECORDS * 5)
    one, many = tmp_path / "one", tmp_path / "many"
    preprocess_sft(data, one, ByteTokenizer(), progress=False)
    preprocess_sft(data, many, ByteTokenizer(), workers=2, partitions=3, chunk_bytes=64, progress=False)
    for a, b in ((one, many), (loss_mask_prefix(one), loss_mask_prefix(many))):
        for suffix in (".bin", ".idx"):
            assert Path(f"{a}{suffix}").read_bytes() == Path(f"{b}{suffix}").read_bytes()


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"tgt": "y"}', "no key 'src'"),
        ('{"src": 3, "tgt": "y"}', "a int, not a string, under 'src'"),
        ('{"src": "x", "tgt": ["y"]}', "a list, not a string, under 'tgt'"),
        ('{"src": "x", "tgt": null}', "null under 'tgt'"),
        ('{"src": ""}', "an empty example"),
        ('{"src": "", "tgt": ""}', "an empty example"),
        ('{"src": "x", "tgt": ', "not a JSON line"),
        ('["x", "y"]', "a JSON list, not an object"),
    ],
)
def test_preprocess_sft_bad_records_name_file_and_line(tmp_path, line, message):
    data = tmp_path / "d.jsonl"
    data.write_text('{"src": "fine", "tgt": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"d.jsonl:2: {message}".replace("[", r"\[")):
        preprocess_sft(data, tmp_path / "sft", ByteTokenizer(), progress=False)
    assert not list(tmp_path.glob("sft*")), "nothing is left half written"
    stats = preprocess_sft(data, tmp_path / "sft", ByteTokenizer(), errors="skip", progress=False)
    assert (stats["examples"], stats["skipped"]) == (1, 1)


def test_preprocess_sft_empty_target_without_eod_is_an_error(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"src": "x", "tgt": ""}])
    with pytest.raises(ValueError, match="d.jsonl:1: an empty target and no eod"):
        preprocess_sft(data, tmp_path / "sft", ByteTokenizer(), append_eod=False, progress=False)


def test_preprocess_sft_refuses_plain_text_and_equal_keys(tmp_path):
    text = tmp_path / "d.txt"
    text.write_text("a line\n")
    with pytest.raises(ValueError, match="d.txt: SFT data is jsonl"):
        preprocess_sft(text, tmp_path / "sft", ByteTokenizer())
    with pytest.raises(ValueError, match="must differ"):
        preprocess_sft(text, tmp_path / "sft", ByteTokenizer(), src_key="a", tgt_key="a")


# ---- SFTDataset ----------------------------------------------------------------------------------


def _synthetic(tmp_path, lengths, seed=0):
    """Example k of lengths[k] tokens 1000 * k + j (j = 0, 1, ...), with random target flags."""
    rng = np.random.default_rng(seed)
    prefix = tmp_path / "syn"
    masks = []
    with IndexedDatasetBuilder(prefix, np.int32) as tok, IndexedDatasetBuilder(loss_mask_prefix(prefix), np.uint8) as m:
        for k, n in enumerate(lengths):
            tok.add_document(1000 * k + np.arange(n))
            masks.append(rng.integers(0, 2, n).astype(np.uint8))
            m.add_document(masks[-1])
    return IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix)), masks


def _dataset(tokens, mask, num_samples=None, seq_len=8, seed=1, pack=True, **kw):
    return SFTDataset(tokens, mask, np.arange(tokens.num_documents), num_samples, seq_len, seed, -1 % 7, pack, **kw)


def _runs(text):
    """The examples in a sequence of synthetic tokens: [(k, first j, last j, start)], padding (6) apart."""
    runs = []
    for t, v in enumerate(text.tolist()):
        if v == 6:  # the pad id of _dataset; no synthetic token is 6 (example 0 is shorter)
            continue
        k, j = divmod(v, 1000)
        if runs and runs[-1][0] == k and runs[-1][2] == j - 1:
            runs[-1][2] = j
        else:
            runs.append([k, j, j, t])
    return runs


def test_pack_examples_next_fit():
    assert pack_examples(np.array([3, 4, 2, 5, 1]), 6).tolist() == [0, 1, 3, 5]
    assert pack_examples(np.array([6, 6]), 6).tolist() == [0, 1, 2]
    assert pack_examples(np.array([1, 1, 1, 1, 1]), 2).tolist() == [0, 2, 4, 5]


def test_packing_keeps_examples_whole_fills_masks_boundaries_and_pads(tmp_path):
    lengths = [3, 5, 2, 9, 4, 1, 6, 2, 3, 7]  # all <= seq_len + 1 = 9
    tokens, mask, masks = _synthetic(tmp_path, lengths)
    ds = _dataset(tokens, mask, return_segments=True)
    assert ds.num_truncated == 0 and ds.epochs == 1
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        assert all(item[k].shape == (8,) for k in ("tokens", "labels", "loss_mask", "segment_ids", "position_ids"))
        assert item["tokens"].dtype == item["labels"].dtype == torch.int64 and item["loss_mask"].dtype == torch.float32
        text = torch.cat([item["tokens"], item["labels"][-1:]]).numpy()
        runs = _runs(text)
        assert [k for k, *_ in runs] == ds.sample_examples(i).tolist()
        expected_mask = np.zeros(9, np.float32)
        used = 0
        for s, (k, first, last, start) in enumerate(runs, 1):
            assert (first, last, start) == (0, lengths[k] - 1, used), "a whole example, right after the last"
            expected_mask[start : start + lengths[k]] = masks[k]
            expected_mask[start] = 0  # nothing predicts an example's first token
            assert (item["segment_ids"].numpy()[start : start + lengths[k]] == s).all()
            positions = item["position_ids"].numpy()[start : start + lengths[k]]
            np.testing.assert_array_equal(positions, np.arange(len(positions)))
            used += lengths[k]
        assert (text[used:] == 6).all(), "padding after the examples"
        assert (item["segment_ids"].numpy()[used:] == 0).all()
        np.testing.assert_array_equal(item["loss_mask"].numpy(), expected_mask[1:])
        order = ds.sample_examples(i).tolist()
        seen += order
        if i + 1 < len(ds):  # next fit: the next example would not have fitted
            assert used + lengths[ds.sample_examples(i + 1)[0]] > 9
    assert sorted(seen) == list(range(len(lengths))), "every example once an epoch"
    assert ds.fill == pytest.approx(sum(lengths) / (len(ds) * 9))


def test_unpacked_one_example_a_sample(tmp_path):
    lengths = [3, 5, 2, 9, 4]
    tokens, mask, masks = _synthetic(tmp_path, lengths)
    ds = _dataset(tokens, mask, pack=False)
    assert len(ds) == len(lengths)
    for i in range(len(ds)):
        (k,) = ds.sample_examples(i).tolist()
        item = ds[i]
        text = torch.cat([item["tokens"], item["labels"][-1:]]).numpy()
        np.testing.assert_array_equal(text[: lengths[k]], 1000 * k + np.arange(lengths[k]))
        assert (text[lengths[k] :] == 6).all()
        expected = np.zeros(9, np.float32)
        expected[1 : lengths[k]] = masks[k][1:]
        np.testing.assert_array_equal(item["loss_mask"].numpy(), expected[1:])


@pytest.mark.parametrize("pack", [False, True])
def test_loss_equals_a_direct_loss_over_the_target_tokens(sft_prefix, pack):
    seq_len = 40
    tokens, mask = IndexedDataset(sft_prefix), IndexedDataset(loss_mask_prefix(sft_prefix))
    ds = SFTDataset(tokens, mask, np.arange(len(RECORDS)), None, seq_len, 3, EOD, pack)
    assert ds.num_truncated == 0
    assert pack == any(len(ds.sample_examples(i)) > 1 for i in range(len(ds)))
    gen = torch.Generator().manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        logits = torch.randn(seq_len, 257, generator=gen, dtype=torch.float64)
        labels = item["labels"].masked_fill(item["loss_mask"] == 0, -100)  # as the trainer does
        loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
        # Directly: each target token j >= 1 of each example, predicted from the logits one before it.
        terms, offset = [], 0
        for k in ds.sample_examples(i).tolist():
            example, flags = _expected(RECORDS[k])
            for j in range(1, len(example)):
                if flags[j]:
                    terms.append(-torch.log_softmax(logits[offset + j - 1], -1)[example[j]])
            offset += len(example)
        torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-12, atol=1e-12)


def test_samples_are_a_pure_function_of_seed_and_index(tmp_path):
    tokens, mask, _ = _synthetic(tmp_path, [3, 5, 2, 9, 4, 1, 6, 2, 3, 7, 2, 2])
    a = _dataset(tokens, mask, num_samples=30)
    b = _dataset(tokens, mask, num_samples=10)
    forward = [a[i] for i in range(30)]
    backward = [a[i] for i in reversed(range(30))][::-1]
    for x, y in zip(forward, backward):
        assert all(torch.equal(x[k], y[k]) for k in x)
    for i in range(10):
        assert all(torch.equal(forward[i][k], b[i][k]) for k in forward[i]), "independent of num_samples"
    other = _dataset(tokens, mask, num_samples=30, seed=2)
    assert any(not torch.equal(forward[i]["tokens"], other[i]["tokens"]) for i in range(30))
    with pytest.raises(IndexError):
        a[30]


def test_epochs_cycle_with_a_new_order_each(tmp_path):
    n = 12
    tokens, mask, _ = _synthetic(tmp_path, [1 + k % 5 for k in range(n)])
    ds = _dataset(tokens, mask, num_samples=3 * n, pack=False)
    assert ds.epochs == 3 and len(ds) == 3 * n
    epochs = [[int(ds.sample_examples(e * n + i)[0]) for i in range(n)] for e in range(3)]
    assert all(sorted(order) == list(range(n)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3
    packed = _dataset(tokens, mask, num_samples=3 * n)
    assert packed.epochs > 3, "packed epochs hold fewer samples"
    per_epoch = packed._first_sample[1]
    assert sorted(np.concatenate([packed.sample_examples(i) for i in range(per_epoch)])) == list(range(n))


def test_truncation_keeps_the_head_and_is_counted(tmp_path):
    lengths = [3, 12, 9, 20]  # seq_len + 1 = 9: two longer
    tokens, mask, masks = _synthetic(tmp_path, lengths)
    for pack in (False, True):
        ds = _dataset(tokens, mask, pack=pack)
        assert ds.num_truncated == 2
        for i in range(len(ds)):
            if (k := int(ds.sample_examples(i)[0])) == 3:
                item = ds[i]
                np.testing.assert_array_equal(item["tokens"].numpy(), 3000 + np.arange(8))
                np.testing.assert_array_equal(item["loss_mask"].numpy(), masks[k][1:9])


def test_documents_of_several_sequences_read_as_one_example(tmp_path):
    prefix = tmp_path / "multi"
    with IndexedDatasetBuilder(prefix, np.int32) as t, IndexedDatasetBuilder(loss_mask_prefix(prefix), np.uint8) as m:
        t.add_document([[10, 11], [12, 13, 14]])
        m.add_document([[0, 0], [0, 1, 1]])
    ds = SFTDataset(IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix)), range(1), None, 3, 0, 9)
    assert ds.num_truncated == 1
    item = ds[0]
    assert item["tokens"].tolist() == [10, 11, 12] and item["labels"].tolist() == [11, 12, 13]
    assert item["loss_mask"].tolist() == [0, 0, 1]


def test_sft_dataset_refuses_bad_inputs(tmp_path, sft_prefix):
    tokens, mask = IndexedDataset(sft_prefix), IndexedDataset(loss_mask_prefix(sft_prefix))
    every = np.arange(len(RECORDS))
    with pytest.raises(ValueError, match="do not match"):
        SFTDataset(tokens, _synthetic(tmp_path, [1, 2])[1], every, None, 8, 0, 0)
    with pytest.raises(ValueError, match="outside the 7 documents"):
        SFTDataset(tokens, mask, np.array([0, 7]), None, 8, 0, 0)
    with pytest.raises(ValueError, match="no examples"):
        SFTDataset(tokens, mask, np.array([], np.int64), None, 8, 0, 0)
    with pytest.raises(ValueError, match="seq_len"):
        SFTDataset(tokens, mask, every, None, 0, 0, 0)
    empty = tmp_path / "empty"
    with IndexedDatasetBuilder(empty, np.int32) as t, IndexedDatasetBuilder(loss_mask_prefix(empty), np.uint8) as m:
        for b in (t, m):
            b.add_document([1])
            b.add_document(np.empty(0))
    with pytest.raises(ValueError, match="document 1 has no tokens"):
        SFTDataset(IndexedDataset(empty), IndexedDataset(loss_mask_prefix(empty)), range(2), None, 8, 0, 0)


def test_pretraining_data_has_no_loss_mask(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"text": "pretraining text"}] * 4)
    stats = preprocess(data, tmp_path / "pre", ByteTokenizer(), append_eod=True, progress=False)
    assert not has_loss_mask(stats["outputs"]["text"])
    GPTDataset(IndexedDataset(stats["outputs"]["text"]), range(4), 2, 8, 0)  # still plain GPT data
