"""From raw text to training batches: tokenizers, Megatron-compatible indexed datasets, GPT samples."""

from gptcore.data.gpt_dataset import (
    BlendedDataset,
    GPTDataset,
    blend_index,
    blend_sample_counts,
    parse_blend,
    parse_split,
)
from gptcore.data.indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype

__all__ = [
    "BlendedDataset",
    "GPTDataset",
    "IndexedDataset",
    "IndexedDatasetBuilder",
    "best_dtype",
    "blend_index",
    "blend_sample_counts",
    "parse_blend",
    "parse_split",
]
