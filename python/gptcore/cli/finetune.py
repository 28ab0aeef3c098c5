"""`gptcore finetune [sft]|cls`: supervised finetuning (a training run from a finetuning config), or a
sequence classifier trained on text + label data."""

from __future__ import annotations

from gptcore.cli import train
from gptcore.cli.arguments import DEVICE_HELP, add_classification_keys, add_device, add_run_config
from gptcore.cli.source import load_model
from gptcore.finetune import LoRAConfig, classify

TASKS, DEFAULT_TASK = ("sft", "cls"), "sft"


def add_parser(commands) -> None:
    ft = commands.add_parser(
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
    add_run_config(sft, default_config="sft-cpu")
    sft.set_defaults(run=train.run)
    cls = tasks.add_parser(
        "cls",
        help="train a sequence classifier (a linear head on the last token) on .tsv/.csv/.jsonl text + label data",
        description="Train a classifier: the GPT plus a linear head on each text's last token (HF's"
        " GPT2ForSequenceClassification), AdamW with linear warmup and cosine decay, validated after each"
        " epoch. Data: .tsv with a header naming a text column (text or sentence) and a label column, or"
        " headerless text<TAB>label rows; .csv as IMDB and AG-News ship it; or .jsonl objects with those keys."
        " Labels are integer ids or names"
        " (numbered in sorted order). Writes a folder `gptcore eval cls --checkpoint` reads: the model, the"
        " head, the labels and the tokenizer.",
    )
    cls.add_argument("--init-from", required=True, help="save folder, step_N/ folder, model file or HF folder")
    cls.add_argument("--train", required=True, metavar="FILE", help=".tsv, .csv or .jsonl training data")
    cls.add_argument("--valid", metavar="FILE", help=".tsv, .csv or .jsonl data evaluated after each epoch")
    cls.add_argument("--save", required=True, metavar="DIR", help="the classifier folder to write")
    cls.add_argument("--tokenizer", help="tokenizer to use instead of the model's")
    add_classification_keys(cls)
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
    cls.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="write a checkpoint after each epoch to DIR, and resume after the newest epoch already there",
    )
    cls.add_argument("--seed", type=int, default=0, help="head initialization, shuffling and dropout (default 0)")
    add_device(cls, f"{DEVICE_HELP} (trains in float32)", dtype=False)
    cls.set_defaults(run=run_cls)


def run_cls(args) -> None:
    lora = LoRAConfig(args.lora_rank, alpha=args.lora_alpha) if args.lora_rank else None
    train_data = classify.load_classification_data(args.train, args.text_key, args.label_key)
    valid = None
    if args.valid is not None:
        valid = classify.load_classification_data(args.valid, args.text_key, args.label_key)
    model, tokenizer = load_model(args.init_from, args.tokenizer, args.device, "fp32", need_tokenizer=True)
    result = classify.finetune_classifier(
        model,
        tokenizer,
        train_data,
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
        checkpoints=args.checkpoints,
        log=print,
    )
    classify.save_classifier(result.classifier, args.save, args.tokenizer or tokenizer)
    clf, kept = result.classifier, result.history[result.kept_epoch - 1]
    labels = ", ".join(clf.label_names) if clf.label_names else f"ids 0..{clf.num_labels - 1}"
    accuracy = f", valid accuracy {kept['valid_accuracy']:.4f}" if "valid_accuracy" in kept else ""
    print(f"{args.save}: {clf.num_labels} labels ({labels}); epoch {result.kept_epoch} of {args.epochs}{accuracy}")
