"""GPT training samples from an indexed dataset: splits, epochs, shuffled indices cached on disk, blends.

A GPTDataset reads the sequences of a contiguous range of documents as one token stream, in an
order shuffled anew for each epoch, and cuts it into samples of seq_len + 1 tokens that overlap by
one token (inputs are tokens[:-1], labels tokens[1:]). Three index arrays describe it, as in
Megatron-LM: the document index (sequence ids in reading order), the sample index (where each
sample starts, built in C++) and the shuffle index (the order samples are served in). They depend
on the parameters only, so sample i is a pure function of (seed, i): resuming needs only the count
of samples consumed. They are cached as .npy files named by a sha256 of every input they depend on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from gptcore import _C

# Part of every cache key: bump it when the index algorithms change so old caches are not reused.
INDEX_VERSION = 1
INDEX_NAMES = ("doc_index", "sample_index", "shuffle_index")


class Indexed(Protocol):
    """What GPTDataset reads: gptcore.data.IndexedDataset or anything shaped like it."""

    sequence_lengths: np.ndarray  # int32 [num_sequences]
    document_indices: np.ndarray  # int64 [num_documents + 1], 0 first, num_sequences last

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray: ...


def parse_split(split: str, num_documents: int) -> list[range]:
    """'949,50,1' -> the train, validation and test document ranges.

    The weights (one to three, missing ones 0) are normalized; the ranges are contiguous, in
    order, cover range(num_documents) exactly and have sizes proportional to the weights."""
    parts = [part.strip() for part in split.split(",")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"split {split!r}: expected one to three comma-separated weights, as in '949,50,1'")
    try:
        weights = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"split {split!r}: the weights must be numbers, as in '949,50,1'") from None
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"split {split!r}: the weights must be finite and >= 0")
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"split {split!r}: the weights sum to 0; give one split a positive weight")
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    weights += [0.0] * (3 - len(weights))
    # Rounding the cumulative shares (not each share) keeps the bounds ordered and the end exact.
    bounds, cumulative = [0], 0.0
    for w in weights:
        cumulative += w
        bounds.append(round(cumulative / total * num_documents))
    bounds[-1] = num_documents
    return [range(start, stop) for start, stop in zip(bounds, bounds[1:])]


def parse_blend(blend: str) -> tuple[list[float], list[str]]:
    """'0.35 A 0.65 B' -> ([0.35, 0.65], ['A', 'B']) with the weights normalized; 'A' -> ([1.0], ['A'])."""
    words = blend.split()
    if len(words) == 1:
        return [1.0], words
    if not words or len(words) % 2:
        raise ValueError(f"blend {blend!r}: expected one path prefix, or weight/prefix pairs as in '0.35 A 0.65 B'")
    weights, prefixes = [], []
    for word, prefix in zip(words[0::2], words[1::2]):
        try:
            weight = float(word)
        except ValueError:
            raise ValueError(f"blend {blend!r}: {word!r} before {prefix!r} is not a weight") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"blend {blend!r}: the weight of {prefix!r} must be finite and >= 0, got {word}")
        weights.append(weight)
        prefixes.append(prefix)
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"blend {blend!r}: the weights sum to 0")
    return [w / total for w in weights], prefixes


def build_indices(lengths: np.ndarray, sequences: range, epochs: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """The document, sample and shuffle indices of `epochs` passes over `sequences`."""
    rng = np.random.RandomState(seed)
    ids = np.arange(sequences.start, sequences.stop, dtype=np.int32)
    doc_index = np.concatenate([rng.permutation(ids) for _ in range(epochs)])
    sample_index = _C.gpt_sample_index(lengths, doc_index, seq_len)
    # Samples wholly inside the full epochs come first, shuffled among themselves, so the part of
    # a last, partly used epoch that is served is no biased pick of the documents it would repeat.
    held = len(sample_index) - 1
    tokens_per_epoch = int(lengths[sequences.start : sequences.stop].sum(dtype=np.int64))
    full = ((epochs - 1) * tokens_per_epoch - 1) // seq_len if epochs > 1 else 0
    shuffle_index = np.concatenate([rng.permutation(full), full + rng.permutation(held - full)]).astype(np.int64)
    return {"doc_index": doc_index, "sample_index": sample_index, "shuffle_index": shuffle_index}


def _save_atomically(path: Path, write) -> None:
    """Writes through a temporary file in the same folder, renamed into place once complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class GPTDataset(torch.utils.data.Dataset):
    """Samples of seq_len + 1 tokens from the documents `documents` of `indexed`.

    num_samples: how many samples to serve; the documents are repeated for as many epochs as that
    takes. None serves one epoch (every sample the documents hold).
    cache_dir: where the indices are cached (None: built in memory). Under torch.distributed, rank
    0 builds missing indices while the other ranks wait at a barrier, then every rank loads them,
    so cache_dir must be one folder all ranks see.
    eod_mask_id: a token id (the end-of-document token) whose label positions get loss mask 0;
    None leaves the mask all ones.

    Item i is {"tokens", "labels": int64 [seq_len], "loss_mask": float32 [seq_len]}.
    """

    def __init__(
        self,
        indexed: Indexed,
        documents: range,
        num_samples: int | None,
        seq_len: int,
        seed: int,
        cache_dir: str | os.PathLike | None = None,
        eod_mask_id: int | None = None,
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}")
        document_indices = np.asarray(indexed.document_indices)
        num_documents = len(document_indices) - 1
        if documents.step != 1 or not 0 <= documents.start <= documents.stop <= num_documents:
            raise ValueError(f"documents {documents} is not a contiguous range within the {num_documents} documents")
        if len(documents) == 0:
            raise ValueError(f"documents {documents} is empty: this split has no documents to sample")
        self.indexed, self.seq_len, self.eod_mask_id = indexed, seq_len, eod_mask_id
        lengths = np.asarray(indexed.sequence_lengths, dtype=np.int32)
        sequences = range(int(document_indices[documents.start]), int(document_indices[documents.stop]))
        tokens_per_epoch = int(lengths[sequences.start : sequences.stop].sum(dtype=np.int64))
        if tokens_per_epoch < seq_len + 1:
            raise ValueError(
                f"documents {documents} hold {tokens_per_epoch} tokens but one sample needs seq_len + 1 = "
                f"{seq_len + 1}; give this split more documents or use a shorter seq_len"
            )
        # Enough epochs that the token stream holds num_samples samples of seq_len + 1 tokens.
        self.epochs = 1 if num_samples is None else -(-(num_samples * seq_len + 1) // tokens_per_epoch)
        # Every input the indices depend on; the lengths stand for the dataset, since the indices
        # depend on nothing else of it (a rewritten file with other lengths gets a new key).
        self.description = {
            "class": "GPTDataset",
            "version": INDEX_VERSION,
            "lengths_sha256": hashlib.sha256(lengths[sequences.start : sequences.stop].tobytes()).hexdigest(),
            "sequences": [sequences.start, sequences.stop],
            "epochs": self.epochs,
            "seq_len": seq_len,
            "seed": seed,
        }

        def build():
            return build_indices(lengths, sequences, self.epochs, seq_len, seed)

        indices = self._cached(build, cache_dir)
        self.doc_index = indices["doc_index"]
        self.sample_index = indices["sample_index"]
        self.shuffle_index = indices["shuffle_index"]
        held = len(self.sample_index) - 1
        self.num_samples = held if num_samples is None else num_samples
        assert self.num_samples <= held, (self.num_samples, held)

    def _cached(self, build, cache_dir) -> dict[str, np.ndarray]:
        self.cache_paths: dict[str, Path] = {}
        if cache_dir is None:
            return build()
        key = hashlib.sha256(json.dumps(self.description, sort_keys=True).encode()).hexdigest()
        folder = Path(cache_dir)
        self.cache_paths = {name: folder / f"gpt-{key}-{name}.npy" for name in INDEX_NAMES}
        distributed = dist.is_available() and dist.is_initialized()
        if (not distributed or dist.get_rank() == 0) and not all(p.exists() for p in self.cache_paths.values()):
            folder.mkdir(parents=True, exist_ok=True)
            for name, array in build().items():
                _save_atomically(self.cache_paths[name], lambda f, a=array: np.save(f, a))
            text = json.dumps(self.description, indent=2, sort_keys=True).encode()
            _save_atomically(folder / f"gpt-{key}-description.json", lambda f: f.write(text))
        if distributed:
            dist.barrier()
        return {name: np.load(path, mmap_mode="r") for name, path in self.cache_paths.items()}

    def __len__(self) -> int:
        return self.num_samples

    def sample_tokens(self, i: int) -> np.ndarray:
        """The seq_len + 1 tokens (int64) of served sample i."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} is out of range for {self.num_samples} samples")
        s = int(self.shuffle_index[i])
        (first, start), (last, end) = self.sample_index[s].tolist(), self.sample_index[s + 1].tolist()
        doc = self.doc_index
        if first == last:
            return np.asarray(self.indexed.get(int(doc[first]), offset=start, length=end - start + 1), dtype=np.int64)
        parts = [self.indexed.get(int(doc[first]), offset=start)]
        parts += [self.indexed.get(int(doc[k])) for k in range(first + 1, last)]
        parts.append(self.indexed.get(int(doc[last]), offset=0, length=end + 1))
        return np.concatenate(parts).astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        text = torch.from_numpy(self.sample_tokens(i))
        tokens, labels = text[:-1], text[1:]
        loss_mask = torch.ones(self.seq_len, dtype=torch.float32)
        if self.eod_mask_id is not None:
            loss_mask[labels == self.eod_mask_id] = 0.0
        return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}


def blend_index(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) of a deterministic blend of `size` samples whose
    per-dataset counts follow the weights at every prefix (C++, Megatron's greedy rule)."""
    return _C.gpt_blend_index(np.asarray(weights, dtype=np.float64), size)


def blend_sample_counts(weights: Sequence[float], size: int) -> list[int]:
    """How many samples a blend of `size` takes from each dataset: the num_samples to build them with."""
    dataset_index, _ = blend_index(weights, size)
    return np.bincount(dataset_index, minlength=len(weights)).tolist()


class BlendedDataset(torch.utils.data.Dataset):
    """`size` samples drawn from `datasets` in proportion to `weights`, in a fixed interleaving.

    The interleaving is deterministic and needs no seed; each dataset's own order comes from its
    seed. Each dataset must hold the samples the blend takes from it (blend_sample_counts)."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], weights: Sequence[float], size: int):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = list(datasets)
        self.dataset_index, self.dataset_sample_index = blend_index(weights, size)
        counts = np.bincount(self.dataset_index, minlength=len(datasets))
        for d, (dataset, count) in enumerate(zip(self.datasets, counts)):
            if count > len(dataset):
                raise ValueError(
                    f"dataset {d} has {len(dataset)} samples but the blend takes {count} from it; "
                    f"build it with num_samples >= {count} (see blend_sample_counts)"
                )

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} is out of range for {len(self)} samples")
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]
