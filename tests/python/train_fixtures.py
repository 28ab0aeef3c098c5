"""What the training tests share: a small real corpus (dataset + SentencePiece tokenizer, built in
seconds), a tiny CPU training config, and a Trainer that logs nothing. Test modules import them by name."""

import inspect

import pytest

from gptcore.data import preprocess, train_sentencepiece
from gptcore.training import Trainer, load_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(dataset prefix, tokenizer) of ~150 KB of Python source, a 512-piece BPE: seconds to build."""
    root = tmp_path_factory.mktemp("corpus")
    import argparse
    import collections
    import dataclasses
    import json as json_module
    import pathlib

    modules = (argparse, collections, dataclasses, json_module, pathlib, inspect)
    lines = [line for m in modules for line in inspect.getsource(m).splitlines() if line.strip()]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    model = train_sentencepiece([root / "text.txt"], root / "spm", vocab_size=512)
    preprocess([root / "text.txt"], root / "data", model, append_eod=True, progress=False)
    return str(root / "data_text_document"), str(model)


def small(corpus, **overrides) -> dict:
    prefix, tokenizer = corpus
    base = dict(
        model="tiny",
        n_positions=64,
        n_embd=64,
        n_head=2,
        seq_len=32,
        micro_batch_size=2,
        global_batch_size=4,
        train_steps=6,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=2,
        eval_interval=0,
        log_interval=1,
        progress=False,
        device="cpu",
        data_path=prefix,
        tokenizer=tokenizer,
    )
    return base | overrides


def quiet(cfg: dict) -> Trainer:
    return Trainer(load_config(None, cfg), log=lambda line: None)
