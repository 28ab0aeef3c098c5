"""From raw text to training batches: tokenizers, Megatron-compatible indexed datasets, GPT and SFT samples."""

from gptcore.data.documents import document_boundaries, document_positions, segment_boundaries, segment_positions
from gptcore.data.gpt_dataset import (
    BlendedDataset,
    GPTDataset,
    blend_index,
    blend_sample_counts,
    parse_blend,
    parse_split,
)
from gptcore.data.indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype
from gptcore.data.paddle import convert_paddle_data, paddle_as_megatron, paddle_prefix, read_paddle_data
from gptcore.data.preprocess import default_dataset, expand_inputs, preprocess, preprocess_sft
from gptcore.data.sft import SFTDataset, has_loss_mask, loss_mask_prefix, pack_examples
from gptcore.data.stdlib_corpus import default_corpus, default_corpus_jsonl
from gptcore.data.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    gpt2_bpe_tokenizer,
    hf_tokenizer,
    iter_documents,
    load_tokenizer,
    tokenizer_files,
    train_sentencepiece,
)

__all__ = [
    "BlendedDataset",
    "GPTDataset",
    "HFTokenizer",
    "IndexedDataset",
    "IndexedDatasetBuilder",
    "SFTDataset",
    "SentencePieceTokenizer",
    "Tokenizer",
    "best_dtype",
    "blend_index",
    "blend_sample_counts",
    "convert_paddle_data",
    "default_corpus",
    "default_corpus_jsonl",
    "default_dataset",
    "document_boundaries",
    "document_positions",
    "expand_inputs",
    "gpt2_bpe_tokenizer",
    "has_loss_mask",
    "hf_tokenizer",
    "iter_documents",
    "load_tokenizer",
    "loss_mask_prefix",
    "pack_examples",
    "paddle_as_megatron",
    "paddle_prefix",
    "parse_blend",
    "parse_split",
    "preprocess",
    "preprocess_sft",
    "segment_boundaries",
    "segment_positions",
    "read_paddle_data",
    "tokenizer_files",
    "train_sentencepiece",
]
