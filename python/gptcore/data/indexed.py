"""Megatron-LM's indexed dataset (``prefix.bin`` + ``prefix.idx``), byte for byte.

Files written by Megatron-LM's tools open here, and files written here open in Megatron.
The reader maps both files and validates them on open; every array it returns is a read-only
numpy view into the mapping. The builder writes under temporary names and moves the files
into place only on ``finalize`` (``.idx`` last), so a run that stops early leaves no ``.idx``.

Empty documents (no sequences) and empty sequences (no tokens) are both allowed, as in Megatron.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from gptcore import _C

# Megatron's dtype codes, as stored in the .idx header.
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}


def best_dtype(vocab_size: int | None) -> np.dtype:
    """The smallest token dtype Megatron picks for a vocabulary: uint16 below 65500, else int32."""
    return np.dtype(np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32)


def _code(dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype not in DTYPE_CODES:
        names = ", ".join(str(d) for d in DTYPE_CODES)
        raise ValueError(f"an indexed dataset holds {names} tokens, not {dtype}")
    return DTYPE_CODES[dtype]


class IndexedDataset:
    """A validated, memory-mapped Megatron dataset: ``len`` sequences, grouped into documents.

    ``ds[i]`` is sequence ``i`` as a read-only numpy view; ``ds.get(i, offset, length)`` a slice
    of it. ``document_indices`` holds the first sequence of each document and ends at ``len``.
    Errors from opening (``gptcore.Error``) name the file and the fault.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self._reader = _C.IndexedReader(self.prefix)

    def __len__(self) -> int:
        return self._reader.num_sequences

    def __getitem__(self, i: int) -> np.ndarray:
        return self._reader.sequence(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (to its end without a length)."""
        return self._reader.sequence(i, offset, -1 if length is None else length)

    @property
    def dtype(self) -> np.dtype:
        return self._reader.dtype

    @property
    def sequence_lengths(self) -> np.ndarray:
        """int32 [len]: tokens per sequence."""
        return self._reader.sequence_lengths

    @property
    def sequence_pointers(self) -> np.ndarray:
        """int64 [len]: byte offset of each sequence in the .bin file."""
        return self._reader.sequence_pointers

    @property
    def document_indices(self) -> np.ndarray:
        """int64 [documents + 1]: the first sequence of each document, then the end of the last one."""
        return self._reader.document_indices

    @property
    def num_documents(self) -> int:
        return self._reader.num_document_indices - 1

    @property
    def tokens(self) -> np.ndarray:
        """Every token of the .bin file, in order."""
        return self._reader.tokens

    def check_vocab(self, vocab_size: int) -> None:
        """Raises ``gptcore.Error`` naming the first token id outside ``[0, vocab_size)``."""
        self._reader.check_vocab(vocab_size)

    def __repr__(self) -> str:
        counts = f"sequences={len(self)}, documents={self.num_documents}"
        return f"IndexedDataset({self.prefix!r}, {counts}, dtype={self.dtype})"


class IndexedDatasetBuilder:
    """Writes a Megatron dataset at ``prefix`` with tokens of ``dtype``.

    With ``vocab_size``, every token must lie in ``[0, vocab_size)``. As a context manager it
    finalizes on a clean exit and aborts on an exception, leaving nothing that looks complete.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.int32, vocab_size: int | None = None):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        self._writer = _C.IndexedWriter(self.prefix, _code(self.dtype), vocab_size or 0)
        self._done = False  # finalized or aborted

    def _tokens(self, tokens) -> np.ndarray:
        a = np.asarray(tokens)
        if a.ndim != 1:
            raise ValueError(f"a sequence must be 1-D, got shape {a.shape}")
        if a.dtype == self.dtype:
            return np.ascontiguousarray(a)
        if a.size == 0:
            return np.empty(0, self.dtype)
        cast = a.astype(self.dtype)
        if not np.array_equal(cast, a):
            raise ValueError(f"token ids do not fit {self.dtype} exactly (range {a.min()}..{a.max()})")
        return cast

    def add_item(self, tokens) -> None:
        """Appends one sequence to the open document."""
        self._writer.add_sequence(self._tokens(tokens))

    def end_document(self) -> None:
        """Closes the open document (an empty one when nothing was added since the last)."""
        self._writer.end_document()

    def add_document(self, sequences) -> None:
        """One document: a 1-D array of token ids (one sequence), or a list of such sequences.

        A list whose items are all scalars is one sequence; ``[]`` is a document of no sequences.
        """
        if isinstance(sequences, Sequence) and not isinstance(sequences, (str, bytes)):
            if any(np.ndim(s) != 0 for s in sequences):
                parts = [self._tokens(s) for s in sequences]
                flat = np.concatenate(parts) if parts else np.empty(0, self.dtype)
                self._writer.add_document(flat, np.array([len(p) for p in parts], np.int64))
                return
            if len(sequences) == 0:
                self._writer.end_document()
                return
        tokens = self._tokens(sequences)
        self._writer.add_document(tokens, np.array([len(tokens)], np.int64))

    def add_sequences(self, tokens, lengths) -> None:
        """One document of ``len(lengths)`` sequences whose tokens lie one after another in ``tokens``."""
        lengths = np.asarray(lengths, np.int64)
        tokens = self._tokens(tokens)
        if lengths.ndim != 1 or lengths.sum() != len(tokens):
            raise ValueError(f"sequence lengths add up to {lengths.sum()}, not the {len(tokens)} tokens given")
        self._writer.add_document(tokens, lengths)

    def merge_file_(self, other_prefix: str | os.PathLike) -> None:
        """Appends every document of the dataset at ``other_prefix`` (same dtype)."""
        self._writer.merge(os.fspath(other_prefix))

    def finalize(self) -> None:
        """Ends an open document, writes the index and moves ``.bin`` then ``.idx`` into place."""
        self._done = True
        try:
            self._writer.finalize()
        finally:
            self._writer.close()

    def abort(self) -> None:
        """Deletes the temporary files; nothing at the prefix changes."""
        self._done = True
        self._writer.close()

    def __enter__(self) -> IndexedDatasetBuilder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
