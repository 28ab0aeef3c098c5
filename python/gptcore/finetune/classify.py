"""Sequence classification on a GPT: a linear head on the last real token's hidden state.

Data (`load_classification_data`) is text + label per example: a .tsv file with a header naming a
text column ("text" or "sentence", as in SST-2 and GLUE's CoLA) and a "label" column, or headerless
rows `text<TAB>label` (or CoLA's raw `source<TAB>label<TAB>mark<TAB>sentence`); a .jsonl file of
objects with those keys; or a .csv file as IMDB and AG-News are distributed: a header naming the text
("text", "sentence" or "review"; or "title" and "description", joined by a space) and the label
("label", "sentiment", "class" or "Class Index"), or headerless rows `text,label`, `label,text` (an
integer first) or AG-News' `class,title,description`; CSV fields may be quoted (commas, newlines inside).
Labels are integers, used as class ids (0 .. num_labels - 1; AG-News' classes 1..4 stay as they are,
id 0 unused), or names ("positive", "World"), numbered in sorted order; the names are saved with the model.

`GPTClassifier` is Hugging Face's GPT2ForSequenceClassification on gptcore's GPT: the final hidden
states (GPT.hidden_states), the row's last non-pad token picked, a bias-free linear score head.
Batches are right-padded with `pad_id`; which token is "last" is found from where the pads are, as
HF does: the rightmost token that is not pad_id. So when pad_id is the tokenizer's eod token (GPT-2
has no pad token) and a text itself ends with eod, those trailing eod tokens count as padding and
the token before them is pooled (the same in training and evaluation, and the same as HF). gptcore's
own encoding adds no eod, so this only concerns texts whose characters spell the eod token.

A saved classifier is a folder: model.safetensors (the base GPT as a gptcore model file),
head.safetensors (score.weight), classifier.json (num_labels, pad_id, label names, max_len) and
tokenizer/ (a copy of the tokenizer). `gptcore.checkpoint.load_for_inference(folder / "model.safetensors")`
loads the base model with its tokenizer for other uses.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gptcore.checkpoint import (
    MODEL_FILE,
    TOKENIZER_DIR,
    copy_tokenizer,
    find_checkpoint,
    load_for_inference,
    load_trainer_state,
    save_model,
    save_trainer_state,
    write_checkpoint,
)
from gptcore.finetune.lora import LoRALinear, apply_lora, merge_and_unload
from gptcore.model import GPT
from gptcore.training.checkpointing import rng_state, set_rng_state
from gptcore.training.schedule import lr_at
from gptcore.training.step import (
    LocalGradients,
    OptimizerStep,
    accumulate_in_fp32,
    decay_groups,
    forward_backward,
    loss_scaler,
)

TEXT_KEYS = ("text", "sentence")  # the text column, when none is named: the first of these present
CSV_LABEL_KEYS = ("label", "sentiment", "class", "Class Index")  # IMDB's sentiment, AG-News' Class Index
CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"
STATE_FILE = "classifier_state.safetensors"  # an epoch checkpoint's weights (KEPT_FILE: keep="best"'s)
KEPT_FILE = "kept_state.safetensors"
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class ClassificationData:
    """Examples as read: texts, labels (all integers or all names) and each example's line in `source`."""

    texts: list[str]
    labels: list[int] | list[str]
    lines: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def named(self) -> bool:
        """True when the labels are names rather than integer ids."""
        return isinstance(self.labels[0], str)


