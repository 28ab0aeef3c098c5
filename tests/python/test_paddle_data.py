"""PaddleNLP's pretraining data (<name>_ids.npy + <name>_idx.npz with lens and docs, as its
create_pretraining_data.py writes them): `gptcore convert paddle-data` writes the same documents,
sentences and tokens as a Megatron dataset (read back with megatron-core's reader), `data_path=` on
the prefix trains on it directly, and damaged files get one line."""

import re

import numpy as np
import pytest

from gptcore import cli
from gptcore.data import IndexedDataset, convert_paddle_data, paddle_prefix
from gptcore.training.config import ConfigError, load_config
from gptcore.training.trainer import Trainer

# Three documents of sentences (token ids); the second has one sentence.
DOCUMENTS = [[[5, 6, 7], [8, 9]], [[10, 11, 12, 13]], [[1], [2, 3], [4, 4, 4, 4, 4]]]


def write_paddle(prefix, documents, dtype=np.uint16, keys=("lens", "sents", "docs")):
    """The two files PaddleNLP's create_pretraining_data.py writes (lens int32, sents and docs int64)."""
    sentences = [s for doc in documents for s in doc]
    ids = np.array([t for s in sentences for t in s], dtype=dtype)
    lens = np.array([len(s) for s in sentences], dtype=np.int32)
    arrays = {
        "lens": lens,
        "sents": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        "docs": np.concatenate([[0], np.cumsum([len(d) for d in documents])]).astype(np.int64),
    }
    np.save(f"{prefix}_ids.npy", ids)
    np.savez(f"{prefix}_idx.npz", **{k: arrays[k] for k in keys})


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_convert_paddle_data_exactly(tmp_path, dtype):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronDataset

    write_paddle(tmp_path / "gpt_en_dataset_300m", DOCUMENTS, dtype)
    out = tmp_path / "out" / "gpt_en_text_document"
    argv = ["convert", "paddle-data", "--input", str(tmp_path / "gpt_en_dataset_300m"), "--output-prefix", str(out)]
    assert cli.main(argv) == 0

    data = MegatronDataset(str(out))
    assert data.index.dtype == dtype
    assert data.document_indices.tolist() == [0, 2, 3, 6]
    for d, document in enumerate(DOCUMENTS):
        first = data.document_indices[d]
        assert [data[first + i].tolist() for i in range(len(document))] == document
    ours = IndexedDataset(out)
    assert ours.tokens.tolist() == [t for doc in DOCUMENTS for s in doc for t in s]


def test_either_file_names_the_prefix(tmp_path):
    write_paddle(tmp_path / "d", DOCUMENTS)
    assert paddle_prefix(tmp_path / "d_ids.npy") == paddle_prefix(tmp_path / "d_idx.npz") == str(tmp_path / "d")
    assert paddle_prefix(tmp_path / "missing") is None
    stats = convert_paddle_data(tmp_path / "d", tmp_path / "m")
    assert (stats["documents"], stats["sequences"], stats["tokens"]) == (3, 6, 17)


def broken(tmp_path, what):
    prefix = tmp_path / "bad"
    if what == "no docs":
        write_paddle(prefix, DOCUMENTS, keys=("lens", "sents"))
    elif what == "short ids":
        write_paddle(prefix, DOCUMENTS)
        np.save(f"{prefix}_ids.npy", np.arange(5, dtype=np.uint16))
    elif what == "bad docs":
        write_paddle(prefix, DOCUMENTS)
        np.savez(f"{prefix}_idx.npz", lens=np.array([3, 2, 4, 1, 2, 5], np.int32), docs=np.array([0, 2, 9]))
    elif what == "not npz":
        write_paddle(prefix, DOCUMENTS)
        (tmp_path / "bad_idx.npz").write_bytes(b"not a zip")
    return prefix


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("no docs", "no docs array"),
        ("short ids", "lens add up to 17 tokens but"),
        ("bad docs", "docs must rise from 0 to the sentence count 6"),
        ("not npz", "not a numpy .npz archive"),
    ],
)
def test_damaged_paddle_data_one_line(tmp_path, capsys, what, message):
    prefix = broken(tmp_path, what)
    assert cli.main(["convert", "paddle-data", "--input", str(prefix), "--output-prefix", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.idx").exists()


@pytest.fixture
def bpe(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["paddle data for gptcore"] * 10, vocab_size=300, special_tokens=["<|endoftext|>"])
    tok.save_model(str(tmp_path))
    return tmp_path / "vocab.json"


def test_data_path_on_a_paddle_prefix_trains(tmp_path, monkeypatch, bpe):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    documents = [[rng.integers(0, 256, n).tolist() for n in (7, 9, 12)] for _ in range(40)]
    write_paddle(tmp_path / "gpt_en_dataset_300m", documents)
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
        "data_path": str(tmp_path / "gpt_en_dataset_300m"),
        "tokenizer": str(bpe),
    }
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    trainer.train()
    converted = list((tmp_path / "cache" / "paddle").glob("gpt_en_dataset_300m-*.idx"))
    assert len(converted) == 1
    data = IndexedDataset(str(converted[0]).removesuffix(".idx"))
    assert data.num_documents == 40 and len(data) == 120
    assert data.tokens.tolist() == [t for doc in documents for s in doc for t in s]

    cfg["data_path"] = str(broken(tmp_path, "no docs"))
    with pytest.raises(ConfigError, match="data_path: .*no docs array"):
        Trainer(load_config(None, cfg), log=lambda line: None)


def test_data_path_on_a_folder_names_the_prefixes(tmp_path, bpe):
    (tmp_path / "data").mkdir()
    write_paddle(tmp_path / "data" / "gpt_en_dataset_300m", DOCUMENTS)
    cfg = {"model": "tiny", "device": "cpu", "data_path": str(tmp_path / "data"), "tokenizer": str(bpe)}
    expected = f"is a folder; name the dataset prefix in it: data_path='{tmp_path / 'data' / 'gpt_en_dataset_300m'}'"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Trainer(load_config(None, cfg), log=lambda line: None)
