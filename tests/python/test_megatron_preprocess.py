"""Megatron-LM's preprocess command as its users type it: `--tokenizer-type GPT2BPETokenizer --vocab-file
gpt2-vocab.json --merge-file gpt2-merges.txt --append-eod --workers 8`, read back with megatron-core's own
reader, compared with HF's GPT2TokenizerFast and, byte for byte, with what megatron-core's builder writes
for Megatron's encoding; SentencePieceTokenizer; a GPT-2 vocab under any name for training; bad flags."""

import json
import shutil

import numpy as np
import pytest

from gptcore import cli
from gptcore.checkpoint import copy_tokenizer
from gptcore.data import load_tokenizer, preprocess, tokenizer_files, train_sentencepiece
from gptcore.training.config import ConfigError, TrainConfig, load_config
from gptcore.training.trainer import Trainer

DOCS = [
    {"text": "hello world, the quick brown fox", "title": "a fox"},
    {"text": "", "title": "an empty text: no tokens, no eod"},
    {"text": "two\n\nlines  with  spaces and ünïcödé 中文", "title": "x"},
    {"text": "a literal <|endoftext|> inside", "title": "the lazy dog"},
]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """A small GPT-2 byte-level BPE saved as Megatron names it: gpt2-vocab.json + gpt2-merges.txt."""
    from tokenizers import ByteLevelBPETokenizer

    d = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    corpus = [d_["text"] + " " + d_["title"] for d_ in DOCS] * 20
    bpe.train_from_iterator(corpus, vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(d), "gpt2")
    return d / "gpt2-vocab.json", d / "gpt2-merges.txt"


def hf_gpt2(vocab, merges, tmp_path):
    """HF transformers' GPT2TokenizerFast on the same files (an independent tokenization)."""
    from transformers import GPT2TokenizerFast

    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copy(vocab, folder / "vocab.json")
    shutil.copy(merges, folder / "merges.txt")
    return GPT2TokenizerFast.from_pretrained(str(folder))


