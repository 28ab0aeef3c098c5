"""Supervised finetuning samples: examples with a loss mask, packed into sequences or one per sequence.

An SFT dataset is a token dataset at ``prefix`` (one example a document, written by
``preprocess_sft``) plus a companion ``prefix_loss_mask`` of uint8 flags with the same lengths: 1
where the token is a target (the loss of predicting it counts), 0 where it is context. With a
``tgt``, the targets are the tgt tokens and the eod; with ``src`` only, every token.

SFTDataset serves items shaped like GPTDataset's: {"tokens", "labels": int64 [seq_len],
"loss_mask": float32 [seq_len]}, labels being tokens shifted by one and loss_mask[t] the target
flag of labels[t]. Each epoch reads the examples in a seeded order of its own and lays them out:

- ``pack=True``: whole examples, in that order, go into sequences of seq_len + 1 tokens (next fit:
  an example that does not fit the open sequence starts the next one), never split; the rest of a
  sequence is pad_id with mask 0, and the first token of every example has mask 0, so nothing is
  learnt from predicting one example from the one before it. ``return_segments=True`` adds
  "segment_ids" (1, 2, ... per example, 0 on padding) and "position_ids" (positions within each
  example): the trainer turns them into the model's document boundaries and positions
  (gptcore.training.batches), so each packed example attends only to itself and trains as it
  would alone.
- ``pack=False``: one example a sequence, padded.

An example longer than seq_len + 1 tokens keeps its first seq_len + 1 (``num_truncated`` counts them).
The layout of every epoch is computed once, with numpy, when the dataset is built; sample i depends
only on the data, seq_len, pack and (seed, i), so resuming needs only the count of samples consumed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gptcore.data.gpt_dataset import Indexed

LOSS_MASK_SUFFIX = "_loss_mask"


def loss_mask_prefix(prefix: str | os.PathLike) -> str:
    """Where the loss mask of the SFT dataset at ``prefix`` lives: ``prefix_loss_mask.bin/.idx``."""
    return os.fspath(prefix) + LOSS_MASK_SUFFIX


def has_loss_mask(prefix: str | os.PathLike) -> bool:
    """Whether the dataset at ``prefix`` has a loss-mask companion, i.e. is SFT data."""
    mask = loss_mask_prefix(prefix)
    return Path(mask + ".idx").is_file() and Path(mask + ".bin").is_file()


def pack_examples(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Next-fit packing of examples of ``lengths`` (each <= capacity), in order: int64 [sequences + 1],
    the index of the first example of each sequence, then len(lengths)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    # following[j]: the first example that no longer fits a sequence whose first example is j
    following = np.searchsorted(ends, ends - lengths + capacity, side="right").tolist()
    bounds, j = [0], 0
    while j < len(lengths):  # one step per sequence, not per example
        j = following[j]
        bounds.append(j)
    return np.asarray(bounds, dtype=np.int64)


class SFTDataset(torch.utils.data.Dataset):
    """Samples of the examples ``documents`` (document ids; repeats allowed) of ``indexed``, with the
    target flags of ``loss_mask_indexed`` (same sequence and document lengths).

    num_samples: how many samples to serve, cycling through as many epochs as that takes (None: one
    epoch). pad_id: the token filling the rest of a sequence (masked out of the loss; any id in the
    vocabulary). See the module docstring for pack and return_segments.
    """

    def __init__(
        self,
        indexed: Indexed,
        loss_mask_indexed: Indexed,
        documents: np.ndarray | range | Sequence[int],
        num_samples: int | None,
        seq_len: int,
        seed: int,
        pad_id: int,
        pack: bool = True,
        return_segments: bool = False,
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}")
        if pad_id < 0:
            raise ValueError(f"pad_id must be a token id >= 0, got {pad_id}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        document_indices = np.asarray(indexed.document_indices, dtype=np.int64)
        lengths = np.asarray(indexed.sequence_lengths, dtype=np.int64)
        if not (
            np.array_equal(document_indices, np.asarray(loss_mask_indexed.document_indices))
            and np.array_equal(lengths, np.asarray(loss_mask_indexed.sequence_lengths))
        ):
            raise ValueError("the loss mask's documents and sequences do not match the tokens': not one dataset's pair")
        num_documents = len(document_indices) - 1
        documents = np.asarray(documents, dtype=np.int64)
        if documents.ndim != 1 or len(documents) == 0:
            raise ValueError("documents must be a non-empty 1-D array of document ids: this split has no examples")
        if documents.min() < 0 or documents.max() >= num_documents:
            raise ValueError(f"documents {documents.min()}..{documents.max()} outside the {num_documents} documents")
        ends = np.concatenate([[0], np.cumsum(lengths)])
        example_lengths = ends[document_indices[documents + 1]] - ends[document_indices[documents]]
        if (example_lengths == 0).any():
            empty = int(documents[np.argmax(example_lengths == 0)])
            raise ValueError(f"document {empty} has no tokens: an SFT example needs at least one")

        self.indexed, self.loss_mask_indexed = indexed, loss_mask_indexed
        self.seq_len, self.seed, self.pad_id = seq_len, seed, pad_id
        self.pack, self.return_segments = pack, return_segments
        self.documents, self._document_indices = documents, document_indices
        capacity = seq_len + 1
        self.num_truncated = int((example_lengths > capacity).sum())  # per epoch
        self._lengths = np.minimum(example_lengths, capacity)

        # Per epoch: the order (positions into documents) and where each sample starts in it.
        self._orders: list[np.ndarray] = []
        self._bounds: list[np.ndarray] = []
        self._first_sample = [0]  # the first sample of each epoch, then the end of the last one
        while self._first_sample[-1] < (1 if num_samples is None else num_samples):  # every epoch serves >= 1
            order = np.random.RandomState([seed, len(self._orders)]).permutation(len(documents))
            bounds = pack_examples(self._lengths[order], capacity) if pack else np.arange(len(order) + 1)
            self._orders.append(order)
            self._bounds.append(bounds)
            self._first_sample.append(self._first_sample[-1] + len(bounds) - 1)
        self.epochs = len(self._orders)
        self.num_samples = self._first_sample[-1] if num_samples is None else num_samples
        # The share of the first epoch's sequence tokens that are example tokens, not padding.
        self.fill = float(self._lengths.sum() / ((len(self._bounds[0]) - 1) * capacity))

    def __len__(self) -> int:
        return self.num_samples

    def sample_examples(self, i: int) -> np.ndarray:
        """The document ids of the examples in served sample i, in layout order."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} is out of range for {self.num_samples} samples")
        epoch = int(np.searchsorted(self._first_sample, i, side="right")) - 1
        k = i - self._first_sample[epoch]
        bounds = self._bounds[epoch]
        return self.documents[self._orders[epoch][bounds[k] : bounds[k + 1]]]

    def _head(self, data: Indexed, document: int, n: int) -> np.ndarray:
        """The first n tokens of a document (its sequences read as one)."""
        first, last = int(self._document_indices[document]), int(self._document_indices[document + 1])
        if last - first == 1:
            return data.get(first)[:n]  # a view of the mapping: slicing copies nothing
        return np.concatenate([data.get(s) for s in range(first, last)])[:n]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        capacity = self.seq_len + 1
        text = np.full(capacity, self.pad_id, dtype=np.int64)
        target = np.zeros(capacity, dtype=np.float32)
        segment = np.zeros(capacity, dtype=np.int64)
        position = np.zeros(capacity, dtype=np.int64)
        start = 0
        for s, document in enumerate(self.sample_examples(i).tolist(), 1):
            tokens = self._head(self.indexed, document, capacity)
            n = len(tokens)
            text[start : start + n] = tokens
            target[start : start + n] = self._head(self.loss_mask_indexed, document, n) != 0
            target[start] = 0.0  # nothing predicts an example's first token from what came before it
            segment[start : start + n] = s
            position[start : start + n] = np.arange(n)
            start += n
        text_t = torch.from_numpy(text)
        item = {"tokens": text_t[:-1], "labels": text_t[1:], "loss_mask": torch.from_numpy(target[1:])}
        if self.return_segments:
            item["segment_ids"] = torch.from_numpy(segment[:-1])
            item["position_ids"] = torch.from_numpy(position[:-1])
        return item
