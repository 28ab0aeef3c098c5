"""A training run's train and validation datasets from data_path: Megatron indexed datasets (a blend
of several, each split by documents), GPT samples of seq_len + 1 tokens, or SFT examples with their
loss mask when the prefix has one. Sample i is a pure function of the seed, which makes resume exact."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gptcore.data import (
    BlendedDataset,
    GPTDataset,
    IndexedDataset,
    SFTDataset,
    blend_sample_counts,
    has_loss_mask,
    loss_mask_prefix,
    paddle_as_megatron,
    paddle_prefix,
    parse_blend,
    parse_split,
)
from gptcore.data.stdlib_corpus import cache_root
from gptcore.training.config import ConfigError, TrainConfig


def _open_indexed(prefix: str, vocab_size: int) -> IndexedDataset:
    if paddle_prefix(prefix) is not None:  # PaddleNLP's _ids.npy + _idx.npz: converted once into the cache
        try:
            prefix = paddle_as_megatron(paddle_prefix(prefix), cache_root() / "paddle", vocab_size)
        except (ValueError, OSError) as e:
            raise ConfigError(f"data_path: {e}") from None
    if Path(prefix).is_dir():  # PaddleNLP's --input_dir is a folder; gptcore names each dataset's prefix
        found = sorted({str(p)[: -len(s)] for s in (".idx", "_idx.npz") for p in Path(prefix).glob(f"*{s}")})
        blend = found[0] if len(found) == 1 else " ".join(f"1 {p}" for p in found) or "PREFIX"
        raise ConfigError(f"data_path: {prefix} is a folder; name the dataset prefix in it: data_path='{blend}'")
    for suffix in (".idx", ".bin"):
        if not Path(prefix + suffix).is_file():
            raise ConfigError(
                f"data_path: {prefix}{suffix} not found; give the prefix that `gptcore preprocess --output-prefix`"
                " wrote (without .bin/.idx)"
            )
    indexed = IndexedDataset(prefix)
    try:
        indexed.check_vocab(vocab_size)
    except RuntimeError as e:
        raise ConfigError(f"data_path {prefix}: {e}; was it tokenized with this tokenizer?") from None
    return indexed


def build_datasets(cfg: TrainConfig, data_path: str, tokenizer, vocab_size: int, log):
    """(train, valid or None) for a run of cfg; log hears what was left out."""
    try:
        weights, prefixes = parse_blend(data_path)
    except ValueError as e:
        raise ConfigError(f"data_path: {e}") from None
    indexed = [_open_indexed(prefix, vocab_size) for prefix in prefixes]
    cache = cfg.data_cache or str(cache_root() / "indices")
    eod = tokenizer.eod_id if cfg.eod_mask_loss else None
    num_train = cfg.train_steps * cfg.global_batch_size
    num_valid = cfg.eval_steps * cfg.micro_batch_size if cfg.eval_interval and cfg.eval_steps else 0

    try:
        splits = [parse_split(cfg.split, data.num_documents) for data in indexed]
    except ValueError as e:
        raise ConfigError(str(e)) from None

    def split_dataset(which: int, size: int, seed: int):
        counts = blend_sample_counts(weights, size)
        parts = []
        for prefix, data, documents, count in zip(prefixes, indexed, splits, counts):
            try:
                if has_loss_mask(prefix):  # finetuning examples: the loss on their target tokens only
                    parts.append(_sft_dataset(cfg, tokenizer, prefix, data, documents[which], max(count, 1), seed, log))
                else:
                    parts.append(GPTDataset(data, documents[which], max(count, 1), cfg.seq_len, seed, cache, eod))
            except ValueError as e:
                name = ("train", "validation")[which]
                raise ConfigError(f"{name} split of {prefix} (split {cfg.split!r}): {e}") from None
        return parts[0] if len(parts) == 1 else BlendedDataset(parts, weights, size)

    train = split_dataset(0, num_train, cfg.seed)
    if num_valid and not any(len(documents[1]) for documents in splits):
        log(f"split {cfg.split!r} leaves no validation documents: no eval")
        num_valid = 0
    valid = split_dataset(1, num_valid, cfg.seed + 1) if num_valid else None
    return train, valid


def steps_for_epochs(cfg: TrainConfig, data_path: str, tokenizer, vocab_size: int) -> tuple[int, int]:
    """(train_steps, samples an epoch) for train_epochs passes over the train split: an epoch of a GPT
    prefix is its split's tokens cut into samples of seq_len + 1 overlapping by one, of an SFT prefix
    its examples one epoch places in sequences (packed or one each); a blend's epoch is its parts'
    epochs together. The steps round up, so the last epoch is completed."""
    try:
        _, prefixes = parse_blend(data_path)
    except ValueError as e:
        raise ConfigError(f"data_path: {e}") from None
    samples = 0
    for prefix in prefixes:
        data = _open_indexed(prefix, vocab_size)
        try:
            documents = parse_split(cfg.split, data.num_documents)[0]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not len(documents):
            raise ConfigError(f"train_epochs: split {cfg.split!r} leaves {prefix} no training documents")
        if has_loss_mask(prefix):
            pad = tokenizer.eod_id if tokenizer.eod_id is not None else 0
            mask = IndexedDataset(loss_mask_prefix(prefix))
            samples += len(SFTDataset(data, mask, documents, None, cfg.seq_len, cfg.seed, pad, pack=cfg.sft_packing))
        else:
            starts = np.asarray(data.document_indices)[[documents.start, documents.stop]]
            tokens = int(np.asarray(data.sequence_lengths)[starts[0] : starts[1]].sum(dtype=np.int64))
            samples += max(tokens - 1, 0) // cfg.seq_len
    if samples == 0:
        raise ConfigError(f"train_epochs: the train split of {data_path} holds no sample of seq_len + 1 tokens")
    return max(1, math.ceil(cfg.train_epochs * samples / cfg.global_batch_size)), samples


def _sft_dataset(cfg, tokenizer, prefix: str, data: IndexedDataset, documents, count: int, seed: int, log):
    mask = IndexedDataset(loss_mask_prefix(prefix))
    pad = tokenizer.eod_id if tokenizer.eod_id is not None else 0
    # Packed examples come with their segment ids: each is then kept apart (training.batches).
    dataset = SFTDataset(
        data, mask, documents, count, cfg.seq_len, seed, pad, pack=cfg.sft_packing, return_segments=cfg.sft_packing
    )
    if dataset.num_truncated:
        log(
            f"{prefix}: {dataset.num_truncated} examples are longer than seq_len + 1 = {cfg.seq_len + 1}"
            " tokens and are cut to their first seq_len + 1 (their later targets are not trained on)"
        )
    return dataset
