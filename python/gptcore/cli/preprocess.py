"""`gptcore preprocess`: text/jsonl tokenized into Megatron .bin/.idx datasets (or SFT data with a loss mask)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptcore.cli.arguments import UsageError
from gptcore.data import default_dataset, preprocess, preprocess_sft


def add_parser(commands) -> None:
    pre = commands.add_parser(
        "preprocess",
        help="tokenize text/jsonl into Megatron .bin/.idx datasets",
        description="Tokenize files, directories and globs into PREFIX_<key>_document.bin/.idx, one dataset"
        " per json key (uint16 tokens below a vocabulary of 65500, else int32). .jsonl/.json files hold one"
        " JSON object a line; other files are plain text, a document a line or a file (--text-mode)."
        " Without --input and --tokenizer, tokenizes the built-in default corpus (the Python standard"
        " library's sources, with a tokenizer trained on them) into the cache and prints where it went.",
    )
    pre.add_argument("--input", nargs="+", metavar="PATH", help="files, directories or glob patterns")
    pre.add_argument("--output-prefix", help="writes PREFIX_<key>_document.bin/.idx")
    pre.add_argument(
        "--tokenizer", nargs="+", metavar="PATH", help="a .model, tokenizer.json, a directory, or vocab.json merges.txt"
    )
    megatron = pre.add_argument_group("Megatron-LM's spellings (tools/preprocess_data.py), instead of --tokenizer")
    megatron.add_argument("--tokenizer-type", help=f"one of {', '.join(TOKENIZER_TYPES)}")
    megatron.add_argument("--vocab-file", metavar="PATH", help="GPT2BPETokenizer: the vocab .json (gpt2-vocab.json)")
    megatron.add_argument("--merge-file", metavar="PATH", help="GPT2BPETokenizer: the merges .txt (gpt2-merges.txt)")
    megatron.add_argument(
        "--tokenizer-model", metavar="PATH", help="SentencePiece: the .model; HuggingFace: a folder or tokenizer.json"
    )
    megatron.add_argument(
        "--log-interval", type=int, default=0, metavar="N", help="print a progress line every N documents"
    )
    megatron.add_argument(
        "--keep-newlines", action="store_true", help="accepted: documents are never split, newlines always kept"
    )
    megatron.add_argument(
        "--keep-sequential-samples", action="store_true", help="accepted: documents always keep the input order"
    )
    megatron.add_argument("--split-sentences", action="store_true", help=argparse.SUPPRESS)
    pre.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY", help="jsonl keys, a dataset each")
    pre.add_argument(
        "--text-mode", choices=("line", "file"), default="line", help="plain text: a document per line or per file"
    )
    pre.add_argument(
        "--append-eod",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="end every document with the eod token (default: off, on with --sft: the model learns to stop)",
    )
    pre.add_argument(
        "--sft",
        action="store_true",
        help="finetuning data: jsonl records with a src and, for input-output training, a tgt; writes"
        " PREFIX.bin/.idx (one example a document) and PREFIX_loss_mask.bin/.idx (1 on the target tokens:"
        " the tgt tokens and the eod, or every token of a record without tgt), for `gptcore finetune`",
    )
    pre.add_argument("--src-key", default="src", help="--sft: the input field (default src)")
    pre.add_argument("--tgt-key", default="tgt", help="--sft: the target field (default tgt; optional per record)")
    pre.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    pre.add_argument("--partitions", type=int, default=1, help="temporary datasets written in turn, then merged")
    pre.add_argument(
        "--errors",
        choices=("strict", "replace", "skip"),
        default="strict",
        help="lines that are not UTF-8 or not a JSON object with the keys: stop (naming file:line),"
        " replace bad bytes with U+FFFD, or skip them; replace and skip report counts",
    )
    pre.add_argument("--vocab-size", type=int, default=8192, help="default corpus only: the tokenizer's vocabulary")
    pre.set_defaults(run=run)


# Megatron's --tokenizer-type values and the files each reads.
TOKENIZER_TYPES = (
    "GPT2BPETokenizer",
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "Llama2Tokenizer",
    "HuggingFaceTokenizer",
)


def megatron_tokenizer(args) -> list[str] | None:
    """The --tokenizer equivalent of Megatron's --tokenizer-type/--vocab-file/--merge-file/--tokenizer-model
    (None when none of them is given)."""
    kind, vocab, merges, model = args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model
    if kind is None and vocab is None and merges is None and model is None:
        return None
    if args.tokenizer is not None:
        raise UsageError("give --tokenizer or Megatron's --tokenizer-type/--vocab-file/--tokenizer-model, not both")
    if kind is not None and kind not in TOKENIZER_TYPES:
        raise UsageError(f"--tokenizer-type {kind} is not supported; use one of {', '.join(TOKENIZER_TYPES)}")
    if kind == "GPT2BPETokenizer" or kind is None and model is None:
        if vocab is None:
            raise UsageError("GPT2BPETokenizer needs --vocab-file (gpt2-vocab.json) and --merge-file (gpt2-merges.txt)")
        if model is not None:
            raise UsageError("GPT2BPETokenizer reads --vocab-file and --merge-file; drop --tokenizer-model")
        return [vocab] if merges is None else [vocab, merges]
    if model is None:
        raise UsageError(f"{kind} needs --tokenizer-model (a SentencePiece .model, or an HF folder/tokenizer.json)")
    if vocab is not None or merges is not None:
        raise UsageError(f"{kind} reads --tokenizer-model; drop --vocab-file/--merge-file")
    if kind is not None and kind != "HuggingFaceTokenizer" and not model.endswith(".model"):
        raise UsageError(f"{kind}: --tokenizer-model {model} is not a SentencePiece .model file")
    if kind == "HuggingFaceTokenizer" and not Path(model).exists():
        raise UsageError(
            f"--tokenizer-model {model}: no such folder or tokenizer.json (gptcore reads local files only;"
            " download the model's tokenizer first)"
        )
    return [model]


def run(args) -> None:
    progress = sys.stderr.isatty()
    if args.split_sentences:
        raise UsageError(
            "--split-sentences is not supported: gptcore tokenizes each document whole"
            " (PREFIX_<key>_document); drop the flag"
        )
    args.tokenizer = megatron_tokenizer(args) or args.tokenizer
    if args.input is None and args.tokenizer is None:
        dataset, model = default_dataset(args.vocab_size, workers=args.workers, progress=progress)
        print(f"default corpus: {dataset}.bin/.idx (tokenizer {model})")
        return
    if args.input is None or args.tokenizer is None or args.output_prefix is None:
        raise UsageError(
            "preprocess needs --input, --tokenizer and --output-prefix (or none of them: the default corpus)"
        )
    tokenizer = args.tokenizer[0] if len(args.tokenizer) == 1 else args.tokenizer
    if args.sft:
        if args.json_keys != ["text"] or args.text_mode != "line":
            raise UsageError("--sft reads --src-key and --tgt-key from jsonl; --json-keys and --text-mode do not apply")
        stats = preprocess_sft(
            args.input,
            args.output_prefix,
            tokenizer,
            src_key=args.src_key,
            tgt_key=args.tgt_key,
            append_eod=args.append_eod is not False,
            workers=args.workers,
            partitions=args.partitions,
            errors=args.errors,
            progress=progress,
        )
        _refuse_empty(args.output_prefix, stats, stats["examples"])
        print(
            f"{stats['examples']} examples, {stats['tokens']} tokens ({stats['target_tokens']} targets) in"
            f" {stats['seconds']:.1f} s; replaced {stats['replaced']}, skipped {stats['skipped']}"
        )
    else:
        stats = preprocess(
            args.input,
            args.output_prefix,
            tokenizer,
            json_keys=args.json_keys,
            text_mode=args.text_mode,
            append_eod=bool(args.append_eod),
            workers=args.workers,
            partitions=args.partitions,
            errors=args.errors,
            progress=progress,
            log_interval=args.log_interval,
        )
        _refuse_empty(args.output_prefix, stats, stats["documents"])
        mb = stats["bytes"] / 1e6
        print(
            f"{stats['documents']} documents, {stats['tokens']} tokens from {mb:.1f} MB in {stats['seconds']:.1f} s"
            f" ({mb / max(stats['seconds'], 1e-9):.1f} MB/s); replaced {stats['replaced']}, skipped {stats['skipped']}"
        )
    if stats.get("examples", stats.get("documents")) == 0:  # a dataset of nothing would only fail later
        for prefix in stats["outputs"].values():
            for suffix in (".bin", ".idx"):
                Path(f"{prefix}{suffix}").unlink(missing_ok=True)
        raise ValueError(
            f"{args.output_prefix}: nothing to write: all {stats['skipped']} records were skipped (none kept)"
        )
    for prefix in stats["outputs"].values():
        print(f"  {prefix}.bin/.idx")


def _refuse_empty(output_prefix, stats: dict, kept: int) -> None:
    """A dataset of nothing (every record skipped) would only fail later: removed, and an error now."""
    if kept:
        return
    for prefix in stats["outputs"].values():
        for suffix in (".bin", ".idx"):
            Path(f"{prefix}{suffix}").unlink(missing_ok=True)
    raise ValueError(f"{output_prefix}: nothing written: all {stats['skipped']} records were skipped")
