"""The `gptcore` console script: `info`, `tokenizer train`, `preprocess`,
`convert hf-import|hf-export|reshard|merge-lora`, `train`, `finetune [sft]|cls`, `generate`, `eval [ppl]|cls`,
`serve`."""

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
    # The build's note says why CUDA is off, or what a CUDA build lacks (set when CMake configured it).
    if b["cuda"]:
        nccl = f"NCCL {_version(b['nccl_version'], (10000, 100, 1))}" if b["nccl_version"] else b["note"]
        lines.append(f"  build: CUDA (archs {b['cuda_archs']}); {nccl}")
    else:
        lines.append(f"  build: CPU only: {b['note']}")
    lines.append(f"  cpu kernels: float32, OpenMP {'on' if b['openmp'] else 'off'}")
    if b["cuda"]:
        lines.append(f"  cuda: runtime {_version(b['cuda_runtime_version'], (1000, 10))}")
        lines.append(
            f"  cublas: {_version(b['cublas_version'], (10000, 100, 1)) if b['cublas_version'] else 'not linked'}"
        )
        lines.append(f"  nccl: {_version(b['nccl_version'], (10000, 100, 1)) if b['nccl_version'] else 'not linked'}")
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


def _preprocess(parser, args) -> None:
    from gptcore.data import default_dataset, preprocess, preprocess_sft

    progress = sys.stderr.isatty()
    if args.input is None and args.tokenizer is None:
        dataset, model = default_dataset(args.vocab_size, workers=args.workers, progress=progress)
        print(f"default corpus: {dataset}.bin/.idx (tokenizer {model})")
        return
    if args.input is None or args.tokenizer is None or args.output_prefix is None:
        parser.error("preprocess needs --input, --tokenizer and --output-prefix (or none of them: the default corpus)")
    tokenizer = args.tokenizer[0] if len(args.tokenizer) == 1 else args.tokenizer
    if args.sft:
        if args.json_keys != ["text"] or args.text_mode != "line":
            parser.error("--sft reads --src-key and --tgt-key from jsonl; --json-keys and --text-mode do not apply")
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
        print(
            f"{stats['examples']} examples, {stats['tokens']} tokens ({stats['target_tokens']} targets) in"
            f" {stats['seconds']:.1f} s; replaced {stats['replaced']}, skipped {stats['skipped']}"
        )
        for prefix in stats["outputs"].values():
            print(f"  {prefix}.bin/.idx")
        return
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
    )
    mb = stats["bytes"] / 1e6
    print(
        f"{stats['documents']} documents, {stats['tokens']} tokens from {mb:.1f} MB in {stats['seconds']:.1f} s"
        f" ({mb / max(stats['seconds'], 1e-9):.1f} MB/s); replaced {stats['replaced']}, skipped {stats['skipped']}"
    )
    for prefix in stats["outputs"].values():
        print(f"  {prefix}.bin/.idx")


