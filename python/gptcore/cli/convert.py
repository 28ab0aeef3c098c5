"""`gptcore convert hf-import|hf-export|merge-lora|reshard|verify|megatron-import|megatron-export|paddle-data`:
models to and from Hugging Face GPT-2 and Megatron-LM, LoRA adapters merged in, training checkpoints
resharded or verified, PaddleNLP token data as Megatron's. Each model written gets the tokenizer it came with (or
--tokenizer) beside it: in the HF folder, or a tokenizer/ folder beside a model file."""

from __future__ import annotations

from pathlib import Path

from gptcore import convert
from gptcore.checkpoint import (
    TOKENIZER_DIR,
    copy_tokenizer,
    load_any,
    read_layout,
    reshard_checkpoint,
    save_model,
    tokenizer_of,
    verify_checkpoints,
)
from gptcore.cli.source import merge_adapters
from gptcore.data import convert_paddle_data, load_tokenizer

TOKENIZER_HELP = "the tokenizer to write beside the output (default: the one that came with the model)"


def add_parser(commands) -> None:
    conv = commands.add_parser(
        "convert", help="convert models: Hugging Face GPT-2 import/export, checkpoint resharding"
    ).add_subparsers(dest="convert_command", required=True)
    imp = conv.add_parser(
        "hf-import",
        help="a HF GPT-2 directory (config.json + model.safetensors) -> a gptcore model file",
        description="Read a Hugging Face GPT-2 directory and write a gptcore model file: one safetensors file"
        " with the GPTConfig as JSON in its metadata (gptcore.checkpoint.load_model reads it).",
    )
    imp.add_argument("--hf-dir", required=True, help="directory with config.json and model.safetensors")
    imp.add_argument("--tokenizer", help=TOKENIZER_HELP)
    imp.add_argument("--out", required=True, help="the gptcore model file to write")
    imp.set_defaults(run=run_hf_import)
    exp = conv.add_parser(
        "hf-export",
        help="a gptcore model or checkpoint -> a HF GPT-2 directory (config.json + model.safetensors)",
        description="Write a model as a directory GPT2LMHeadModel.from_pretrained loads: a gptcore model file,"
        " a training checkpoint folder step_N/ (sharded ones merged) or a save folder (its newest checkpoint).",
    )
    exp.add_argument("--checkpoint", required=True, help="model file, step_N/ folder or save folder")
    exp.add_argument("--lora", metavar="PATH", help="LoRA adapters (file, or a LoRA run's folder) merged in first")
    exp.add_argument("--tokenizer", help=TOKENIZER_HELP)
    exp.add_argument("--out", required=True, help="the directory to write")
    exp.set_defaults(run=run_hf_export)
    mrg = conv.add_parser(
        "merge-lora",
        help="a base model + LoRA adapters -> one gptcore model file with the adapters merged",
        description="Merge LoRA adapters (an adapter file, or a LoRA run's save or step folder) into the weights"
        " of their base model (any model --checkpoint names) and write a plain gptcore model file.",
    )
    mrg.add_argument("--checkpoint", required=True, help="the base model: model file, checkpoint or HF folder")
    mrg.add_argument("--lora", required=True, help="adapter file, or a LoRA run's save or step folder")
    mrg.add_argument("--tokenizer", help=TOKENIZER_HELP)
    mrg.add_argument("--out", required=True, help="the gptcore model file to write")
    mrg.set_defaults(run=run_merge_lora)
    res = conv.add_parser(
        "reshard",
        help="a training checkpoint's weights -> another tensor x pipeline parallel layout",
        description="Write the weights of a training checkpoint (a step_N/ folder, or a save folder: its newest"
        " checkpoint) split for --tensor-parallel x --pipeline-parallel ranks (1 x 1: one model.safetensors) as"
        " OUT/step_N, with layout.json, the trainer state without optimizer and RNG state, config.yaml and tokenizer/."
        " Per-rank optimizer state is not carried over.",
    )
    res.add_argument("--checkpoint", required=True, help="step_N/ folder or save folder")
    res.add_argument("--tensor-parallel", type=int, default=1, metavar="T", help="tensor-parallel size (default 1)")
    res.add_argument("--pipeline-parallel", type=int, default=1, metavar="P", help="pipeline stages (default 1)")
    res.add_argument("--out", required=True, help="the save folder to write OUT/step_N into")
    res.set_defaults(run=run_reshard)
    pad = conv.add_parser(
        "paddle-data",
        help="PaddleNLP pretraining data (PREFIX_ids.npy + PREFIX_idx.npz) -> a Megatron .bin/.idx dataset",
        description="Write PaddleNLP's PREFIX_ids.npy (token ids) + PREFIX_idx.npz (lens, docs) as the Megatron"
        " dataset OUT.bin/.idx: the same documents, sentences and tokens, in the same dtype.",
    )
    pad.add_argument("--input", required=True, metavar="PREFIX", help="PaddleNLP prefix (or either of its files)")
    pad.add_argument("--output-prefix", required=True, metavar="OUT", help="writes OUT.bin and OUT.idx")
    pad.add_argument("--tokenizer", metavar="PATH", help="check every token id against this tokenizer's vocabulary")
    pad.set_defaults(run=run_paddle_data)
    ver = conv.add_parser(
        "verify",
        help="check a checkpoint (single or sharded), a save folder's checkpoints, or a model file",
        description="Read every file of a checkpoint back against the manifest in its COMPLETE marker (sizes and"
        " SHA-256; older checkpoints: each safetensors file's header and length) and print what is intact. For a"
        " save folder, each step_N/ and the one a resume would take. Exit status 1 when something is damaged.",
    )
    ver.add_argument("path", help="a step_N/ folder, a save folder, or a .safetensors model file")
    ver.set_defaults(run=run_verify)
    add_megatron_parsers(conv)


