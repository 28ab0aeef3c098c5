"""A micro batch from dataset items: token ids, labels (-100 where the loss mask is 0) and, for
packed documents, their boundaries (cu_seqlens) and positions within each document.

Packed documents are kept apart (each token attends only to its own document, positions restart at
0 in each) for SFT's packed examples always (their "segment_ids": a packed example then trains as it
would alone), and for pretraining samples as Megatron's --reset-attention-mask and
--reset-position-ids ask: a document ends after each end-of-document token (gptcore.data.documents).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptcore.data.documents import document_ids, segment_boundaries, segment_positions
from gptcore.model import IGNORE_INDEX


@dataclass(frozen=True)
class DocumentReset:
    """What of a pretraining row's documents to keep apart (TrainConfig's reset_attention_mask and
    reset_position_ids), and the end-of-document token that closes each of them."""

    attention_mask: bool = False
    position_ids: bool = False
    eod_id: int | None = None

    def segments(self, item: dict, attention: bool) -> torch.Tensor | None:
        """The item's document ids [T] for the attention mask (attention) or the positions; None:
        one document."""
        if "segment_ids" in item:  # SFT's packed examples
            return item["segment_ids"]
        if self.attention_mask if attention else self.position_ids:
            return document_ids(item["tokens"][None], self.eod_id)[0]
        return None


def make_batch(items: list[dict], reset: DocumentReset, device: torch.device) -> dict[str, torch.Tensor]:
    """{"tokens", "labels"} [B, T] on device, with "cu_seqlens" [B, S + 1] when a row holds several
    documents to keep apart and "position_ids" [B, T] when positions restart in any row."""
    tokens = torch.stack([item["tokens"] for item in items])
    loss_mask = torch.stack([item["loss_mask"] for item in items])
    labels = torch.stack([item["labels"] for item in items]).masked_fill(loss_mask == 0, IGNORE_INDEX)
    batch = {"tokens": tokens, "labels": labels}
    for key, attention in (("cu_seqlens", True), ("position_ids", False)):
        segments = [reset.segments(item, attention) for item in items]
        if all(s is None for s in segments):
            continue
        ids = torch.stack([torch.zeros_like(t) if s is None else s for s, t in zip(segments, tokens)])
        if attention:
            cu_seqlens = segment_boundaries(ids)
            if cu_seqlens.shape[1] > 2:  # some row holds two documents or more
                batch[key] = cu_seqlens
        else:
            batch[key] = segment_positions(ids)
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """The batch's packed-document inputs, as GPT.forward's keyword arguments (cu_seqlens,
    position_ids), where it has them."""
    return {k: batch[k] for k in ("cu_seqlens", "position_ids") if k in batch}
