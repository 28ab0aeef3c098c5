"""From raw text to training batches: tokenizers, Megatron-compatible indexed datasets, GPT samples."""

from gptcore.data.default_corpus import default_corpus, default_corpus_jsonl
from gptcore.data.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    gpt2_bpe_tokenizer,
    hf_tokenizer,
    iter_documents,
    load_tokenizer,
    train_sentencepiece,
)

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "default_corpus",
    "default_corpus_jsonl",
    "gpt2_bpe_tokenizer",
    "hf_tokenizer",
    "iter_documents",
    "load_tokenizer",
    "train_sentencepiece",
]
