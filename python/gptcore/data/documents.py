"""Packed documents: where each document of a packed row starts, and each token's position in it.

A row of T tokens may hold several documents (pretraining samples cut across documents, SFT's
packed examples). The model keeps them apart with cu_seqlens int32 [B, S + 1], each row
0 = c_0 <= c_1 <= ... <= c_S = T (document s is tokens [c_s, c_{s+1}); a row of fewer documents
repeats T; gptcore.ops.reference.check_cu_seqlens), and positions restarting at 0 in each document.

From tokens, as Megatron's get_ltor_masks_and_position_ids does with --reset-attention-mask and
--reset-position-ids: a document ends after its end-of-document token, so an eod belongs to the
document it closes and the next token starts a new one. From segment ids (SFTDataset's
"segment_ids"): a document starts wherever the id changes.
"""

from __future__ import annotations

import torch


def segment_boundaries(segment_ids: torch.Tensor) -> torch.Tensor:
    """segment_ids [B, T] (equal along a document, different from the previous document's) ->
    cu_seqlens int32 [B, S + 1], S the most documents of any row."""
    B, T = segment_ids.shape
    starts = _starts(segment_ids)
    edges = torch.cat([starts, torch.ones(B, 1, dtype=torch.bool, device=starts.device)], dim=1)
    columns = int(edges.sum(dim=1).max())
    index = torch.arange(T + 1, device=starts.device).expand(B, T + 1)
    # Non-boundaries become T, so sorting puts each row's boundaries first and its repeats of T after.
    return torch.where(edges, index, T).sort(dim=1).values[:, :columns].to(torch.int32)


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """segment_ids [B, T] -> int64 [B, T]: each token's position in its document (0 at its start)."""
    T = segment_ids.shape[1]
    index = torch.arange(T, device=segment_ids.device).expand_as(segment_ids)
    first = torch.where(_starts(segment_ids), index, 0).cummax(dim=1).values
    return index - first


def document_ids(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """tokens [B, T] -> int64 [B, T]: the number of eod tokens before each token (its document)."""
    eod = (tokens == eod_id).long()
    return eod.cumsum(dim=1) - eod


def document_boundaries(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """tokens [B, T] -> cu_seqlens int32 [B, S + 1]: a document ends after each eod_id token
    (Megatron's reset_attention_mask)."""
    return segment_boundaries(document_ids(tokens, eod_id))


def document_positions(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """tokens [B, T] -> int64 [B, T] positions restarting at 0 after each eod_id token (Megatron's
    reset_position_ids)."""
    return segment_positions(document_ids(tokens, eod_id))


def _starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: where a document starts (position 0 and wherever the id changes)."""
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return starts
