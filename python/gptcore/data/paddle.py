"""PaddleNLP's pretraining data, converted exactly into a Megatron indexed dataset.

PaddleNLP's ``create_pretraining_data.py`` (and the files its GPT README ships, such as
``gpt_en_dataset_300m_ids.npy`` + ``gpt_en_dataset_300m_idx.npz``) writes a prefix as two files:

- ``<prefix>_ids.npy``: every token id, flat (uint16 below a vocabulary of 65535, else int32);
- ``<prefix>_idx.npz``: ``lens`` (int32, the length of each sentence, in order) and ``docs`` (int64,
  the cumulative sentence count: 0, then the first sentence of the next document, ..., ending at the
  number of sentences; one more entry than documents), and sometimes ``sents`` (not needed).

That is Megatron's index in other files: ``lens`` are its sequence lengths and ``docs`` its document
indices, so the conversion keeps every document, sentence and token as it is (and the token dtype).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from gptcore.data.indexed import DTYPE_CODES, IndexedDatasetBuilder

PathLike = str | os.PathLike
IDS_SUFFIX, INDEX_SUFFIX = "_ids.npy", "_idx.npz"


def paddle_prefix(path: PathLike) -> str | None:
    """The PaddleNLP prefix ``path`` names (the prefix itself or either of its files), or None when
    ``<prefix>_ids.npy`` and ``<prefix>_idx.npz`` are not both there."""
    prefix = os.fspath(path)
    for suffix in (IDS_SUFFIX, INDEX_SUFFIX):
        prefix = prefix.removesuffix(suffix)
    has_files = all(Path(prefix + s).is_file() for s in (IDS_SUFFIX, INDEX_SUFFIX))
    return prefix if has_files else None


def read_paddle_data(prefix: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, lens, docs) of a PaddleNLP prefix, checked to describe each other; ids stay memory-mapped.
    Nothing is unpickled. A fault raises ValueError naming the file and what is wrong."""
    prefix = os.fspath(prefix)
    ids_file, index_file = prefix + IDS_SUFFIX, prefix + INDEX_SUFFIX
    for f in (ids_file, index_file):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: not found; PaddleNLP data is <prefix>{IDS_SUFFIX} + <prefix>{INDEX_SUFFIX}")
    try:
        ids = np.load(ids_file, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{ids_file}: not a numpy array of token ids ({e})") from None
    if ids.ndim != 1 or ids.dtype not in DTYPE_CODES or ids.dtype.kind not in "iu":
        raise ValueError(f"{ids_file}: expected a 1-D integer array of token ids, got {ids.dtype} of shape {ids.shape}")
    try:
        with np.load(index_file, allow_pickle=False) as index:
            arrays = {k: index[k] for k in index.files if k in ("lens", "docs")}
            held = index.files
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"{index_file}: not a numpy .npz archive of arrays ({e})") from None
    missing = [k for k in ("lens", "docs") if k not in arrays]
    if missing:
        raise ValueError(
            f"{index_file}: no {' or '.join(missing)} array (it holds {held}); PaddleNLP's"
            " create_pretraining_data.py writes lens (sentence lengths) and docs (cumulative sentence counts)"
        )
    lens, docs = arrays["lens"], arrays["docs"]
    if lens.ndim != 1 or lens.dtype.kind not in "iu" or (lens.size and lens.min() < 0):
        raise ValueError(
            f"{index_file}: lens must be non-negative integer sentence lengths, got {lens.dtype} {lens.shape}"
        )
    if lens.sum(dtype=np.int64) != len(ids):
        raise ValueError(
            f"{index_file}: lens add up to {lens.sum(dtype=np.int64)} tokens but {ids_file} holds {len(ids)};"
            " the two files are not of the same dataset"
        )
    if docs.ndim != 1 or docs.dtype.kind not in "iu" or len(docs) == 0:
        raise ValueError(f"{index_file}: docs must be a non-empty 1-D integer array, got {docs.dtype} {docs.shape}")
    if docs[0] != 0 or docs[-1] != len(lens) or np.any(np.diff(docs.astype(np.int64)) < 0):
        raise ValueError(
            f"{index_file}: docs must rise from 0 to the sentence count {len(lens)} (got {docs[0]} .. {docs[-1]});"
            " the index is damaged"
        )
    return ids, lens.astype(np.int64), docs.astype(np.int64)


def convert_paddle_data(prefix: PathLike, output_prefix: PathLike, vocab_size: int | None = None) -> dict:
    """Write PaddleNLP's ``prefix`` as the Megatron dataset ``output_prefix.bin/.idx``: the same documents,
    sentences (as sequences) and tokens, in the same dtype. With ``vocab_size`` every id must lie below it.
    Returns ``documents``, ``sequences``, ``tokens``, ``dtype`` and ``output`` (the prefix written)."""
    ids, lens, docs = read_paddle_data(prefix)
    if vocab_size is not None and len(ids) and ids.max() >= vocab_size:
        raise ValueError(
            f"{os.fspath(prefix)}{IDS_SUFFIX}: token id {ids.max()} is outside the vocabulary of {vocab_size};"
            " convert with the tokenizer the data was made with"
        )
    output = os.fspath(output_prefix)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    starts = np.concatenate([[0], np.cumsum(lens)])
    with IndexedDatasetBuilder(output, ids.dtype, vocab_size) as builder:
        for first, end in zip(docs[:-1], docs[1:]):
            builder.add_sequences(ids[starts[first] : starts[end]], lens[first:end])
    return {
        "documents": len(docs) - 1,
        "sequences": len(lens),
        "tokens": len(ids),
        "dtype": str(ids.dtype),
        "output": output,
    }


def paddle_as_megatron(prefix: PathLike, cache_dir: PathLike, vocab_size: int | None = None) -> str:
    """The Megatron prefix of PaddleNLP's ``prefix``, converted into ``cache_dir`` on first use (keyed by the
    files' path, size and modification time) and reused after."""
    prefix = os.fspath(prefix)
    key = hashlib.sha256()
    for f in (prefix + IDS_SUFFIX, prefix + INDEX_SUFFIX):
        st = os.stat(f)
        key.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    out = os.path.join(os.fspath(cache_dir), f"{os.path.basename(prefix)}-{key.hexdigest()[:16]}")
    if not (Path(out + ".idx").is_file() and Path(out + ".bin").is_file()):
        convert_paddle_data(prefix, out, vocab_size)
    return out
