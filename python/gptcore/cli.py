"""The `gptcore` console script. Subcommands arrive with their features: `info`, `tokenizer train`, `preprocess`,
`convert hf-import|hf-export`, `train`."""

from __future__ import annotations

import argparse
import sys


def _version(code: int, digits: tuple[int, ...]) -> str:
    """13000 -> '13.0' for (1000, 10); 131000 -> '13.10.0' for (10000, 100, 1)."""
    parts = []
    for d in digits:
        parts.append(str(code // d))
        code %= d
    return ".".join(parts)


def info_text() -> str:
    from gptcore import _C

    b = _C.build_info()
    lines = [f"gptcore {b['version']}"]
    lines.append(f"  cpu kernels: float32, OpenMP {'on' if b['openmp'] else 'off'}")
    if b["cuda"]:
        lines.append(f"  cuda: on (runtime {_version(b['cuda_runtime_version'], (1000, 10))}, archs {b['cuda_archs']})")
        lines.append(
            f"  cublas: {_version(b['cublas_version'], (10000, 100, 1)) if b['cublas_version'] else 'not linked'}"
        )
        lines.append(f"  nccl: {_version(b['nccl_version'], (10000, 100, 1)) if b['nccl_version'] else 'not linked'}")
    else:
        lines.append("  cuda: off (built without nvcc)")
    count = _C.cuda_device_count()
    lines.append(f"  cuda devices: {count}")
    for i in range(count):
        p = _C.cuda_device_properties(i)
        major, minor = p["capability"]
        gib = p["total_memory"] / 2**30
        lines.append(f"    [{i}] {p['name']}, sm_{major}{minor}, {p['multiprocessors']} SMs, {gib:.1f} GiB")
    try:
        import torch

        lines.append(f"  torch: {torch.__version__} (cuda {torch.version.cuda or 'none'})")
    except ImportError:
        lines.append("  torch: not installed")
    return "\n".join(lines)


def _add_tokenizer_parser(sub) -> None:
    tok = sub.add_parser("tokenizer", help="train tokenizers").add_subparsers(dest="tokenizer_command", required=True)
    train = tok.add_parser(
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


def _tokenizer_train(args) -> None:
    from gptcore.data import default_corpus_jsonl, load_tokenizer, train_sentencepiece

    inputs = args.input if args.input else [default_corpus_jsonl()]
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
    tok = load_tokenizer(model)
    print(f"{model}: {args.model_type}, vocab size {tok.vocab_size}, eod id {tok.eod_id}, pad id {tok.pad_id}")


def _add_preprocess_parser(sub) -> None:
    pre = sub.add_parser(
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
    pre.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY", help="jsonl keys, a dataset each")
    pre.add_argument(
        "--text-mode", choices=("line", "file"), default="line", help="plain text: a document per line or per file"
    )
    pre.add_argument("--append-eod", action="store_true", help="end every document with the eod token")
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


def _preprocess(parser, args) -> None:
    from gptcore.data import default_dataset, preprocess

    progress = sys.stderr.isatty()
    if args.input is None and args.tokenizer is None:
        dataset, model = default_dataset(args.vocab_size, workers=args.workers, progress=progress)
        print(f"default corpus: {dataset}.bin/.idx (tokenizer {model})")
        return
    if args.input is None or args.tokenizer is None or args.output_prefix is None:
        parser.error("preprocess needs --input, --tokenizer and --output-prefix (or none of them: the default corpus)")
    tokenizer = args.tokenizer[0] if len(args.tokenizer) == 1 else args.tokenizer
    stats = preprocess(
        args.input,
        args.output_prefix,
        tokenizer,
        json_keys=args.json_keys,
        text_mode=args.text_mode,
        append_eod=args.append_eod,
        workers=args.workers,
        partitions=args.partitions,
        errors=args.errors,
        progress=progress,
    )
    mb = stats["bytes"] / 1e6
    print(
        f"{stats['documents']} documents, {stats['tokens']} tokens from {mb:.1f} MB in {stats['seconds']:.1f} s"
        f" ({mb / max(stats['seconds'], 1e-9):.1f} MB/s); replaced {stats['replaced']}, skipped {stats['skipped']}"
    )
    for prefix in stats["outputs"].values():
        print(f"  {prefix}.bin/.idx")


def _add_convert_parser(sub) -> None:
    conv = sub.add_parser("convert", help="convert models: Hugging Face GPT-2 import/export").add_subparsers(
        dest="convert_command", required=True
    )
    imp = conv.add_parser(
        "hf-import",
        help="a HF GPT-2 directory (config.json + model.safetensors) -> a gptcore model file",
        description="Read a Hugging Face GPT-2 directory and write a gptcore model file: one safetensors file"
        " with the GPTConfig as JSON in its metadata (gptcore.convert.load reads it).",
    )
    imp.add_argument("--hf-dir", required=True, help="directory with config.json and model.safetensors")
    imp.add_argument("--out", required=True, help="the gptcore model file to write")
    exp = conv.add_parser(
        "hf-export",
        help="a gptcore model file -> a HF GPT-2 directory (config.json + model.safetensors)",
        description="Write a gptcore model file as a directory GPT2LMHeadModel.from_pretrained loads.",
    )
    exp.add_argument("--checkpoint", required=True, help="a gptcore model file (from hf-import or convert.save)")
    exp.add_argument("--out", required=True, help="the directory to write")


def _convert(args) -> None:
    from gptcore import convert

    if args.convert_command == "hf-import":
        model = convert.from_hf(args.hf_dir, use_gptcore_ops=False)
        convert.save(model, args.out)
    else:
        model = convert.load(args.checkpoint, use_gptcore_ops=False)
        convert.to_hf(model, args.out)
    c = model.config
    print(f"{args.out}: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, vocab {c.vocab_size}")


def _add_train_parser(sub) -> None:
    train = sub.add_parser(
        "train",
        help="pretrain a GPT from a YAML config (default: a tiny model on the built-in corpus)",
        description="Pretrain a GPT. The config is a flat YAML file of TrainConfig keys (configs/*.yaml); each"
        " key=value after it overrides one key (values parsed as YAML: lr=3e-4 save=out/run1 data_path=null)."
        " Without data_path, trains on the built-in default corpus. Resumes from the newest checkpoint in"
        " `load` (or `save`) when there is one; SIGTERM finishes the step, saves and exits.",
    )
    train.add_argument("--config", default="tiny-cpu", help="a YAML file or a shipped config name (default: tiny-cpu)")
    train.add_argument("overrides", nargs="*", metavar="key=value")


def _train(args) -> int:
    from gptcore.data import load_tokenizer
    from gptcore.generate import sample
    from gptcore.training import Trainer, load_config

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    trainer.train()
    if trainer.stopped_by_signal:
        print(f"stopped by {trainer.stopped_by_signal} at step {trainer.step}")
        return 0
    if cfg.sample_tokens:
        tokenizer = load_tokenizer(trainer.tokenizer_path)
        prompt = tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else []
        ids = sample(trainer.model, prompt, cfg.sample_tokens, temperature=0.8, top_k=40, stop_id=tokenizer.eod_id)
        print(f"--- sample ({cfg.sample_tokens} tokens, temperature 0.8, top-k 40) ---")
        print(cfg.sample_prompt + tokenizer.decode(ids))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptcore", description="GPT-2 / GPT-3 training on a fused C++/CUDA core")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, build flags (CUDA, architectures, cuBLAS, NCCL) and visible devices")
    _add_tokenizer_parser(sub)
    _add_preprocess_parser(sub)
    _add_convert_parser(sub)
    _add_train_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info_text())
    elif args.command == "tokenizer" and args.tokenizer_command == "train":
        _tokenizer_train(args)
    elif args.command == "preprocess":
        _preprocess(parser, args)
    elif args.command == "convert":
        _convert(args)
    elif args.command == "train":
        from gptcore.training import ConfigError

        try:
            return _train(args)
        except (ConfigError, ValueError, FileNotFoundError) as e:
            print(f"gptcore train: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
