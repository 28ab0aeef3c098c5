"""`gptcore eval [ppl]|cls|mc`: a model's perplexity on text or an indexed dataset, a classifier's accuracy,
or a model's zero-shot multiple-choice accuracy (lm-evaluation-harness's acc and acc_norm)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gptcore import evaluate, multiple_choice
from gptcore.cli import source
from gptcore.cli.arguments import add_classification_keys
from gptcore.finetune import classify
from gptcore.generate import Generator

TASKS, DEFAULT_TASK = ("ppl", "cls", "mc"), "ppl"


def add_parser(commands) -> None:
    ev = commands.add_parser(
        "eval",
        help="evaluate a model: perplexity on a text file or an indexed dataset (task `ppl`, the default),"
        " a classifier's accuracy (`cls`), or multiple-choice accuracy as lm-evaluation-harness scores it (`mc`)",
        description="Evaluate a model. Tasks: ppl (the default: `gptcore eval --checkpoint ...` is"
        " `gptcore eval ppl --checkpoint ...`), cls and mc.",
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
    source.add_model_source(ppl)
    source.add_processes(ppl)
    source.add_weights(ppl)
    src = ppl.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="a UTF-8 text file")
    src.add_argument("--data-prefix", metavar="PREFIX", help="an indexed dataset PREFIX.bin/.idx")
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
    ppl.add_argument("--output", metavar="JSON", help="write the results here as JSON")
    ppl.add_argument("--progress", action="store_true", help="a progress bar even when stderr is not a terminal")
    ppl.set_defaults(run=run_ppl)
    cls = tasks.add_parser(
        "cls",
        help="accuracy of a classifier from `gptcore finetune cls` on .tsv/.csv/.jsonl text + label data",
        description="Accuracy and mean cross-entropy of a classifier folder (`gptcore finetune cls --save`)"
        " on a .tsv, .csv or .jsonl file of texts and labels (the formats finetune cls reads; labels must be the"
        " classifier's). Texts are cut to the length the classifier was trained with.",
    )
    source.add_model_source(cls, checkpoint_help="the classifier folder", tokenizer=False)
    source.add_processes(cls)
    cls.add_argument("--data", required=True, metavar="FILE", help=".tsv, .csv or .jsonl data")
    add_classification_keys(cls)
    cls.add_argument("--batch-size", type=int, default=32, help="texts a forward (default 32)")
    cls.add_argument("--json", action="store_true", help="print the results as one JSON object")
    cls.set_defaults(run=run_cls)
    mc = tasks.add_parser(
        "mc",
        help="zero-shot multiple-choice accuracy (acc, acc_norm) as lm-evaluation-harness computes it",
        description="Zero-shot multiple-choice accuracy on a .jsonl file of {context, choices, label} documents,"
        " scored as lm-evaluation-harness's multiple_choice tasks are: each choice's loglikelihood after the"
        " context (target delimiter in front), acc by the highest loglikelihood and acc_norm by the highest"
        " loglikelihood per character of the choice. The numbers equal lm-eval's local-completions model"
        " run through `gptcore serve` with max_length set to the model's n_positions.",
    )
    source.add_model_source(mc)
    source.add_processes(mc)
    mc.add_argument(
        "--data", required=True, metavar="FILE", help=f".jsonl, one document a line: {multiple_choice.EXAMPLE}"
    )
    mc.add_argument("--context-key", default="context", help="the context's key (default: context)")
    mc.add_argument("--choices-key", default="choices", help="the choices' key (default: choices)")
    mc.add_argument("--label-key", default="label", help="the right choice's index's key (default: label, else gold)")
    mc.add_argument(
        "--target-delimiter", default=" ", help="put between the context and each choice (default: one space)"
    )
    mc.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N documents")
    mc.add_argument("--output", metavar="JSON", help="write the results and every document's scores here as JSON")
    mc.add_argument("--json", action="store_true", help="print the results as one JSON object")
    mc.set_defaults(run=run_mc)


def run_ppl(args) -> int | None:
    if (code := source.launch(args)) is not None:
        return code
    if args.text is not None and not Path(args.text).is_file():
        raise FileNotFoundError(f"{args.text}: no such text file")
    prefix = evaluate.dataset_prefix(args.data_prefix) if args.data_prefix is not None else None
    with source.processes(args) as ranks:  # every rank scores the same windows; rank 0 reports
        model, tokenizer = source.load(args, need_tokenizer=prefix is None, ranks=ranks)
        leader = ranks is None or ranks.is_leader
        kwargs = dict(
            window=args.window,
            stride=args.stride,
            batch_size=args.batch_size,
            prepend_eod=args.prepend_eod,
            max_tokens=args.max_tokens,
            progress=leader and (args.progress or sys.stderr.isatty()),
            weights=args.weights,
        )
        if prefix is None:
            result = evaluate.evaluate_file(model, tokenizer, args.text, **kwargs)
        else:
            result = evaluate.evaluate_indexed(model, prefix, tokenizer, **kwargs)
    if not leader:
        return None
    param = next(model.parameters())
    result |= dict(
        task="ppl",
        model=str(args.checkpoint),
        tokenizer=tokenizer.name if tokenizer is not None else None,
        device=str(param.device),
        dtype=str(param.dtype).removeprefix("torch."),
        weights=args.weights,
        tensor_parallel=1 if ranks is None else ranks.size,
    )
    split = "" if ranks is None else f", split over {ranks.size} processes"
    core = f", {args.weights} weights in gptcore's core" if args.weights else ""
    print(f"model {args.checkpoint} ({result['dtype']} on {result['device']}{core}{split})")
    print(evaluate.format_summary(result))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {out}")


def run_cls(args) -> None:
    if args.nproc_per_node != 1 or args.tensor_parallel not in (None, 1):
        raise ValueError("eval cls runs in one process: --nproc-per-node and --tensor-parallel are for eval ppl")
    data = classify.load_classification_data(args.data, args.text_key, args.label_key)
    classifier, tokenizer = classify.load_classifier(args.checkpoint, args.device, args.dtype)
    if tokenizer is None:
        raise ValueError(f"{args.checkpoint}: the classifier folder has no tokenizer/")
    labels = classifier.label_ids(data)
    result = classify.evaluate_classifier(classifier, data.texts, labels, tokenizer, args.batch_size)
    result = dict(task="cls", model=str(args.checkpoint), data=str(args.data)) | result
    if args.json:
        print(json.dumps(result))
    else:
        correct = round(result["accuracy"] * result["n"])
        print(f"{args.data}: accuracy {result['accuracy']:.4f} ({correct}/{result['n']}), loss {result['loss']:.4f}")


def run_mc(args) -> None:
    if args.nproc_per_node != 1 or args.tensor_parallel not in (None, 1):
        raise ValueError("eval mc runs in one process: --nproc-per-node and --tensor-parallel are for eval ppl")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    docs = multiple_choice.load_docs(args.data, args.context_key, args.choices_key, args.label_key, args.limit)
    model, tokenizer = source.load(args, need_tokenizer=True)
    # A scored prompt's prefill runs alone and, generating nothing, frees its cache slot: one slot is enough.
    generator = Generator(model, tokenizer, max_batch=1)
    metrics, samples = multiple_choice.evaluate_multiple_choice(generator, docs, args.target_delimiter)
    param = next(model.parameters())
    result = dict(task="mc", model=str(args.checkpoint), data=str(args.data)) | metrics
    result |= dict(device=str(param.device), dtype=str(param.dtype).removeprefix("torch."))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(results=result, samples=samples), indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    where = f"{result['dtype']} on {result['device']}"
    print(f"{args.data}: {result['n']} documents, {result['requests']} choices scored ({where})")
    for name in ("acc", "acc_norm"):
        stderr = result[f"{name}_stderr"]
        print(f"{name:<8} {result[name]:.4f}" + ("" if stderr is None else f" ± {stderr:.4f}"))
    if args.output:
        print(f"results: {args.output}")
