"""`gptcore tokenizer train`: a SentencePiece tokenizer (BPE or unigram) from text/jsonl files."""

from __future__ import annotations

import re
import sys

from gptcore.data import default_corpus_jsonl, load_tokenizer, train_sentencepiece


def add_parser(commands) -> None:
    tasks = commands.add_parser("tokenizer", help="train tokenizers").add_subparsers(
        dest="tokenizer_command", required=True
    )
    train = tasks.add_parser(
        "train",
        help="train a SentencePiece tokenizer (BPE or unigram) on text/jsonl files",
        description="Train a SentencePiece tokenizer. Plain text files hold one document a line; .jsonl files"
        " one JSON object a line. Without --input, trains on the built-in default corpus (the Python"
        " standard library's sources, assembled and cached on first use).",
    )
    train.add_argument("--input", nargs="+", metavar="FILE", help="text or jsonl files (default: the default corpus)")
    train.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    train.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY", help="jsonl keys holding text")
    train.add_argument(
        "--no-byte-fallback",
        dest="byte_fallback",
        action="store_false",
        help="unknown characters become <unk> instead of UTF-8 byte pieces",
    )
    train.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        help="share of characters the vocabulary must cover (0.9995 suits Chinese; rest via bytes)",
    )
    train.add_argument("--input-sentence-size", type=int, default=5_000_000, help="lines sampled for training")
    train.set_defaults(run=run_train)


def run_train(args) -> None:
    if args.vocab_size < 1:
        raise ValueError(f"--vocab-size must be >= 1, got {args.vocab_size}")
    inputs = args.input if args.input else [default_corpus_jsonl()]
    try:
        model = train_sentencepiece(
            inputs,
            args.model_prefix,
            args.vocab_size,
            args.model_type,
            byte_fallback=args.byte_fallback,
            json_keys=args.json_keys,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
            progress=sys.stderr.isatty(),
        )
    except ValueError as e:
        raise ValueError(_vocab_size_error(args, str(e)) or str(e)) from None
    tok = load_tokenizer(model)
    print(f"{model}: {args.model_type}, vocab size {tok.vocab_size}, eod id {tok.eod_id}, pad id {tok.pad_id}")


def _vocab_size_error(args, message: str) -> str | None:
    """SentencePiece's refusal of a vocabulary size, in this command's terms (its flags, not SentencePiece's)."""
    if small := re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message):
        pieces = "its characters, the special pieces" + (" and 256 byte pieces" if args.byte_fallback else "")
        fewer = "--no-byte-fallback or " if args.byte_fallback else ""
        return (
            f"--vocab-size {args.vocab_size} is too small: this text needs at least {small[2]} pieces ({pieces});"
            f" give --vocab-size >= {small[2]}, or {fewer}a lower --character-coverage (now {args.character_coverage})"
        )
    if large := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message):
        return (
            f"--vocab-size {args.vocab_size} is too large for this text: it yields at most {large[2]} pieces;"
            f" give --vocab-size <= {large[2]}, or more text"
        )
    return None