def write_json(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def megatron_reference(prefix, records, key, encode, eod, dtype):
    """What Megatron's tools/preprocess_data.py writes (its Encoder: no sentence split, eod after a
    non-empty document), through megatron-core's own IndexedDatasetBuilder."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for record in records:
        ids = encode(record[key])
        lens = [len(ids)] if ids else []
        if ids:
            ids.append(eod)
            lens[-1] += 1
        builder.add_document(ids, lens)
    builder.finalize(f"{prefix}.idx")


def test_megatron_gpt2_command_reads_in_megatron_core(tmp_path, gpt2_files):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronDataset

    vocab, merges = gpt2_files
    write_json(tmp_path / "X.json", DOCS)
    prefix = tmp_path / "P"
    argv = ["preprocess", "--input", str(tmp_path / "X.json"), "--output-prefix", str(prefix)]
    argv += ["--vocab-file", str(vocab), "--merge-file", str(merges), "--tokenizer-type", "GPT2BPETokenizer"]
    argv += ["--append-eod", "--workers", "2", "--json-keys", "text", "title", "--log-interval", "1"]
    assert cli.main([*argv, "--keep-newlines"]) == 0

    hf = hf_gpt2(vocab, merges, tmp_path)
    eod = hf.convert_tokens_to_ids("<|endoftext|>")
    for key in ("text", "title"):
        ours = MegatronDataset(f"{prefix}_{key}_document")
        assert ours.index.dtype == np.uint16
        assert len(ours.document_indices) == len(DOCS) + 1
        for i, record in enumerate(DOCS):
            expected = hf(record[key]).input_ids
            first, last = ours.document_indices[i], ours.document_indices[i + 1]
            got = [t for s in range(first, last) for t in ours[s].tolist()]
            assert got == (expected + [eod] if expected else [])

        reference = tmp_path / f"reference_{key}"
        megatron_reference(reference, DOCS, key, lambda t: hf(t).input_ids, eod, np.uint16)
        for suffix in (".bin", ".idx"):
            written = (tmp_path / f"P_{key}_document{suffix}").read_bytes()
            assert written == (tmp_path / f"reference_{key}{suffix}").read_bytes()


def test_merges_found_beside_the_vocab(tmp_path, gpt2_files):
    vocab, _ = gpt2_files
    write_json(tmp_path / "X.json", DOCS[:1])
    argv = ["preprocess", "--input", str(tmp_path / "X.json"), "--output-prefix", str(tmp_path / "P")]
    assert cli.main([*argv, "--vocab-file", str(vocab), "--tokenizer-type", "GPT2BPETokenizer", "--workers", "1"]) == 0
    assert (tmp_path / "P_text_document.idx").is_file()


def test_sentencepiece_tokenizer_type(tmp_path):
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronDataset

    write_json(tmp_path / "X.json", DOCS)
    model = train_sentencepiece([tmp_path / "X.json"], tmp_path / "spm", vocab_size=400)
    argv = ["preprocess", "--input", str(tmp_path / "X.json"), "--output-prefix", str(tmp_path / "P")]
    argv += ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(model), "--append-eod"]
    assert cli.main([*argv, "--workers", "2"]) == 0
    sp = spm.SentencePieceProcessor(model_file=str(model))
    data = MegatronDataset(str(tmp_path / "P_text_document"))
    megatron_reference(tmp_path / "ref", DOCS, "text", sp.encode, sp.eos_id(), np.uint16)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"P_text_document{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()
    assert data[0].tolist() == sp.encode(DOCS[0]["text"]) + [sp.eos_id()]


def test_huggingface_tokenizer_type_on_a_local_folder(tmp_path, gpt2_files):
    """megatron-core's HuggingFaceTokenizer encodes as text_to_tokens + tokens_to_ids: no special tokens added."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronDataset
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "hf-model"
    folder.mkdir()
    ByteLevelBPETokenizer(str(gpt2_files[0]), str(gpt2_files[1])).save(str(folder / "tokenizer.json"))
    write_json(tmp_path / "X.json", DOCS)
    argv = ["preprocess", "--input", str(tmp_path / "X.json"), "--output-prefix", str(tmp_path / "P")]
    argv += ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(folder), "--workers", "1"]
    assert cli.main(argv) == 0
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    data = MegatronDataset(str(tmp_path / "P_text_document"))
    for i, record in enumerate(DOCS):
        first, last = data.document_indices[i], data.document_indices[i + 1]
        got = [t for s in range(first, last) for t in data[s].tolist()]
        assert got == hf.convert_tokens_to_ids(hf.tokenize(record["text"]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tokenizer-type", "BertWordPieceCase", "--vocab-file", "v.txt"], "is not supported; use one of"),
        (["--tokenizer-type", "GPT2BPETokenizer"], "needs --vocab-file"),
        (["--tokenizer-type", "SentencePieceTokenizer"], "needs --tokenizer-model"),
        (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "gpt2"], "reads local files only"),
        (["--vocab-file", "VOCAB", "--split-sentences"], "--split-sentences is not supported"),
        (["--vocab-file", "VOCAB"], "needs its merges file"),
    ],
)
def test_bad_megatron_flags_one_line(tmp_path, capsys, gpt2_files, flags, message):
    lonely = tmp_path / "lonely-vocab.json"
    shutil.copy(gpt2_files[0], lonely)
    flags = [str(lonely) if f == "VOCAB" else f for f in flags]
    write_json(tmp_path / "X.json", DOCS[:1])
    argv = ["preprocess", "--input", str(tmp_path / "X.json"), "--output-prefix", str(tmp_path / "P"), *flags]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # usage errors exit 2 through argparse
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_gpt2_vocab_under_any_name(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    for spec in (vocab, merges, vocab.parent, [vocab, merges]):
        tok = load_tokenizer(spec)
        assert tok.files == {"vocab.json": vocab, "merges.txt": merges}
    odd = tmp_path / "my-bpe.json"
    shutil.copy(vocab, odd)
    with pytest.raises(FileNotFoundError, match="merge_file=PATH"):
        tokenizer_files(odd)
    folder = tmp_path / "copied"
    copy_tokenizer([odd, merges], folder)
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]
    assert load_tokenizer(folder).encode("hello fox") == load_tokenizer(vocab).encode("hello fox")


def test_train_config_vocab_and_merge_files(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    odd = tmp_path / "my-bpe.json"
    shutil.copy(vocab, odd)
    both = TrainConfig(data_path="d", vocab_file=str(odd), merge_file=str(merges)).validate()
    assert both.tokenizer_source() == [str(odd), str(merges)]
    assert TrainConfig(data_path="d", tokenizer=str(odd), merge_file=str(merges)).tokenizer_source() == [
        str(odd),
        str(merges),
    ]
    assert TrainConfig(data_path="d", vocab_file=str(vocab)).tokenizer_source() == str(vocab)
    with pytest.raises(ConfigError, match="merge_file is set but"):
        TrainConfig(data_path="d", merge_file=str(merges)).validate()
    with pytest.raises(ConfigError, match="set one, not both"):
        TrainConfig(data_path="d", tokenizer=str(vocab), vocab_file=str(vocab)).validate()


def test_training_on_megatron_vocab_files(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    write_json(tmp_path / "X.json", DOCS * 20)
    stats = preprocess(tmp_path / "X.json", tmp_path / "P", [vocab, merges], append_eod=True, progress=False)
    cfg = {
        "model": "tiny",
        "n_layer": 1,
        "n_embd": 64,
        "n_head": 2,
        "seq_len": 16,
        "micro_batch_size": 2,
        "global_batch_size": 2,
        "train_steps": 2,
        "eval_interval": 0,
        "progress": False,
        "device": "cpu",
        "data_path": stats["outputs"]["text"],
        "vocab_file": str(vocab),
        "merge_file": str(merges),
        "save": str(tmp_path / "ckpt"),
    }
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    assert trainer.tokenizer.vocab_size == load_tokenizer(vocab).vocab_size
    trainer.train()
    copied = next((tmp_path / "ckpt").rglob("tokenizer"))
    assert load_tokenizer(copied).encode("hello fox") == load_tokenizer(vocab).encode("hello fox")
