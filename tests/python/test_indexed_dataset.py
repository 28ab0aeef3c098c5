"""Megatron's .bin/.idx format: round trips, a reference reader and writer written here from the
format description, merge, every corrupt-file check, interrupted writes, vocabulary checks."""

import struct

import numpy as np
import pytest

import gptcore
from gptcore.data import IndexedDataset, IndexedDatasetBuilder, best_dtype

MAGIC = b"MMIDIDX\x00\x00"
CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}

# Documents as lists of sequences, with an empty document and an empty sequence among them.
DOCS = [[[1, 2, 3]], [[4, 5], [6], [7, 8, 9, 10]], [], [[11]], [[]], [[12, 13], []]]


def write_megatron(prefix, dtype, docs):
    """Writes `docs` the way Megatron's IndexedDatasetBuilder does, from the format description."""
    item = np.dtype(dtype).itemsize
    lengths = [len(s) for doc in docs for s in doc]
    pointers = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]]) * item if lengths else []
    document_indices = np.cumsum([0] + [len(doc) for doc in docs])
    with open(f"{prefix}.bin", "wb") as f:
        for doc in docs:
            for s in doc:
                f.write(np.asarray(s, dtype).tobytes(order="C"))
    with open(f"{prefix}.idx", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", CODES[dtype]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(document_indices)))
        f.write(np.array(lengths, np.int32).tobytes(order="C"))
        f.write(np.array(pointers, np.int64).tobytes(order="C"))
        f.write(np.array(document_indices, np.int64).tobytes(order="C"))


def read_reference(prefix):
    """Reads a dataset with struct and numpy only, exactly as the format describes it."""
    with open(f"{prefix}.idx", "rb") as f:
        idx = f.read()
    assert idx[:9] == MAGIC
    (version,) = struct.unpack("<Q", idx[9:17])
    (code,) = struct.unpack("<B", idx[17:18])
    sequences, documents = struct.unpack("<QQ", idx[18:34])
    dtype = {v: k for k, v in CODES.items()}[code]
    lengths = np.frombuffer(idx, np.int32, sequences, 34)
    pointers = np.frombuffer(idx, np.int64, sequences, 34 + 4 * sequences)
    document_indices = np.frombuffer(idx, np.int64, documents, 34 + 12 * sequences)
    assert len(idx) == 34 + 12 * sequences + 8 * documents
    data = np.fromfile(f"{prefix}.bin", dtype)
    item = np.dtype(dtype).itemsize
    seqs = [data[p // item : p // item + n] for p, n in zip(pointers, lengths)]
    return version, dtype, lengths, pointers, document_indices, seqs


def build(prefix, dtype, docs, **kwargs):
    with IndexedDatasetBuilder(prefix, dtype, **kwargs) as b:
        for doc in docs:
            b.add_document(doc)


def flatten(docs):
    return [s for doc in docs for s in doc]


def expected_document_indices(docs):
    return np.cumsum([0] + [len(doc) for doc in docs])


@pytest.mark.parametrize("dtype", list(CODES))
def test_round_trip_every_dtype(tmp_path, dtype):
    prefix = tmp_path / "ds"
    build(prefix, dtype, DOCS)
    ds = IndexedDataset(prefix)
    assert len(ds) == len(flatten(DOCS)) and ds.num_documents == len(DOCS)
    assert ds.dtype == np.dtype(dtype)
    for i, s in enumerate(flatten(DOCS)):
        assert ds[i].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(ds[i], np.asarray(s, dtype))
    np.testing.assert_array_equal(ds.document_indices, expected_document_indices(DOCS))
    np.testing.assert_array_equal(ds.sequence_lengths, [len(s) for s in flatten(DOCS)])


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_reference_reader_agrees_with_our_writer_on_every_field(tmp_path, dtype):
    prefix = tmp_path / "ds"
    build(prefix, dtype, DOCS)
    version, ref_dtype, lengths, pointers, document_indices, seqs = read_reference(prefix)
    ds = IndexedDataset(prefix)
    assert version == 1 and ref_dtype is dtype
    np.testing.assert_array_equal(ds.sequence_lengths, lengths)
    np.testing.assert_array_equal(ds.sequence_pointers, pointers)
    np.testing.assert_array_equal(ds.document_indices, document_indices)
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(ds[i], s)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_megatron_written_file_reads_and_our_writer_matches_it_byte_for_byte(tmp_path, dtype):
    write_megatron(tmp_path / "megatron", dtype, DOCS)
    build(tmp_path / "ours", dtype, DOCS)
    for ext in ("idx", "bin"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"megatron.{ext}").read_bytes()
    ds = IndexedDataset(tmp_path / "megatron")
    for i, s in enumerate(flatten(DOCS)):
        np.testing.assert_array_equal(ds[i], np.asarray(s, dtype))


def test_views_are_zero_copy_read_only_and_keep_the_file_mapped(tmp_path):
    build(tmp_path / "ds", np.int32, [[[1, 2, 3, 4, 5]]])
    ds = IndexedDataset(tmp_path / "ds")
    seq, part, lengths = ds[0], ds.get(0, 1, 3), ds.sequence_lengths
    assert not seq.flags.writeable and not lengths.flags.writeable
    with pytest.raises(ValueError):
        seq[0] = 7
    assert seq.__array_interface__["data"][0] + 4 == part.__array_interface__["data"][0]
    del ds
    np.testing.assert_array_equal(part, [2, 3, 4])
    np.testing.assert_array_equal(lengths, [5])


def test_get_offsets_and_bounds(tmp_path):
    build(tmp_path / "ds", np.uint16, [[[1, 2, 3, 4]], [[5, 6]]])
    ds = IndexedDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.get(0, 2), [3, 4])
    np.testing.assert_array_equal(ds.get(1, 0, 1), [5])
    np.testing.assert_array_equal(ds.get(0, 4), [])
    np.testing.assert_array_equal(ds[-1], [5, 6])
    for bad in (lambda: ds[2], lambda: ds[-3], lambda: ds.get(0, 5), lambda: ds.get(0, 3, 2), lambda: ds.get(0, -1)):
        with pytest.raises(IndexError):
            bad()
    assert [list(s) for s in ds] == [[1, 2, 3, 4], [5, 6]]


def test_item_by_item_and_flat_document_writing_agree(tmp_path):
    with IndexedDatasetBuilder(tmp_path / "a", np.int32) as b:
        for doc in DOCS:
            for s in doc:
                b.add_item(s)
            b.end_document()
    build(tmp_path / "b", np.int32, DOCS)
    for ext in ("idx", "bin"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


def test_finalize_closes_an_open_document(tmp_path):
    b = IndexedDatasetBuilder(tmp_path / "ds", np.int32)
    b.add_item([1, 2])
    b.add_item([3])
    b.finalize()
    ds = IndexedDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.document_indices, [0, 2])


def test_empty_dataset(tmp_path):
    IndexedDatasetBuilder(tmp_path / "ds", np.uint16).finalize()
    ds = IndexedDataset(tmp_path / "ds")
    assert len(ds) == 0 and ds.num_documents == 0
    np.testing.assert_array_equal(ds.document_indices, [0])
    assert ds.sequence_lengths.size == 0 and ds.tokens.size == 0
    assert (tmp_path / "ds.bin").stat().st_size == 0
    assert (tmp_path / "ds.idx").stat().st_size == 34 + 8


def test_merge(tmp_path):
    build(tmp_path / "a", np.uint16, DOCS[:2])
    build(tmp_path / "b", np.uint16, DOCS[2:])
    with IndexedDatasetBuilder(tmp_path / "merged", np.uint16) as b:
        b.add_document([[100, 101]])
        b.merge_file_(tmp_path / "a")
        b.merge_file_(tmp_path / "b")
        b.add_document([102])
    docs = [[[100, 101]]] + DOCS + [[[102]]]
    build(tmp_path / "direct", np.uint16, docs)
    for ext in ("idx", "bin"):
        assert (tmp_path / f"merged.{ext}").read_bytes() == (tmp_path / f"direct.{ext}").read_bytes()


def test_merge_refuses_another_dtype_and_an_open_document(tmp_path):
    build(tmp_path / "a", np.int32, DOCS)
    with IndexedDatasetBuilder(tmp_path / "m", np.uint16) as b:
        with pytest.raises(gptcore.Error, match="a.idx has dtype code 4"):
            b.merge_file_(tmp_path / "a")
        b.add_item([1])
        with pytest.raises(gptcore.Error, match="open document"):
            b.merge_file_(tmp_path / "a")


def test_merge_validates_the_other_dataset(tmp_path):
    build(tmp_path / "a", np.int32, DOCS)
    (tmp_path / "a.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:-4])
    b = IndexedDatasetBuilder(tmp_path / "m", np.int32)
    with pytest.raises(gptcore.Error, match=r"a.bin has 48 bytes .*\(too short\)"):
        b.merge_file_(tmp_path / "a")
    b.abort()


def test_interrupted_write_leaves_no_index_and_keeps_the_old_dataset(tmp_path):
    build(tmp_path / "ds", np.uint16, DOCS)
    old = {ext: (tmp_path / f"ds.{ext}").read_bytes() for ext in ("idx", "bin")}
    with pytest.raises(KeyboardInterrupt), IndexedDatasetBuilder(tmp_path / "ds", np.uint16) as b:
        b.add_document([9, 9, 9])
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.bin", "ds.idx"]
    assert old == {ext: (tmp_path / f"ds.{ext}").read_bytes() for ext in ("idx", "bin")}
    with pytest.raises(RuntimeError), IndexedDatasetBuilder(tmp_path / "fresh", np.uint16) as b:
        b.add_document([1])
        assert any(p.name.startswith("fresh.bin.tmp.") for p in tmp_path.iterdir())
        raise RuntimeError("stop")
    assert not any(p.name.startswith("fresh") for p in tmp_path.iterdir())


def test_rewriting_a_prefix_replaces_the_dataset(tmp_path):
    build(tmp_path / "ds", np.uint16, DOCS)
    build(tmp_path / "ds", np.uint16, [[[7, 7]]])
    ds = IndexedDataset(tmp_path / "ds")
    assert len(ds) == 1 and list(ds[0]) == [7, 7]


def test_builder_vocab_check(tmp_path):
    with IndexedDatasetBuilder(tmp_path / "ds", np.int32, vocab_size=10) as b:
        b.add_document([0, 9])
        with pytest.raises(gptcore.Error, match="token 1 of the sequence is 10, outside the vocabulary"):
            b.add_document([3, 10])
        with pytest.raises(gptcore.Error, match="is -1, outside the vocabulary"):
            b.add_item([-1])
    assert len(IndexedDataset(tmp_path / "ds")) == 1


def test_reader_vocab_check_names_file_sequence_position_and_value(tmp_path):
    build(tmp_path / "ds", np.uint16, [[[1, 2]], [[], [3, 4, 50000, 5]]])
    ds = IndexedDataset(tmp_path / "ds")
    ds.check_vocab(50001)
    with pytest.raises(gptcore.Error, match=r"ds\.bin: sequence 2 has token 50000 at position 2, outside the vocab"):
        ds.check_vocab(50000)
    build(tmp_path / "f", np.float32, [[[1.5]]])
    with pytest.raises(gptcore.Error, match="integer token ids"):
        IndexedDataset(tmp_path / "f").check_vocab(10)


def test_builder_refuses_token_ids_that_do_not_fit_the_dtype(tmp_path):
    with IndexedDatasetBuilder(tmp_path / "ds", np.uint16) as b:
        with pytest.raises(ValueError, match="do not fit uint16"):
            b.add_document([1, 70000])
        with pytest.raises(ValueError, match="1-D"):
            b.add_item([[1, 2]])
    with pytest.raises(ValueError, match="not bool"):
        IndexedDatasetBuilder(tmp_path / "x", np.bool_)


def test_best_dtype():
    assert best_dtype(50257) == np.uint16 and best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32 and best_dtype(None) == np.int32


def resize(path, delta):
    """Cuts `delta` < 0 bytes off the end of a file, or appends `delta` > 0 bytes."""
    raw = path.read_bytes()
    path.write_bytes(raw[:delta] if delta < 0 else raw + b"x" * delta)


def patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


# DOCS as uint16: 8 sequences, 7 document indices; lengths at 34, pointers at 66, documents at 130.
CORRUPTIONS = {
    "bad magic": (lambda d: patch(d / "ds.idx", 0, b"MMIDIDY"), "ds.idx is not a Megatron .*bad magic"),
    "version": (lambda d: patch(d / "ds.idx", 9, struct.pack("<Q", 2)), "ds.idx has version 2"),
    "dtype code": (lambda d: patch(d / "ds.idx", 17, b"\x09"), "ds.idx has dtype code 9"),
    "header cut": (lambda d: resize(d / "ds.idx", -166), "ds.idx is truncated"),
    "truncated idx": (lambda d: resize(d / "ds.idx", -8), "needs exactly .*truncated"),
    "trailing bytes": (lambda d: resize(d / "ds.idx", 9), "ds.idx has 195 bytes .*trailing bytes"),
    "sequence count": (lambda d: patch(d / "ds.idx", 18, struct.pack("<Q", 10)), "ds.idx has 186 bytes .*10 sequences"),
    "huge count": (lambda d: patch(d / "ds.idx", 26, struct.pack("<Q", 2**62)), "more than its 186 bytes hold"),
    "negative length": (lambda d: patch(d / "ds.idx", 34, struct.pack("<i", -1)), "sequence 0 has negative length"),
    "pointer": (lambda d: patch(d / "ds.idx", 66 + 8, struct.pack("<q", 4)), "points at byte 4 .*inconsistent"),
    "length": (lambda d: patch(d / "ds.idx", 34, struct.pack("<i", 2)), "sequence 1 points at byte 6 .* end at byte 4"),
    "bin short": (lambda d: resize(d / "ds.bin", -2), "ds.bin has 24 bytes .*too short"),
    "bin long": (lambda d: resize(d / "ds.bin", 2), "ds.bin has 28 .*too long"),
    "no bin": (lambda d: (d / "ds.bin").unlink(), "cannot open .*ds.bin"),
    "no idx": (lambda d: (d / "ds.idx").unlink(), "cannot open .*ds.idx"),
    "not monotone": (lambda d: patch(d / "ds.idx", 130 + 16, struct.pack("<q", 0)), "document index 2 is 0, below .*1"),
    "doc start": (lambda d: patch(d / "ds.idx", 130, struct.pack("<q", 1)), "document index starts at 1"),
    "doc past end": (lambda d: patch(d / "ds.idx", 130 + 48, struct.pack("<q", 10)), "document index 6 is 10, past"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_files_fail_naming_the_file_and_the_fault(tmp_path, case):
    build(tmp_path / "ds", np.uint16, DOCS)
    assert (tmp_path / "ds.idx").stat().st_size == 186 and (tmp_path / "ds.bin").stat().st_size == 26
    corrupt, message = CORRUPTIONS[case]
    corrupt(tmp_path)
    with pytest.raises(gptcore.Error, match=message) as info:
        IndexedDataset(tmp_path / "ds")
    assert str(tmp_path) in str(info.value)