def add_megatron_parsers(conv) -> None:
    imp = conv.add_parser(
        "megatron-import",
        help="a Megatron-LM GPT checkpoint (any tp x pp, legacy or megatron-core names) -> a gptcore model file",
    )
    imp.add_argument("--checkpoint", required=True, help="the checkpoint folder (or one iter_NNNNNNN/ in it)")
    imp.add_argument("--num-attention-heads", type=int, help="where the checkpoint saves no args")
    imp.add_argument("--vocab-size", type=int, help="the tokenizer's vocabulary: Megatron's padding rows dropped")
    imp.add_argument("--tokenizer", help=TOKENIZER_HELP)
    imp.add_argument("--out", required=True, help="the gptcore model file to write")
    imp.set_defaults(run=run_megatron_import)
    exp = conv.add_parser(
        "megatron-export", help="a gptcore model or checkpoint -> a Megatron-LM checkpoint (megatron-core names)"
    )
    exp.add_argument("--checkpoint", required=True, help="model file, step_N/ folder, save folder or HF folder")
    exp.add_argument("--tensor-parallel", type=int, default=1, metavar="T", help="tensor-parallel size (default 1)")
    exp.add_argument("--pipeline-parallel", type=int, default=1, metavar="P", help="pipeline stages (default 1)")
    exp.add_argument("--tokenizer", help=TOKENIZER_HELP)
    exp.add_argument("--out", required=True, help="the checkpoint folder to write (OUT/release/mp_rank_*)")
    exp.set_defaults(run=run_megatron_export)


def run_hf_import(args) -> None:
    model = convert.from_hf(args.hf_dir, use_gptcore_ops=False)
    save_model(model, args.out)
    _written(args.out, model, _tokenizer_beside_file(args.tokenizer or tokenizer_of(args.hf_dir), args.out))


