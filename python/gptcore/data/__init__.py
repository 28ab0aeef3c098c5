"""From raw text to training batches: tokenizers, Megatron-compatible indexed datasets, GPT samples."""

from gptcore.data.gpt_dataset import (
    BlendedDataset,
    GPTDataset,
    blend_index,
    blend_sample_counts,
    parse_blend,
    parse_split,
)

__all__ = ["BlendedDataset", "GPTDataset", "blend_index", "blend_sample_counts", "parse_blend", "parse_split"]
