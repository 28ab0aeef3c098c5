"""From raw text to training batches: tokenizers, Megatron-compatible indexed datasets, GPT samples."""

from gptcore.data.indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype

__all__ = ["IndexedDataset", "IndexedDatasetBuilder", "best_dtype"]
