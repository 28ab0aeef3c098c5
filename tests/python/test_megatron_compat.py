"""Our .bin/.idx against Megatron-LM's own reader and writer (megatron-core), both directions."""

import pathlib
import warnings

import numpy as np
import pytest
import torch

from gptcore.data import IndexedDataset, IndexedDatasetBuilder

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # megatron-core warns that Transformer Engine / Apex are absent
    megatron = pytest.importorskip("megatron.core.datasets.indexed_dataset")

# Documents of one or more sequences, including a one-token sequence.
DOCUMENTS = [[[1, 2, 3, 4]], [[5, 6], [7]], [[8, 9, 10]], [[11], [12, 13, 14, 15], [16]]]


def _same(ours: IndexedDataset, theirs) -> None:
    assert len(ours) == len(theirs)
    np.testing.assert_array_equal(ours.sequence_lengths, theirs.sequence_lengths)
    np.testing.assert_array_equal(ours.sequence_pointers, theirs.index.sequence_pointers)
    np.testing.assert_array_equal(ours.document_indices, theirs.document_indices)
    for i in range(len(ours)):
        np.testing.assert_array_equal(ours[i], theirs[i])
        np.testing.assert_array_equal(ours.get(i, 1), theirs.get(i, 1))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_megatron_writes_we_read(tmp_path, dtype):
    prefix = str(tmp_path / "megatron")
    builder = megatron.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in DOCUMENTS:
        builder.add_document(torch.tensor(sum(doc, []), dtype=torch.int64), [len(s) for s in doc])
    builder.finalize(prefix + ".idx")
    ours = IndexedDataset(prefix)
    assert ours.dtype == np.dtype(dtype)
    _same(ours, megatron.IndexedDataset(prefix))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_we_write_megatron_reads(tmp_path, dtype):
    prefix = str(tmp_path / "ours")
    with IndexedDatasetBuilder(prefix, dtype=dtype) as builder:
        for doc in DOCUMENTS:
            builder.add_document([np.array(s) for s in doc])
    theirs = megatron.IndexedDataset(prefix)
    assert theirs.index.dtype == dtype
    _same(IndexedDataset(prefix), theirs)


def test_files_are_byte_identical(tmp_path):
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "megatron")
    with IndexedDatasetBuilder(ours, dtype=np.uint16) as builder:
        for doc in DOCUMENTS:
            builder.add_document([np.array(s) for s in doc])
    builder = megatron.IndexedDatasetBuilder(theirs + ".bin", dtype=np.uint16)
    for doc in DOCUMENTS:
        builder.add_document(torch.tensor(sum(doc, []), dtype=torch.int64), [len(s) for s in doc])
    builder.finalize(theirs + ".idx")
    for suffix in (".bin", ".idx"):
        assert pathlib.Path(ours + suffix).read_bytes() == pathlib.Path(theirs + suffix).read_bytes()