def _add_convert_parser(sub) -> None:
    conv = sub.add_parser(
        "convert", help="convert models: Hugging Face GPT-2 import/export, checkpoint resharding"
    ).add_subparsers(dest="convert_command", required=True)
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
        help="a gptcore model or checkpoint -> a HF GPT-2 directory (config.json + model.safetensors)",
        description="Write a model as a directory GPT2LMHeadModel.from_pretrained loads: a gptcore model file,"
        " a training checkpoint folder step_N/ (sharded ones merged) or a save folder (its newest checkpoint).",
    )
    exp.add_argument("--checkpoint", required=True, help="model file, step_N/ folder or save folder")
    exp.add_argument("--lora", metavar="PATH", help="LoRA adapters (file, or a LoRA run's folder) merged in first")
    exp.add_argument("--out", required=True, help="the directory to write")
    mrg = conv.add_parser(
        "merge-lora",
        help="a base model + LoRA adapters -> one gptcore model file with the adapters merged",
        description="Merge LoRA adapters (an adapter file, or a LoRA run's save or step folder) into the weights"
        " of their base model (any model --checkpoint names) and write a plain gptcore model file.",
    )
    mrg.add_argument("--checkpoint", required=True, help="the base model: model file, checkpoint or HF folder")
    mrg.add_argument("--lora", required=True, help="adapter file, or a LoRA run's save or step folder")
    mrg.add_argument("--out", required=True, help="the gptcore model file to write")
    res = conv.add_parser(
        "reshard",
        help="a training checkpoint's weights -> another tensor x pipeline parallel layout",
        description="Write the weights of a training checkpoint (a step_N/ folder, or a save folder: its newest"
        " checkpoint) split for --tensor-parallel x --pipeline-parallel ranks (1 x 1: one model.safetensors) as"
        " OUT/step_N, with layout.json, trainer.pt without optimizer and RNG state, config.yaml and tokenizer/."
        " Per-rank optimizer state is not carried over.",
    )
    res.add_argument("--checkpoint", required=True, help="step_N/ folder or save folder")
    res.add_argument("--tensor-parallel", type=int, default=1, metavar="T", help="tensor-parallel size (default 1)")
    res.add_argument("--pipeline-parallel", type=int, default=1, metavar="P", help="pipeline stages (default 1)")
    res.add_argument("--out", required=True, help="the save folder to write OUT/step_N into")


def _convert(args) -> int:
    import gptcore
    from gptcore import convert

    try:
        if args.convert_command == "reshard":
            from gptcore.parallel.checkpoint import read_layout, reshard_checkpoint

            folder = reshard_checkpoint(args.checkpoint, args.out, args.tensor_parallel, args.pipeline_parallel)
            files = sorted(p.name for p in folder.glob("model*.safetensors"))
            layout = read_layout(folder)
            print(
                f"{folder}: tp={layout['tensor_parallel']} x pp={layout['pipeline_parallel']},"
                f" {len(files)} model file{'s' if len(files) != 1 else ''} ({files[0]}"
                f"{f' ... {files[-1]}' if len(files) > 1 else ''})"
            )
            return 0
        if args.convert_command == "hf-import":
            model = convert.from_hf(args.hf_dir, use_gptcore_ops=False)
            convert.save(model, args.out)
        else:
            model = convert.load_any(args.checkpoint, use_gptcore_ops=False)
            if args.lora:
                from gptcore.finetune.lora import apply_adapters

                apply_adapters(model, args.lora, merge=True)
            if args.convert_command == "merge-lora":
                convert.save(model, args.out)
            else:
                convert.to_hf(model, args.out)
    except (ValueError, OSError, gptcore.Error) as e:
        print(f"gptcore convert: error: {e}", file=sys.stderr)
        return 2
    c = model.config
    print(f"{args.out}: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, vocab {c.vocab_size}")
    return 0


def _add_train_parser(sub) -> None:
    train = sub.add_parser(
        "train",
        help="pretrain a GPT from a YAML config (default: a tiny model on the built-in corpus)",
        description="Pretrain a GPT. The config is a flat YAML file of TrainConfig keys (configs/*.yaml); each"
        " key=value after it overrides one key (values parsed as YAML: lr=3e-4 save=out/run1 data_path=null)."
        " Without data_path, trains on the built-in default corpus. Resumes from the newest checkpoint in"
        " `load` (or `save`) when there is one; SIGTERM finishes the step, saves and exits.",
    )
    _add_train_arguments(train, default_config="tiny-cpu")