def run_hf_export(args) -> None:
    model = _merged_model(args)
    convert.to_hf(model, args.out)
    tokenizer = args.tokenizer or tokenizer_of(args.checkpoint)
    if tokenizer is not None:
        copy_tokenizer(tokenizer, Path(args.out))
        convert.save_hf_tokenizer(Path(args.out), args.out, model.config)
    _written(args.out, model, tokenizer)


def run_merge_lora(args) -> None:
    model = _merged_model(args)
    save_model(model, args.out)
    _written(args.out, model, _tokenizer_beside_file(args.tokenizer or tokenizer_of(args.checkpoint), args.out))


def _tokenizer_beside_file(tokenizer, model_file):
    """tokenizer (or None) copied into the tokenizer/ folder beside model_file; returns tokenizer."""
    if tokenizer is not None:
        copy_tokenizer(tokenizer, Path(model_file).parent / TOKENIZER_DIR)
    return tokenizer


def run_megatron_import(args) -> None:
    overrides = {k: v for k, v in (("n_head", args.num_attention_heads), ("vocab_size", args.vocab_size)) if v}
    model = convert.from_megatron(args.checkpoint, use_gptcore_ops=False, **overrides)
    save_model(model, args.out)
    _written(args.out, model, _tokenizer_beside_file(args.tokenizer or tokenizer_of(args.checkpoint), args.out))


def run_megatron_export(args) -> None:
    model = load_any(args.checkpoint, use_gptcore_ops=False)
    convert.to_megatron(model, args.out, args.tensor_parallel, args.pipeline_parallel)
    tokenizer = args.tokenizer or tokenizer_of(args.checkpoint)
    if tokenizer is not None:  # OUT/tokenizer/: where gptcore looks beside a Megatron checkpoint
        copy_tokenizer(tokenizer, Path(args.out) / TOKENIZER_DIR)
    _written(f"{args.out} (Megatron, tp={args.tensor_parallel} x pp={args.pipeline_parallel})", model, tokenizer)


def run_reshard(args) -> None:
    folder = reshard_checkpoint(args.checkpoint, args.out, args.tensor_parallel, args.pipeline_parallel)
    files = sorted(p.name for p in folder.glob("model*.safetensors"))
    layout = read_layout(folder)
    print(
        f"{folder}: tp={layout['tensor_parallel']} x pp={layout['pipeline_parallel']},"
        f" {len(files)} model file{'s' if len(files) != 1 else ''} ({files[0]}"
        f"{f' ... {files[-1]}' if len(files) > 1 else ''})"
    )


def run_verify(args) -> int:
    verdicts, chosen = verify_checkpoints(args.path)
    for verdict in verdicts:
        print(verdict.describe())
        for name, what in verdict.problems[1:]:
            print(f"    {name}: {what}")
    if len(verdicts) > 1 or Path(args.path).is_dir():
        print(f"a resume from {args.path} takes {chosen}" if chosen else f"no intact checkpoint in {args.path}")
    return 0 if all(v.intact for v in verdicts) else 1


def run_paddle_data(args) -> None:
    vocab_size = load_tokenizer(args.tokenizer).vocab_size if args.tokenizer else None
    prefix = args.input.removesuffix("_ids.npy").removesuffix("_idx.npz")
    stats = convert_paddle_data(prefix, args.output_prefix, vocab_size)
    print(
        f"{stats['output']}.bin/.idx: {stats['documents']} documents, {stats['sequences']} sentences,"
        f" {stats['tokens']} {stats['dtype']} tokens"
    )


def _merged_model(args):
    """The full-precision model --checkpoint names, with --lora's adapters merged in when given."""
    model = load_any(args.checkpoint, use_gptcore_ops=False)
    if args.lora:
        merge_adapters(model, args.lora)
    return model


def _written(out, model, tokenizer) -> None:
    c = model.config
    said = f"tokenizer from {tokenizer}" if tokenizer is not None else "no tokenizer found: give --tokenizer"
    print(f"{out}: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, vocab {c.vocab_size}; {said}")