def load_classification_data(path, text_key: str | None = None, label_key: str = "label") -> ClassificationData:
    """Read a .tsv, .csv or .jsonl classification file (see the module docstring). text_key None: "text",
    else "sentence". Blank lines are skipped. A malformed row raises ValueError naming file:line."""
    path = Path(path)
    if path.suffix not in (".tsv", ".csv", ".jsonl", ".json"):
        raise ValueError(f"{path}: unknown classification data format (expected .tsv, .csv or .jsonl)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        content = path.read_text(encoding="utf-8-sig")  # -sig: CSV exported from spreadsheets starts with a BOM
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix == ".csv":
        rows, reader = _csv_records(content, path), _csv_rows
    else:
        rows = [(n, line) for n, line in enumerate(content.splitlines(), 1) if line.strip()]
        reader = _tsv_rows if path.suffix == ".tsv" else _jsonl_rows
    data = ClassificationData([], [], [], str(path))
    for n, text, label in reader(rows, path, text_key, label_key):
        where = f"{path}:{n}"
        if not text.strip():
            raise ValueError(f"{where}: empty text")
        label = _parse_label(label, where)
        if data.labels and isinstance(label, str) != data.named:
            kind = "a name" if isinstance(label, str) else "an integer"
            raise ValueError(f"{where}: label {label!r} is {kind}, but the labels before it are not")
        data.texts.append(text)
        data.labels.append(label)
        data.lines.append(n)
    if not data.texts:
        raise ValueError(f"{path}: no examples")
    return data


def _tsv_rows(rows, path, text_key, label_key):
    if not rows:
        return
    first_line, first = rows[0]
    header = first.split("\t")
    text_keys = (text_key,) if text_key else TEXT_KEYS
    text_column = next((header.index(k) for k in text_keys if k in header), None)
    if label_key in header and text_column is not None:
        label_column = header.index(label_key)
        rows = rows[1:]
    elif len(header) in (2, 4) and not set(header) & {label_key, *text_keys}:
        text_column, label_column = (0, 1) if len(header) == 2 else (3, 1)
    else:
        raise ValueError(
            f"{path}:{first_line}: expected a header with a {label_key!r} column and a text column"
            f" ({' or '.join(map(repr, text_keys))}), or headerless text<TAB>label rows"
        )
    width = len(header)
    for n, line in rows:
        cells = line.split("\t")
        if len(cells) != width:
            raise ValueError(f"{path}:{n}: {len(cells)} tab-separated columns, expected {width}")
        yield n, cells[text_column], cells[label_column]


def _csv_records(content: str, path: Path) -> list[tuple[int, list[str]]]:
    """(first line, cells) of each non-blank CSV record; a quoted field may span lines."""
    records, lines = [], content.splitlines(keepends=True)
    reader = csv.reader(lines, strict=True)
    start = 1
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                records.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{path}:{start}: not valid CSV ({e}); quote fields that hold commas or quotes") from None
    return records


def _csv_rows(rows, path, text_key, label_key):
    if not rows:
        return
    first_line, header = rows[0]
    text_keys = (text_key,) if text_key else (*TEXT_KEYS, "review")
    label_keys = (label_key,) if label_key != "label" else CSV_LABEL_KEYS
    text_columns = next(([header.index(k)] for k in text_keys if k in header), None)
    if text_columns is None and not text_key and {"title", "description"} <= {h.lower() for h in header}:
        lowered = [h.lower() for h in header]
        text_columns = [lowered.index("title"), lowered.index("description")]
    label_column = next((header.index(k) for k in label_keys if k in header), None)
    integer = [bool(_INTEGER.fullmatch(c.strip())) for c in header]
    if text_columns is not None and label_column is not None:
        rows = rows[1:]
    elif len(header) == 2 and not (set(header) & {*label_keys, *text_keys}):
        text_columns, label_column = ([1], 0) if integer[0] and not integer[1] else ([0], 1)
    elif len(header) == 3 and integer[0]:
        text_columns, label_column = [1, 2], 0  # AG-News: class, title, description
    else:
        raise ValueError(
            f"{path}:{first_line}: expected a header with a label column ({' or '.join(map(repr, label_keys))}) and"
            f" a text column ({' or '.join(map(repr, text_keys))}), or headerless text,label rows or AG-News'"
            " class,title,description"
        )
    width = len(header)
    for n, cells in rows:
        if len(cells) != width:
            raise ValueError(
                f"{path}:{n}: {len(cells)} comma-separated columns, expected {width}; quote fields that hold commas"
            )
        text = " ".join(cells[c].strip() for c in text_columns if cells[c].strip())
        yield n, text, cells[label_column]


def _jsonl_rows(rows, path, text_key, label_key):
    text_keys = (text_key,) if text_key else TEXT_KEYS
    for n, line in rows:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
        key = next((k for k in text_keys if k in record), None)
        if key is None or label_key not in record:
            missing = label_key if key is not None else " or ".join(map(repr, text_keys))
            raise ValueError(f"{path}:{n}: no {missing} key")
        if not isinstance(record[key], str):
            raise ValueError(f"{path}:{n}: {key!r} is {type(record[key]).__name__}, not a string")
        yield n, record[key], record[label_key]


def _parse_label(value, where: str) -> int | str:
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError(f"{where}: empty label")
        if not _INTEGER.fullmatch(value):
            return value
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: label {value!r} is neither an integer nor a string")
    if value < 0:
        raise ValueError(f"{where}: label {value} is negative")
    return value


def last_token_index(idx: torch.Tensor, pad_id: int) -> torch.Tensor:
    """idx [B, T] -> [B]: each row's rightmost position whose token is not pad_id (0 for an all-pad
    row), as HF's GPT2ForSequenceClassification finds it."""
    positions = torch.arange(idx.shape[1], device=idx.device)
    return (positions * (idx != pad_id)).argmax(-1)


class GPTClassifier(nn.Module):
    """A GPT with a linear score head (no bias) on the hidden state of each row's last non-pad token.

    label_names: the class names by id (None: the labels are integer ids); max_len: the truncation
    the classifier was trained with (None: the model's n_positions), saved and used by evaluation."""

    def __init__(
        self,
        gpt: GPT,
        num_labels: int,
        pad_id: int,
        label_names: list[str] | None = None,
        max_len: int | None = None,
    ):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"GPTClassifier: num_labels {num_labels}: a classifier needs at least 2 labels")
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"GPTClassifier: {len(label_names)} label names for {num_labels} labels")
        if not 0 <= pad_id < gpt.config.vocab_size:
            raise ValueError(
                f"GPTClassifier: pad_id {pad_id} is outside the vocabulary (0..{gpt.config.vocab_size - 1})"
            )
        if max_len is not None and not 1 <= max_len <= gpt.config.n_positions:
            raise ValueError(
                f"GPTClassifier: max_len {max_len} must be between 1 and n_positions {gpt.config.n_positions}"
            )
        self.gpt = gpt
        self.num_labels, self.pad_id, self.label_names, self.max_len = num_labels, pad_id, label_names, max_len
        param = next(gpt.parameters())
        self.score = nn.Linear(gpt.config.n_embd, num_labels, bias=False, device=param.device, dtype=param.dtype)
        nn.init.normal_(self.score.weight, std=0.02)  # HF's initializer_range

    def forward(
        self, idx: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx [B, T] right-padded with pad_id -> (logits [B, num_labels], mean cross-entropy against
        labels [B] or None)."""
        hidden = self.gpt.hidden_states(idx)
        pooled = hidden[torch.arange(idx.shape[0], device=idx.device), last_token_index(idx, self.pad_id)]
        logits = F.linear(pooled, self.score.weight)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss

    def label_ids(self, data: ClassificationData) -> list[int]:
        """data's labels as class ids; ValueError naming file:line for a label the classifier lacks."""
        names = {name: i for i, name in enumerate(self.label_names or [])}
        ids = []
        for label, line in zip(data.labels, data.lines):
            where = f"{data.source}:{line}"
            if self.label_names is None and isinstance(label, str):
                raise ValueError(
                    f"{where}: label {label!r} is a name; this classifier's labels are ids 0..{self.num_labels - 1}"
                )
            if self.label_names is None and label >= self.num_labels:
                raise ValueError(f"{where}: label {label} is not one of this classifier's ids 0..{self.num_labels - 1}")
            if self.label_names is not None and label not in names:
                raise ValueError(
                    f"{where}: label {label!r} is not one of this classifier's labels ({', '.join(self.label_names)})"
                )
            ids.append(label if self.label_names is None else names[label])
        return ids


def encode_texts(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each text, cut to its first max_len tokens; ValueError for a text of no tokens."""
    ids = tokenizer.encode_batch(texts)
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"text {i} ({texts[i][:40]!r}) encodes to no tokens")
    return [row[:max_len] for row in ids]


def _padded(rows: list[list[int]], pad_id: int, device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


@torch.no_grad()
def _evaluate_ids(classifier: GPTClassifier, ids: list[list[int]], labels: list[int], batch_size: int) -> dict:
    was_training = classifier.training
    classifier.eval()
    device = classifier.score.weight.device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    correct, loss_sum = 0, 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        target = torch.tensor([labels[i] for i in batch], device=device)
        logits, _ = classifier(_padded([ids[i] for i in batch], classifier.pad_id, device))
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    classifier.train(was_training)
    return {"accuracy": correct / len(ids), "loss": loss_sum / len(ids), "n": len(ids)}


def evaluate_classifier(
    classifier: GPTClassifier,
    texts: list[str],
    labels: list[int],
    tokenizer,
    batch_size: int = 32,
    max_len: int | None = None,
) -> dict:
    """{"accuracy", "loss" (mean cross-entropy, nats), "n"} of classifier on texts with class ids
    `labels` (GPTClassifier.label_ids maps a file's labels). max_len: tokens kept of each text
    (default: the classifier's max_len, else the model's n_positions)."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"evaluate_classifier: {len(texts)} texts and {len(labels)} labels (need as many, at least 1)")
    if batch_size < 1:
        raise ValueError(f"evaluate_classifier: batch_size {batch_size} must be at least 1")
    bad = next((y for y in labels if not 0 <= y < classifier.num_labels), None)
    if bad is not None:
        raise ValueError(f"evaluate_classifier: label id {bad} is outside 0..{classifier.num_labels - 1}")
    max_len = _max_len(classifier.gpt, max_len or classifier.max_len)
    return _evaluate_ids(classifier, encode_texts(tokenizer, texts, max_len), labels, batch_size)


def _max_len(gpt: GPT, max_len: int | None) -> int:
    n_positions = gpt.config.n_positions
    if max_len is None:
        return n_positions
    if not 1 <= max_len <= n_positions:
        raise ValueError(f"max_len {max_len} must be between 1 and the model's n_positions {n_positions}")
    return max_len


@dataclass
class FinetuneResult:
    classifier: GPTClassifier
    history: list[dict]  # per epoch: epoch, train_loss, lr (at the epoch's end), valid_accuracy, valid_loss
    kept_epoch: int  # the epoch whose weights the classifier holds (1-based)


def finetune_classifier(
    gpt: GPT,
    tokenizer,
    train: ClassificationData,
    valid: ClassificationData | None = None,
    *,
    epochs: int = 3,
    lr: float = 5e-5,
    min_lr: float = 0.0,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    batch_size: int = 16,
    max_len: int | None = None,
    grad_clip: float = 1.0,
    dropout: float | None = None,
    seed: int = 0,
    keep: str = "best",
    pad_id: int | None = None,
    lora=None,
    checkpoints=None,
    log=None,
) -> FinetuneResult:
    """Train a GPTClassifier on `train`: the GPT and a new head, AdamW (no decay on biases and norms),
    `warmup` (a fraction of all steps) of linear warmup then cosine decay to min_lr, gradient
    clipping, shuffled batches from `seed`. After each epoch, evaluates on `valid` when given.
    keep "best": the epoch of the best validation accuracy (ties: lower loss), "last" (or without
    valid): the last epoch. pad_id: the tokenizer's pad token, else its eod token. max_len: tokens
    kept of each text (default the model's n_positions). dropout: sets the GPT's hidden and attention
    dropout (None: as configured). lora: a LoRAConfig to train low-rank adapters (and the head) on
    the frozen GPT instead of the whole GPT. checkpoints: a folder to write a checkpoint to after
    each epoch (the weights, optimizer, loss scaler, schedule position, data order, RNG states and
    history, in gptcore.checkpoint's step folders, the newest kept); given a folder that holds one,
    the run resumes after its epoch, exactly (same arguments, same GPT to start from). log(str)
    hears a line an epoch (after that epoch's checkpoint).

    The GPT trains where it is (device, dtype) and is changed in place."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"finetune_classifier: epochs ({epochs}) and batch_size ({batch_size}) must be at least 1")
    if keep not in ("best", "last"):
        raise ValueError(f"finetune_classifier: keep {keep!r} is not 'best' or 'last'")
    if not 0.0 <= warmup <= 1.0:
        raise ValueError(f"finetune_classifier: warmup {warmup} is a fraction of the steps, in [0, 1]")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"finetune_classifier: dropout {dropout} must be in [0, 1)")
    if pad_id is None:
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eod_id
    if pad_id is None:
        raise ValueError(f"tokenizer {tokenizer.name} has no pad or eod token; give pad_id")
    if tokenizer.vocab_size > gpt.config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name}: vocabulary {tokenizer.vocab_size} is larger than the model's"
            f" {gpt.config.vocab_size}"
        )
    max_len = _max_len(gpt, max_len)
    label_names = sorted(set(train.labels)) if train.named else None
    if label_names is None:  # ids: as many rows as the largest id needs, the validation set's included
        more = [y for y in valid.labels if isinstance(y, int)] if valid is not None else []
        num_labels = 1 + max(train.labels + more)
    else:
        num_labels = len(label_names)
    if len(set(train.labels)) < 2:
        raise ValueError(f"{train.source}: every example has label {train.labels[0]!r}; a classifier needs two or more")
    torch.manual_seed(seed)
    classifier = GPTClassifier(gpt, num_labels, pad_id, label_names, max_len)
    train_ids = encode_texts(tokenizer, train.texts, max_len)
    train_labels = classifier.label_ids(train)
    if valid is not None:
        valid_ids, valid_labels = encode_texts(tokenizer, valid.texts, max_len), classifier.label_ids(valid)
    # The data checked out: only now change the GPT.
    if dropout is not None:  # the blocks read the GPT's one config object as they run
        gpt.config.dropout = gpt.config.attn_dropout = dropout
    if lora is not None:
        apply_lora(gpt, lora, seed=seed)  # freezes the GPT, not the head

    # The trainer's step: grad norm and clipping, the lr schedule, the fused AdamW update, and its
    # precision handling (float32 grad accumulation for half params, fp16 loss scaling).
    params = [p for p in classifier.parameters() if p.requires_grad]
    dtype = classifier.score.weight.dtype
    if dtype != torch.float32:
        accumulate_in_fp32(classifier)
    grads = LocalGradients(classifier)
    optimizer = grads.make_optimizer(decay_groups(params, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(train_ids) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(warmup * total_steps)
    step = OptimizerStep(
        optimizer, loss_scaler(dtype), lambda n: lr_at(n, lr, min_lr, warmup_steps, total_steps), grad_clip, grads
    )
    device = classifier.score.weight.device
    order = torch.Generator().manual_seed(seed)
    history, best, kept_epoch, kept_state, updates = [], None, epochs, None, 0

    def loss_of(batch):
        return classifier(*batch)[1]

    resume = find_checkpoint(checkpoints, log) if checkpoints is not None else None
    first_epoch = 1
    if resume is not None:
        saved = _load_epoch(resume, classifier, step, order)
        history, best, kept_epoch, updates = saved["history"], saved["best"], saved["kept_epoch"], saved["updates"]
        kept_state = saved["kept_state"]
        first_epoch = saved["epoch"] + 1
        if log is not None:
            log(f"resumed from {resume} after epoch {saved['epoch']}")
    classifier.train()
    for epoch in range(first_epoch, epochs + 1):
        loss_sum = 0.0
        for batch in torch.randperm(len(train_ids), generator=order).split(batch_size):
            idx = _padded([train_ids[i] for i in batch], pad_id, device)
            target = torch.tensor([train_labels[i] for i in batch], device=device)
            n = len(batch)  # one micro batch of n examples, each counted once in the mean loss
            out = step(functools.partial(forward_backward, loss_of, [(idx, target)], [n], n, grads=grads), updates)
            updates += not out["skipped"]
            loss_sum += out["loss"] * n
        record = {"epoch": epoch, "train_loss": loss_sum / len(train_ids), "lr": out["lr"]}
        if valid is not None:
            result = _evaluate_ids(classifier, valid_ids, valid_labels, batch_size)
            record |= {"valid_accuracy": result["accuracy"], "valid_loss": result["loss"]}
            score = (result["accuracy"], -result["loss"])
            if keep == "best" and (best is None or score > best):
                best, kept_epoch = score, epoch
                kept_state = {id(p): p.detach().clone() for p in params}
        history.append(record)
        if checkpoints is not None:
            progress = {"epoch": epoch, "updates": updates, "history": history, "best": best, "kept_epoch": kept_epoch}
            _save_epoch(checkpoints, epoch * steps_per_epoch, classifier, step, order, progress, kept_state)
        if log is not None:
            log(_epoch_line(record))
    if kept_state is not None and kept_epoch != epochs:
        with torch.no_grad():
            for p in params:
                p.copy_(kept_state[id(p)])
    classifier.eval()
    return FinetuneResult(classifier, history, kept_epoch)


def _save_epoch(save, number: int, classifier, step: OptimizerStep, order, progress: dict, kept_state) -> Path:
    """An epoch's checkpoint: the weights (and keep="best"'s kept ones) as safetensors, the rest as
    the trainer's state file holds it (optimizer, loss scaler, RNG states), plus the data order."""
    names = {id(p): name for name, p in classifier.named_parameters()}

    def write(folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}, folder / STATE_FILE)
        if kept_state is not None:
            save_file({names[i]: v.cpu().contiguous() for i, v in kept_state.items()}, folder / KEPT_FILE)
        state = {
            **progress,
            "optimizer": step.optimizer.state_dict(),
            "scaler": step.scaler.state_dict(),
            "rng": rng_state(),
            "order": order.get_state(),
        }
        save_trainer_state(state, folder)

    return write_checkpoint(save, number, write, keep_last=1)


def _load_epoch(folder: Path, classifier, step: OptimizerStep, order) -> dict:
    """Restore what _save_epoch wrote; returns its progress with "kept_state" (by parameter id)."""
    device = classifier.score.weight.device
    classifier.load_state_dict(load_file(folder / STATE_FILE, device=str(device)))
    state = load_trainer_state(folder)
    step.optimizer.load_state_dict(state["optimizer"])
    step.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    order.set_state(state["order"])
    kept = None
    if (folder / KEPT_FILE).is_file():
        params = dict(classifier.named_parameters())
        kept = {id(params[name]): v for name, v in load_file(folder / KEPT_FILE, device=str(device)).items()}
    return {**state, "kept_state": kept}


def _epoch_line(record: dict) -> str:
    line = f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, lr {record['lr']:.3g}"
    if "valid_accuracy" in record:
        line += f", valid accuracy {record['valid_accuracy']:.4f}, valid loss {record['valid_loss']:.4f}"
    return line


def tokenizer_source(tokenizer) -> dict[str, Path]:
    """The files a tokenizer was loaded from (``Tokenizer.files``), by the names a tokenizer folder gives them."""
    files = getattr(tokenizer, "files", None)
    if not files or not all(Path(p).is_file() for p in files.values()):
        raise ValueError(f"tokenizer {tokenizer.name}: cannot tell which file it came from; save it by path")
    return files


def save_classifier(classifier: GPTClassifier, directory, tokenizer=None) -> Path:
    """Write the classifier folder (module docstring); tokenizer (a Tokenizer or a path) is copied
    into tokenizer/. LoRA adapters are merged into the GPT's weights first (in place:
    merge_and_unload), so the model file is a plain GPT. Returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gpt = classifier.gpt
    if any(isinstance(m, LoRALinear) for m in gpt.modules()):
        merge_and_unload(gpt)
    save_model(gpt, directory / MODEL_FILE)
    save_file({"score.weight": classifier.score.weight.detach().cpu().contiguous()}, directory / HEAD_FILE)
    meta = {
        "num_labels": classifier.num_labels,
        "pad_id": classifier.pad_id,
        "label_names": classifier.label_names,
        "max_len": classifier.max_len,
    }
    (directory / CLASSIFIER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        if not isinstance(tokenizer, str | Path):
            tokenizer_source(tokenizer)  # a tokenizer made in memory has no files to copy: say so
        copy_tokenizer(tokenizer, directory / TOKENIZER_DIR)
    return directory


def load_classifier(directory, device: str = "auto", dtype: str = "auto"):
    """(classifier in eval mode, tokenizer or None) from a folder save_classifier wrote; device and
    dtype as in gptcore.checkpoint.load_for_inference."""

    directory = Path(directory)
    if not (directory / CLASSIFIER_FILE).is_file():
        what = "no such folder" if not directory.exists() else f"not a classifier folder (no {CLASSIFIER_FILE})"
        raise FileNotFoundError(f"{directory}: {what}")
    meta = json.loads((directory / CLASSIFIER_FILE).read_text())
    gpt, tokenizer = load_for_inference(directory / MODEL_FILE, device=device, dtype=dtype)
    classifier = GPTClassifier(gpt, meta["num_labels"], meta["pad_id"], meta["label_names"], meta["max_len"])
    head = load_file(directory / HEAD_FILE)
    with torch.no_grad():
        classifier.score.weight.copy_(head["score.weight"])
    return classifier.eval(), tokenizer


__all__ = [
    "ClassificationData",
    "FinetuneResult",
    "GPTClassifier",
    "encode_texts",
    "evaluate_classifier",
    "finetune_classifier",
    "last_token_index",
    "load_classification_data",
    "load_classifier",
    "save_classifier",
    "tokenizer_source",
]