def _add_train_arguments(parser, default_config: str) -> None:
    parser.add_argument(
        "--config", default=default_config, help=f"a YAML file or a shipped config name (default: {default_config})"
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="run N processes on this machine (through torchrun): data parallel, or the layout the config's"
        " tensor_parallel and pipeline_parallel ask for (default 1)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def _launch(args) -> int:
    """`gptcore train --nproc-per-node N ...`: torchrun --standalone running N copies of the same command."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if args.nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    from gptcore.training import load_config

    load_config(args.config, args.overrides)  # a bad config stops here, once, not in every process
    command = ["-m", "gptcore", args.command, "--config", str(args.config), *args.overrides]
    try:
        torchrun(["--standalone", f"--nproc-per-node={args.nproc_per_node}", *command])
    except ChildFailedError as e:  # the processes printed their own errors
        codes = sorted({failure.exitcode for failure in e.failures.values()})
        print(f"gptcore train: {len(e.failures)} of {args.nproc_per_node} processes failed", file=sys.stderr)
        return max(codes) if codes and max(codes) > 0 else 1
    return 0


def _train(args) -> int:
    import torch.distributed as dist

    from gptcore.data import load_tokenizer
    from gptcore.generate import sample
    from gptcore.training import ConfigError, load_config
    from gptcore.training.parallel_trainer import launched_world_size, make_trainer

    if args.nproc_per_node > 1 and launched_world_size() == 1:
        return _launch(args)
    cfg = load_config(args.config, args.overrides)
    if args.command == "finetune" and cfg.init_from is None:
        raise ConfigError("init_from is not set: name the pretrained model to finetune (init_from=PATH)")
    trainer = make_trainer(cfg)
    try:
        trainer.train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not trainer.is_main:
        return 0
    if trainer.stopped_by_signal:
        print(f"stopped by {trainer.stopped_by_signal} at step {trainer.step}")
        return 0
    if cfg.sample_tokens and cfg.tensor_parallel * cfg.pipeline_parallel > 1:
        print(f"(no sample: the model is split over processes; try `gptcore generate --checkpoint {cfg.save}`)")
    elif cfg.sample_tokens:
        tokenizer = load_tokenizer(trainer.tokenizer_path)
        prompt = tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else []
        room = trainer.model.config.n_positions - max(len(prompt), 1)
        ids = sample(
            trainer.model, prompt, min(cfg.sample_tokens, room), temperature=0.8, top_k=40, stop_id=tokenizer.eod_id
        )
        print(f"--- sample ({cfg.sample_tokens} tokens, temperature 0.8, top-k 40) ---")
        print(cfg.sample_prompt + tokenizer.decode(ids))
    return 0


def _add_finetune_parser(sub) -> None:
    ft = sub.add_parser(
        "finetune",
        help="finetune a pretrained GPT: SFT on src/tgt data (task `sft`, the default) or a classifier (`cls`)",
        description="Finetune a pretrained GPT. Tasks: sft (the default: `gptcore finetune key=value ...` is"
        " `gptcore finetune sft key=value ...`) and cls.",
    )
    tasks = ft.add_subparsers(dest="finetune_task", required=True)
    sft = tasks.add_parser(
        "sft",
        help="supervised finetuning on jsonl src/tgt data, loss on the targets only; LoRA with lora_rank=N",
        description="Supervised finetuning: `gptcore train` with a finetuning config (default: sft-cpu). The data"
        " is a prefix written by `gptcore preprocess --sft` (tokens plus a loss-mask companion: with src and"
        " tgt the loss counts the tgt tokens only; with src only, every token); init_from names the model to"
        " start from (a gptcore checkpoint or an HF GPT-2 folder). Every training key applies (schedule,"
        " precision, accumulation, checkpoints, resume, parallelism), plus lora_rank, lora_alpha,"
        " lora_dropout and lora_targets.",
    )
    _add_train_arguments(sft, default_config="sft-cpu")
    cls = tasks.add_parser(
        "cls",
        help="train a sequence classifier (a linear head on the last token) on .tsv/.jsonl text + label data",
        description="Train a classifier: the GPT plus a linear head on each text's last token (HF's"
        " GPT2ForSequenceClassification), AdamW with linear warmup and cosine decay, validated after each"
        " epoch. Data: .tsv with a header naming a text column (text or sentence) and a label column, or"
        " headerless text<TAB>label rows; or .jsonl objects with those keys. Labels are integer ids or names"
        " (numbered in sorted order). Writes a folder `gptcore eval cls --checkpoint` reads: the model, the"
        " head, the labels and the tokenizer.",
    )
    cls.add_argument("--init-from", required=True, help="save folder, step_N/ folder, model file or HF folder")
    cls.add_argument("--train", required=True, metavar="FILE", help=".tsv or .jsonl training data")
    cls.add_argument("--valid", metavar="FILE", help=".tsv or .jsonl data evaluated after each epoch")
    cls.add_argument("--save", required=True, metavar="DIR", help="the classifier folder to write")
    cls.add_argument("--tokenizer", help="tokenizer to use instead of the model's")
    cls.add_argument("--text-key", help="the text column or key (default: text, else sentence)")
    cls.add_argument("--label-key", default="label", help="the label column or key (default: label)")
    cls.add_argument("--epochs", type=int, default=3, help="passes over the training data (default 3)")
    cls.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    cls.add_argument("--warmup", type=float, default=0.1, help="share of the steps spent warming up (default 0.1)")
    cls.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices (default 0.01)")
    cls.add_argument("--batch-size", type=int, default=16, help="texts a step (default 16)")
    cls.add_argument("--max-len", type=int, help="tokens kept of each text (default: the model's n_positions)")
    cls.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (default 0.1)")
    cls.add_argument(
        "--keep",
        choices=("best", "last"),
        default="best",
        help="save the epoch of the best validation accuracy (default; the last without --valid) or the last",
    )
    cls.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        metavar="N",
        help="train rank-N LoRA adapters on the frozen model (and the head), merged into the saved model"
        " (default 0: finetune the whole model)",
    )
    cls.add_argument("--lora-alpha", type=float, help="LoRA scale alpha / rank (default alpha = rank)")
    cls.add_argument("--seed", type=int, default=0, help="head initialization, shuffling and dropout (default 0)")
    cls.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (trains in float32)")


def _finetune_cls(args) -> int:
    import gptcore
    from gptcore import convert
    from gptcore.finetune import LoRAConfig, classify

    try:
        lora = LoRAConfig(args.lora_rank, alpha=args.lora_alpha) if args.lora_rank else None
        train = classify.load_classification_data(args.train, args.text_key, args.label_key)
        valid = None
        if args.valid is not None:
            valid = classify.load_classification_data(args.valid, args.text_key, args.label_key)
        model, tokenizer = convert.load_for_inference(args.init_from, args.tokenizer, args.device, "fp32")
        if tokenizer is None:
            raise ValueError(f"{args.init_from}: no tokenizer found beside the model; give --tokenizer")
        result = classify.finetune_classifier(
            model,
            tokenizer,
            train,
            valid,
            epochs=args.epochs,
            lr=args.lr,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            max_len=args.max_len,
            dropout=args.dropout,
            seed=args.seed,
            keep=args.keep,
            lora=lora,
            log=print,
        )
        classify.save_classifier(result.classifier, args.save, args.tokenizer or tokenizer)
    except (ValueError, OSError, gptcore.Error) as e:
        print(f"gptcore finetune: error: {e}", file=sys.stderr)
        return 2
    clf, kept = result.classifier, result.history[result.kept_epoch - 1]
    labels = ", ".join(clf.label_names) if clf.label_names else f"ids 0..{clf.num_labels - 1}"
    accuracy = f", valid accuracy {kept['valid_accuracy']:.4f}" if "valid_accuracy" in kept else ""
    print(f"{args.save}: {clf.num_labels} labels ({labels}); epoch {result.kept_epoch} of {args.epochs}{accuracy}")
    return 0


def _add_generate_parser(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate text from a checkpoint (KV cache; greedy, temperature, top-k, top-p)",
        description="Generate text from a model: a training checkpoint or save folder, a gptcore model file, or"
        " an HF GPT-2 folder. One --prompt streams its continuation as it is produced; several prompts"
        " (repeated --prompt, or --prompt-file with one prompt a line) are generated as one batch;"
        " --interactive reads prompts from stdin until an empty line or end of input.",
    )
    gen.add_argument("--checkpoint", required=True, help="save folder, step_N/ folder, model file or HF folder")
    gen.add_argument("--tokenizer", help="tokenizer to use instead of the checkpoint's")
    gen.add_argument(
        "--lora",
        metavar="PATH",
        help="LoRA adapters merged into the model: a file, or a LoRA run's save or step folder",
    )
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    src.add_argument("--prompt-file", help="a UTF-8 file with one prompt a line (blank lines skipped)")
    src.add_argument("--interactive", action="store_true", help="read prompts from stdin, one a line")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default 1.0)")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1: off)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1: off)")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-document token")
    gen.add_argument("--seed", type=int, help="sampling seed (default: random)")
    gen.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    gen.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    gen.add_argument("--json", action="store_true", help="print one JSON object a prompt instead of text")


def _generate(args) -> int:
    import json

    from gptcore import convert
    from gptcore.generate import Generator

    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise ValueError(f"{args.prompt_file}: no prompts (the file has no non-blank line)")
    else:
        prompts = args.prompt or []
    model, tokenizer = convert.load_for_inference(
        args.checkpoint, args.tokenizer, args.device, args.dtype, lora=args.lora
    )
    if tokenizer is None:
        raise ValueError(f"{args.checkpoint}: no tokenizer found beside the model; give --tokenizer")
    generator = Generator(model, tokenizer, max_batch=args.max_batch)
    kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    if args.ignore_eos:
        kwargs["stop_ids"] = ()
    generator.params(**kwargs)  # bad values stop here, before any prompt is read
    if any(not p for p in prompts):
        raise ValueError("empty prompt: give some text")

    def stream(prompt: str) -> None:
        print(prompt, end="", flush=True)
        reason = None
        for chunk in generator.stream(prompt, **kwargs):
            print(chunk.text, end="", flush=True)
            reason = chunk.finish_reason or reason
        print(f"\n[{reason}]" if sys.stdout.isatty() else "", flush=True)

    if args.interactive:
        while True:
            if sys.stdin.isatty():
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line.strip():
                return 0
            try:
                stream(line.rstrip("\n"))
            except ValueError as e:  # a prompt too long for the model: say so and take the next one
                print(f"error: {e}", file=sys.stderr)
    if len(prompts) == 1 and not args.json:
        stream(prompts[0])
        return 0
    for prompt, result in zip(prompts, generator.generate(prompts, **kwargs)):
        if args.json:
            record = dict(prompt=prompt, text=result.text, tokens=result.tokens, finish_reason=result.finish_reason)
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(prompt + result.text)
            print("-" * 40)
    return 0


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a model: perplexity on a text file or an indexed dataset (task `ppl`, the default),"
        " or a classifier's accuracy (`cls`)",
        description="Evaluate a model. Tasks: ppl (the default: `gptcore eval --checkpoint ...` is"
        " `gptcore eval ppl --checkpoint ...`) and cls.",
    )
    tasks = ev.add_subparsers(dest="eval_task", required=True)
    ppl = tasks.add_parser(
        "ppl",
        help="sliding-window perplexity, bits per byte and word perplexity",
        description="Perplexity of a model on a UTF-8 text file (tokenized as one stream) or an indexed dataset"
        " (documents concatenated), with a sliding window: windows of --window tokens every --stride tokens,"
        " each scoring only the tokens the previous window did not, so every token is scored once with at"
        " least window - stride tokens of context. Reports token perplexity, bits per byte and word"
        " perplexity (words: whitespace-separated, as in WikiText); prints a summary and writes JSON.",
    )
    ppl.add_argument("--checkpoint", required=True, help="save folder, step_N/ folder, model file or HF folder")
    src = ppl.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="a UTF-8 text file")
    src.add_argument("--data-prefix", metavar="PREFIX", help="an indexed dataset PREFIX.bin/.idx")
    ppl.add_argument("--tokenizer", help="tokenizer to use instead of the checkpoint's")
    ppl.add_argument("--window", type=int, help="tokens a forward sees (default: the model's n_positions)")
    ppl.add_argument("--stride", type=int, help="tokens between window starts (default: window // 2)")
    ppl.add_argument("--batch-size", type=int, default=4, help="windows a forward (default 4)")
    ppl.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens")
    ppl.add_argument(
        "--prepend-eod",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put the end-of-document token in front so the first token is scored (default: when the"
        " tokenizer has one)",
    )
    ppl.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ppl.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    ppl.add_argument("--output", metavar="JSON", help="write the results here as JSON")
    ppl.add_argument("--progress", action="store_true", help="a progress bar even when stderr is not a terminal")
    cls = tasks.add_parser(
        "cls",
        help="accuracy of a classifier from `gptcore finetune cls` on .tsv/.jsonl text + label data",
        description="Accuracy and mean cross-entropy of a classifier folder (`gptcore finetune cls --save`)"
        " on a .tsv or .jsonl file of texts and labels (the formats finetune cls reads; labels must be the"
        " classifier's). Texts are cut to the length the classifier was trained with.",
    )
    cls.add_argument("--checkpoint", required=True, help="the classifier folder")
    cls.add_argument("--data", required=True, metavar="FILE", help=".tsv or .jsonl data")
    cls.add_argument("--text-key", help="the text column or key (default: text, else sentence)")
    cls.add_argument("--label-key", default="label", help="the label column or key (default: label)")
    cls.add_argument("--batch-size", type=int, default=32, help="texts a forward (default 32)")
    cls.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    cls.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    cls.add_argument("--json", action="store_true", help="print the results as one JSON object")


def _eval_cls(args) -> int:
    import json

    import gptcore
    from gptcore.finetune import classify

    try:
        data = classify.load_classification_data(args.data, args.text_key, args.label_key)
        classifier, tokenizer = classify.load_classifier(args.checkpoint, args.device, args.dtype)
        if tokenizer is None:
            raise ValueError(f"{args.checkpoint}: the classifier folder has no tokenizer/")
        labels = classifier.label_ids(data)
        result = classify.evaluate_classifier(classifier, data.texts, labels, tokenizer, args.batch_size)
    except (ValueError, OSError, gptcore.Error) as e:
        print(f"gptcore eval: error: {e}", file=sys.stderr)
        return 2
    result = dict(task="cls", model=str(args.checkpoint), data=str(args.data)) | result
    if args.json:
        print(json.dumps(result))
    else:
        correct = round(result["accuracy"] * result["n"])
        print(f"{args.data}: accuracy {result['accuracy']:.4f} ({correct}/{result['n']}), loss {result['loss']:.4f}")
    return 0


def _eval(args) -> int:
    import json
    from pathlib import Path

    import gptcore
    from gptcore import convert, evaluate

    try:
        if args.text is not None and not Path(args.text).is_file():
            raise FileNotFoundError(f"{args.text}: no such text file")
        prefix = evaluate.dataset_prefix(args.data_prefix) if args.data_prefix is not None else None
        model, tokenizer = convert.load_for_inference(args.checkpoint, args.tokenizer, args.device, args.dtype)
        if prefix is None and tokenizer is None:
            raise ValueError(f"{args.checkpoint}: no tokenizer found beside the model; give --tokenizer")
        kwargs = dict(
            window=args.window,
            stride=args.stride,
            batch_size=args.batch_size,
            prepend_eod=args.prepend_eod,
            max_tokens=args.max_tokens,
            progress=args.progress or sys.stderr.isatty(),
        )
        if prefix is None:
            result = evaluate.evaluate_file(model, tokenizer, args.text, **kwargs)
        else:
            result = evaluate.evaluate_indexed(model, prefix, tokenizer, **kwargs)
        param = next(model.parameters())
        result |= dict(
            task="ppl",
            model=str(args.checkpoint),
            tokenizer=tokenizer.name if tokenizer is not None else None,
            device=str(param.device),
            dtype=str(param.dtype).removeprefix("torch."),
        )
        print(f"model {args.checkpoint} ({result['dtype']} on {result['device']})")
        print(evaluate.format_summary(result))
        if args.output:
            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(f"results: {out}")
    except (ValueError, OSError, gptcore.Error) as e:
        print(f"gptcore eval: error: {e}", file=sys.stderr)
        return 2
    return 0


def _add_serve_parser(sub) -> None:
    srv = sub.add_parser(
        "serve",
        help="an OpenAI-style HTTP completions server (/v1/completions, streaming, /health)",
        description="Serve a model over HTTP: POST /v1/completions (OpenAI's completions API; server-sent"
        ' events with "stream": true), GET /v1/models and GET /health. Concurrent requests are decoded'
        " together (continuous batching over --max-batch sequences); up to --max-queue more wait for a slot"
        " and the rest get 503. Listens on 127.0.0.1 (this machine only) unless --host says otherwise."
        " Ctrl-C or SIGTERM stops it.",
    )
    srv.add_argument("--checkpoint", required=True, help="save folder, step_N/ folder, model file or HF folder")
    srv.add_argument("--tokenizer", help="tokenizer to use instead of the checkpoint's")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    srv.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    srv.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 503")
    srv.add_argument("--max-prompt-tokens", type=int, help="longer prompts get 400 (default: the model's positions)")
    srv.add_argument("--model-name", default="gptcore", help="the model's name in the API (default: gptcore)")
    srv.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    srv.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")


def _serve(args) -> int:
    import logging

    import gptcore
    from gptcore import convert
    from gptcore.serve import Server

    try:
        model, tokenizer = convert.load_for_inference(args.checkpoint, args.tokenizer, args.device, args.dtype)
        server = Server(
            model,
            tokenizer,
            host=args.host,
            port=args.port,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            max_prompt_tokens=args.max_prompt_tokens,
            model_name=args.model_name,
        )
    except (ValueError, OSError, gptcore.Error) as e:
        print(f"gptcore serve: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    c, param = model.config, next(model.parameters())
    print(
        f"serving {args.model_name} ({c.n_layer} layers, {c.n_embd} wide, {str(param.dtype).removeprefix('torch.')}"
        f" on {param.device}; tokenizer {tokenizer.name if tokenizer is not None else 'none: token-id prompts only'})"
        f" at {server.url}/v1/completions",
        flush=True,
    )
    server.serve_forever()
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptcore", description="GPT-2 / GPT-3 training on a fused C++/CUDA core")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, build flags (CUDA, architectures, cuBLAS, NCCL) and visible devices")
    _add_tokenizer_parser(sub)
    _add_preprocess_parser(sub)
    _add_convert_parser(sub)
    _add_train_parser(sub)
    _add_finetune_parser(sub)
    _add_generate_parser(sub)
    _add_eval_parser(sub)
    _add_serve_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"] and not set(argv[1:2]) & {"ppl", "cls", "-h", "--help"}:
        argv.insert(1, "ppl")  # the default task: `gptcore eval --checkpoint ...` is `gptcore eval ppl ...`
    if argv[:1] == ["finetune"] and not set(argv[1:2]) & {"sft", "cls", "-h", "--help"}:
        argv.insert(1, "sft")  # the default task
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info_text())
    elif args.command == "tokenizer" and args.tokenizer_command == "train":
        _tokenizer_train(args)
    elif args.command == "preprocess":
        try:
            _preprocess(parser, args)
        except (ValueError, OSError) as e:
            print(f"gptcore preprocess: error: {e}", file=sys.stderr)
            return 2
    elif args.command == "convert":
        return _convert(args)
    elif args.command in ("train", "finetune") and getattr(args, "finetune_task", "sft") == "sft":
        from gptcore.training import ConfigError

        try:
            return _train(args)
        except (ConfigError, ValueError, FileNotFoundError) as e:
            print(f"gptcore {args.command}: error: {e}", file=sys.stderr)
            return 2
    elif args.command == "generate":
        try:
            return _generate(args)
        except (ValueError, FileNotFoundError, OSError) as e:
            print(f"gptcore generate: error: {e}", file=sys.stderr)
            return 2
    elif args.command == "finetune" and args.finetune_task == "cls":
        return _finetune_cls(args)
    elif args.command == "eval":
        return _eval_cls(args) if args.eval_task == "cls" else _eval(args)
    elif args.command == "serve":
        return _serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
