"""GPT samples: splits, the sample index against a plain-Python reference, samples as the
concatenation of the shuffled documents, determinism, epochs, the index cache, blending."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gptcore
from gptcore import _C
from gptcore.data import (
    BlendedDataset,
    GPTDataset,
    blend_index,
    blend_sample_counts,
    gpt_dataset,
    parse_blend,
    parse_split,
)


class InMemoryIndexed:
    """A stand-in for gptcore.data.IndexedDataset. Sequence k holds tokens 1000 * k + (0, 1, ...),
    so every token says where it came from."""

    def __init__(self, lengths, document_indices=None):
        self.sequences = [1000 * k + np.arange(n, dtype=np.int32) for k, n in enumerate(lengths)]
        self.sequence_lengths = np.asarray(lengths, dtype=np.int32)
        if document_indices is None:
            document_indices = np.arange(len(lengths) + 1)
        self.document_indices = np.asarray(document_indices, dtype=np.int64)

    def __len__(self):
        return len(self.sequences)

    def get(self, i, offset=0, length=None):
        stop = len(self.sequences[i]) if length is None else offset + length
        assert 0 <= offset <= stop <= len(self.sequences[i])
        return self.sequences[i][offset:stop]


def random_indexed(num_sequences=300, seed=0, high=60):
    """Lengths 0..high-1, empty sequences included; documents of 1 to 3 sequences."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, high, num_sequences)
    bounds = np.cumsum(rng.integers(1, 4, num_sequences))
    document_indices = np.concatenate([[0], bounds[bounds < num_sequences], [num_sequences]])
    return InMemoryIndexed(lengths, document_indices)


