"""From raw text to training batches: tokenizers, Megatron-compatible indexed datasets, GPT samples."""