def reference_sample_index(lengths, doc_index, seq_len):
    """Megatron's formulation, in plain Python: from each sample's first token, take seq_len + 1
    tokens document by document; the last token taken is where the next sample starts."""
    total = sum(int(lengths[d]) for d in doc_index)
    rows, position, offset = [(0, 0)], 0, 0
    for _ in range((total - 1) // seq_len):
        remaining = seq_len + 1
        while True:
            available = int(lengths[doc_index[position]]) - offset
            if remaining <= available:
                offset += remaining - 1
                break
            remaining -= available
            position, offset = position + 1, 0
        rows.append((position, offset))
    return np.array(rows, dtype=np.int64)


def token_stream(indexed, doc_index):
    return np.concatenate([indexed.get(int(d)) for d in doc_index]).astype(np.int64)


# ---- splits and blend strings


def test_parse_split_normalizes_and_covers_every_document():
    assert parse_split("949,50,1", 1000) == [range(0, 949), range(949, 999), range(999, 1000)]
    assert parse_split(" 0.9 , 0.1 ", 10) == [range(0, 9), range(9, 10), range(10, 10)]
    assert parse_split("1", 7) == [range(0, 7), range(7, 7), range(7, 7)]
    assert parse_split("0,1,0", 5) == [range(0, 0), range(0, 5), range(5, 5)]
    for n in [0, 1, 2, 3, 17, 1001]:
        for split in ["949,50,1", "1,1,1", "98,2", "33.3,33.3,33.4", "0,0,1"]:
            ranges = parse_split(split, n)
            assert ranges[0].start == 0 and ranges[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
            assert all(len(r) >= 0 and r.step == 1 for r in ranges)


@pytest.mark.parametrize(
    "split, needle",
    [
        ("", "must be numbers"),
        ("a,b", "must be numbers"),
        ("1,2,3,4", "one to three"),
        ("949/50/1", "must be numbers"),
        ("-1,2", "finite and >= 0"),
        ("nan,1", "finite and >= 0"),
        ("0,0,0", "sum to 0"),
    ],
)
def test_parse_split_rejects_bad_strings(split, needle):
    with pytest.raises(ValueError, match=needle):
        parse_split(split, 10)


def test_parse_blend():
    assert parse_blend("0.35 A 0.65 B") == ([0.35, 0.65], ["A", "B"])
    weights, prefixes = parse_blend("1 data/a_text   3 /x/b_text")
    assert weights == [0.25, 0.75] and prefixes == ["data/a_text", "/x/b_text"]
    assert parse_blend("only_one") == ([1.0], ["only_one"])
    for bad, needle in [("", "weight/prefix pairs"), ("0.3 A 0.7", "pairs"), ("x A", "not a weight"),
                        ("-1 A 2 B", "finite and >= 0"), ("0 A 0 B", "sum to 0")]:  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            parse_blend(bad)


# ---- the sample index


@pytest.mark.parametrize("seq_len", [1, 2, 7, 64, 500])
@pytest.mark.parametrize("doc_dtype", [np.int32, np.int64])
def test_sample_index_matches_the_reference(seq_len, doc_dtype):
    rng = np.random.default_rng(seq_len)
    lengths = rng.integers(0, 40, 200).astype(np.int32)
    lengths[[0, 5, 6, 199]] = 0  # empty documents first, in a run and last
    doc_index = np.concatenate([rng.permutation(200), rng.permutation(200)]).astype(doc_dtype)
    expected = reference_sample_index(lengths, doc_index, seq_len)
    got = _C.gpt_sample_index(lengths, doc_index, seq_len)
    assert got.dtype == np.int64 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert _C.gpt_sample_index_count(lengths, doc_index, seq_len) == len(expected) - 1
    np.testing.assert_array_equal(_C.gpt_sample_index(lengths, doc_index, seq_len, 3), expected[:4])


def test_sample_index_errors_reach_python():
    lengths = np.array([3, 2], dtype=np.int32)
    with pytest.raises(gptcore.Error, match="hold 5 tokens but one sample needs seq_len \\+ 1 = 6"):
        _C.gpt_sample_index(lengths, np.array([0, 1], dtype=np.int32), 5)
    with pytest.raises(gptcore.Error, match="doc_index\\[0\\] = 2 is not a document id"):
        _C.gpt_sample_index(lengths, np.array([2], dtype=np.int32), 1)
    with pytest.raises(gptcore.Error, match="'sizes' has dtype int64"):
        _C.gpt_sample_index(lengths.astype(np.int64), np.array([0], dtype=np.int32), 1)
    with pytest.raises(gptcore.Error, match="not contiguous"):
        _C.gpt_sample_index(lengths, np.array([0, 9, 1, 9], dtype=np.int32)[::2], 1)
    with pytest.raises(gptcore.Error, match="rows for 2 samples but the documents hold 1"):
        _C.gpt_sample_index(lengths, np.array([0, 1], dtype=np.int32), 4, 2)


# ---- GPTDataset


def test_every_sample_is_the_shuffled_stream_cut_with_one_token_overlap():
    indexed = random_indexed()
    seq_len = 16
    ds = GPTDataset(indexed, range(0, len(indexed.document_indices) - 1), None, seq_len, seed=3, eod_mask_id=None)
    assert ds.epochs == 1
    assert sorted(ds.doc_index.tolist()) == list(range(len(indexed)))  # one shuffled pass over all sequences
    stream = token_stream(indexed, ds.doc_index)
    assert len(ds) == (len(stream) - 1) // seq_len
    assert sorted(ds.shuffle_index.tolist()) == list(range(len(ds)))  # each sample served once
    for i in range(len(ds)):
        s = int(ds.shuffle_index[i])
        item = ds[i]
        text = stream[s * seq_len : s * seq_len + seq_len + 1]
        assert item["tokens"].dtype == torch.int64 and item["tokens"].shape == (seq_len,)
        assert torch.equal(item["tokens"], torch.from_numpy(text[:-1]))
        assert torch.equal(item["labels"], torch.from_numpy(text[1:]))
        assert item["loss_mask"].dtype == torch.float32 and bool((item["loss_mask"] == 1).all())
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_loss_mask_zeroes_the_eod_labels():
    indexed = InMemoryIndexed([5, 5, 5])
    eod = 1000 * 1 + 4  # the last token of sequence 1
    ds = GPTDataset(indexed, range(0, 3), None, 14, seed=0, eod_mask_id=eod)
    item = ds[0]
    assert torch.equal(item["loss_mask"], (item["labels"] != eod).float())
    assert item["loss_mask"].sum() == 13


def test_same_seed_same_samples_other_seed_other_order():
    indexed = random_indexed()
    docs = range(0, len(indexed.document_indices) - 1)
    a, b, c = (GPTDataset(indexed, docs, 500, 32, seed=s) for s in (7, 7, 8))
    for name in gpt_dataset.INDEX_NAMES:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.shuffle_index, c.shuffle_index)
    assert not np.array_equal(a.doc_index, c.doc_index)
    forward = [a[i]["tokens"] for i in range(len(a))]
    # Sample i does not depend on what was read before it: resuming needs only the counter.
    fresh = GPTDataset(indexed, docs, 500, 32, seed=7)
    for i in [499, 0, 250, 17, 250]:
        assert torch.equal(fresh[i]["tokens"], forward[i])
    assert not all(torch.equal(x["tokens"], y) for x, y in zip((c[i] for i in range(10)), forward[:10]))


def test_epochs_repeat_the_documents_and_keep_the_partial_last_epoch_last():
    indexed = random_indexed(num_sequences=50)
    docs = range(0, len(indexed.document_indices) - 1)
    tokens = int(indexed.sequence_lengths.sum())
    seq_len = 10
    one_epoch = (tokens - 1) // seq_len
    num_samples = 2 * one_epoch + one_epoch // 3
    ds = GPTDataset(indexed, docs, num_samples, seq_len, seed=1)
    assert ds.epochs == 3 and len(ds) == num_samples
    assert len(ds.doc_index) == 3 * 50
    for e in range(3):  # each epoch is its own permutation of the sequences
        assert sorted(ds.doc_index[50 * e : 50 * (e + 1)].tolist()) == list(range(50))
    assert not np.array_equal(ds.doc_index[:50], ds.doc_index[50:100])
    full = (2 * tokens - 1) // seq_len  # samples wholly inside the first two epochs
    assert sorted(ds.shuffle_index[:full].tolist()) == list(range(full))
    assert (ds.shuffle_index[full:] >= full).all()
    stream = token_stream(indexed, ds.doc_index)
    for i in [0, full - 1, full, num_samples - 1]:
        s = int(ds.shuffle_index[i])
        np.testing.assert_array_equal(ds.sample_tokens(i), stream[s * seq_len : s * seq_len + seq_len + 1])
    with pytest.raises(IndexError):
        ds[num_samples]


def test_splits_read_disjoint_documents_that_cover_the_dataset():
    indexed = random_indexed(num_sequences=400)
    num_documents = len(indexed.document_indices) - 1
    seen = []
    for documents in parse_split("80,15,5", num_documents):
        ds = GPTDataset(indexed, documents, None, 8, seed=0)
        first, stop = indexed.document_indices[documents.start], indexed.document_indices[documents.stop]
        assert sorted(ds.doc_index.tolist()) == list(range(first, stop))
        seen += ds.doc_index.tolist()
        for i in range(len(ds)):  # every token comes from this split's sequences
            origin = ds.sample_tokens(i) // 1000
            assert ((origin >= first) & (origin < stop)).all()
    assert sorted(seen) == list(range(len(indexed)))


def test_indices_are_cached_and_reloaded_without_a_rebuild(tmp_path, monkeypatch):
    indexed = random_indexed()
    docs = range(0, len(indexed.document_indices) - 1)
    first = GPTDataset(indexed, docs, 300, 16, seed=5, cache_dir=tmp_path)
    assert all(p.exists() for p in first.cache_paths.values())
    assert len(list(tmp_path.glob("*-description.json"))) == 1
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary files left

    def no_rebuild(*args):
        raise AssertionError("the indices were rebuilt although they are cached")

    monkeypatch.setattr(gpt_dataset, "build_indices", no_rebuild)
    again = GPTDataset(indexed, docs, 300, 16, seed=5, cache_dir=tmp_path)
    assert again.cache_paths == first.cache_paths
    for name in gpt_dataset.INDEX_NAMES:
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert torch.equal(again[123]["tokens"], first[123]["tokens"])

    monkeypatch.undo()
    names = {frozenset(p.name for p in first.cache_paths.values())}
    changed_lengths = InMemoryIndexed(np.r_[indexed.sequence_lengths[:-1], 7], indexed.document_indices)
    for ds in [
        GPTDataset(indexed, docs, 300, 16, seed=6, cache_dir=tmp_path),
        GPTDataset(indexed, docs, 300, 17, seed=5, cache_dir=tmp_path),
        GPTDataset(indexed, docs, 900, 16, seed=5, cache_dir=tmp_path),  # more epochs
        GPTDataset(indexed, range(1, docs.stop), 300, 16, seed=5, cache_dir=tmp_path),
        GPTDataset(changed_lengths, docs, 300, 16, seed=5, cache_dir=tmp_path),
    ]:
        names.add(frozenset(p.name for p in ds.cache_paths.values()))
    assert len(names) == 6


def test_empty_and_too_short_datasets_say_why():
    with pytest.raises(ValueError, match="this split has no documents"):
        GPTDataset(InMemoryIndexed([]), range(0, 0), None, 4, seed=0)
    with pytest.raises(ValueError, match="this split has no documents"):
        GPTDataset(InMemoryIndexed([5, 5]), range(1, 1), None, 4, seed=0)
    with pytest.raises(ValueError, match="hold 0 tokens but one sample needs seq_len \\+ 1 = 5"):
        GPTDataset(InMemoryIndexed([0, 0]), range(0, 2), 10, 4, seed=0)
    with pytest.raises(ValueError, match="hold 5 tokens but one sample needs seq_len \\+ 1 = 9"):
        GPTDataset(InMemoryIndexed([2, 3]), range(0, 2), 10, 8, seed=0)
    with pytest.raises(ValueError, match="not a contiguous range within the 2 documents"):
        GPTDataset(InMemoryIndexed([5, 5]), range(0, 3), None, 4, seed=0)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        GPTDataset(InMemoryIndexed([5, 5]), range(0, 2), None, 0, seed=0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        GPTDataset(InMemoryIndexed([5, 5]), range(0, 2), 0, 4, seed=0)
    exact = GPTDataset(InMemoryIndexed([2, 3]), range(0, 2), None, 4, seed=0)  # exactly seq_len + 1 tokens
    assert len(exact) == 1 and exact.sample_tokens(0).shape == (5,)


def _build_on_two_ranks(rank, init_file, cache_dir, indexed, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if rank == 1:  # only rank 0 may build; rank 1 waits at the barrier, then loads
            gpt_dataset.build_indices = None
        ds = GPTDataset(indexed, range(0, len(indexed.document_indices) - 1), 200, 16, seed=2, cache_dir=cache_dir)
        results[rank] = ds.shuffle_index[:50].tolist()
    finally:
        dist.destroy_process_group()


def test_rank_zero_builds_and_the_others_load(tmp_path):
    indexed = random_indexed(num_sequences=100)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_build_on_two_ranks, args=(tmp_path / "init", tmp_path / "cache", indexed, results), nprocs=2)
        assert results[0] == results[1]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


# ---- blending


def test_blend_counts_follow_the_weights_and_are_deterministic():
    rng = np.random.default_rng(0)
    for _ in range(50):
        weights = rng.random(int(rng.integers(1, 9)))
        weights[rng.random(len(weights)) < 0.2] = 0
        if weights.sum() == 0:
            weights[0] = 1
        size = int(rng.integers(0, 5000))
        dataset_index, dataset_sample_index = blend_index(weights, size)
        assert dataset_index.dtype == np.uint8 and dataset_sample_index.dtype == np.int64
        counts = np.bincount(dataset_index, minlength=len(weights))
        assert np.abs(counts - weights / weights.sum() * size).max() < 1  # within one sample
        for d in range(len(weights)):  # each dataset's samples are taken in order 0, 1, 2, ...
            assert dataset_sample_index[dataset_index == d].tolist() == list(range(counts[d]))
        again = blend_index(weights, size)
        assert np.array_equal(again[0], dataset_index) and np.array_equal(again[1], dataset_sample_index)
    wide, _ = blend_index(np.ones(300), 600)
    assert wide.dtype == np.uint16 and np.bincount(wide).tolist() == [2] * 300
    with pytest.raises(gptcore.Error, match="weights\\[1\\] = -1"):
        blend_index([1.0, -1.0], 5)


def test_blended_dataset_serves_its_datasets_samples():
    a_indexed, b_indexed = random_indexed(seed=1), random_indexed(seed=2)
    weights, prefixes = parse_blend("0.35 A 0.65 B")
    assert prefixes == ["A", "B"]
    size = 400
    counts = blend_sample_counts(weights, size)
    assert counts == [140, 260]
    parts = [
        GPTDataset(ix, range(0, len(ix.document_indices) - 1), n, 8, seed=s)
        for ix, n, s in [(a_indexed, counts[0], 1), (b_indexed, counts[1], 2)]
    ]
    blend = BlendedDataset(parts, weights, size)
    assert len(blend) == size
    taken = [0, 0]
    for i in range(size):
        d = int(blend.dataset_index[i])
        assert torch.equal(blend[i]["tokens"], parts[d][taken[d]]["tokens"])
        taken[d] += 1
    assert taken == counts
    with pytest.raises(ValueError, match="dataset 0 has 140 samples but the blend takes 141"):
        BlendedDataset(parts, [0.35, 0.65], size + 1)
    with pytest.raises(ValueError, match="2 datasets but 3 weights"):
        BlendedDataset(parts, [1, 1, 1], size)
