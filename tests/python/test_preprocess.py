"""Preprocessing text into Megatron datasets: jsonl keys, text modes, input expansion, byte-identical
output for any worker and partition count, dtypes, bad input (strict/replace/skip), interrupted runs,
the CLI, tinyshakespeare through a SentencePiece model, the cached default dataset."""

import json
from pathlib import Path

import numpy as np
import pytest

from gptcore import cli
from gptcore.data import (
    IndexedDataset,
    Tokenizer,
    default_dataset,
    expand_inputs,
    load_tokenizer,
    preprocess,
    train_sentencepiece,
)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids (shifted by ``offset``), eod after them: exact round trips, picklable."""

    name = "bytes"

    def __init__(self, offset: int = 0, vocab_size: int = 257, fail_on: int | None = None):
        self.offset, self._vocab_size, self.fail_on, self.calls = offset, vocab_size, fail_on, 0

    def encode(self, text):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError(f"tokenizer failed on document {self.calls}")
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - self.offset for i in ids if i != self.eod_id).decode("utf-8")

    @property
    def vocab_size(self):
        return self._vocab_size

    @property
    def eod_id(self):
        return self._vocab_size - 1

    @property
    def pad_id(self):
        return None


TEXTS = [
    "Hello, world!",
    "Zweite Zeile: äöü ß",
    "中文 文本",
    "emoji 😀 and tabs\tinside",
    "x",
    "the last document of the file",
]


def _docs(prefix):
    ds = IndexedDataset(prefix)
    return ds, [ds[i] for i in range(len(ds))]


def _decoded(prefix, tok=None):
    tok = tok or ByteTokenizer()
    return [tok.decode(d) for d in _docs(prefix)[1]]


def _files(prefix):
    return {s: Path(f"{prefix}{s}").read_bytes() for s in (".bin", ".idx")}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("append_eod", [False, True])
def test_jsonl_two_keys_round_trip(tmp_path, append_eod):
    records = [{"text": t, "title": t[:3], "id": i} for i, t in enumerate(TEXTS)]
    src = _write_jsonl(tmp_path / "in.jsonl", records)
    tok = ByteTokenizer()
    stats = preprocess(src, tmp_path / "out", tok, json_keys=("text", "title"), append_eod=append_eod, progress=False)
    assert stats["outputs"] == {"text": f"{tmp_path}/out_text_document", "title": f"{tmp_path}/out_title_document"}
    assert stats["documents"] == len(TEXTS) and stats["replaced"] == stats["skipped"] == 0
    for key, prefix in stats["outputs"].items():
        ds, docs = _docs(prefix)
        assert ds.dtype == np.uint16 and ds.num_documents == len(TEXTS)
        assert [tok.decode(d) for d in docs] == [r[key] for r in records]
        assert all((d[-1] == tok.eod_id) == append_eod for d in docs)
    eods = len(TEXTS) * 2 * append_eod
    assert stats["tokens"] == sum(len(r["text"].encode()) + len(r["title"].encode()) for r in records) + eods


def test_text_line_and_file_modes(tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(("\n".join(TEXTS[:3]) + "\n\n  \r\n").encode())
    b = tmp_path / "b.txt"
    b.write_bytes(("\r\n".join(TEXTS[3:]) + "\r\n").encode())
    preprocess([a, b], tmp_path / "lines", ByteTokenizer(), progress=False)
    assert _decoded(tmp_path / "lines_text_document") == TEXTS
    preprocess([a, b], tmp_path / "files", ByteTokenizer(), text_mode="file", progress=False)
    assert _decoded(tmp_path / "files_text_document") == [a.read_bytes().decode(), b.read_bytes().decode()]


def test_directories_and_globs_expand_in_sorted_order(tmp_path):
    d = tmp_path / "corpus"
    for name, text in [("b/2.txt", "b2"), ("a.txt", "a"), ("b/1.txt", "b1"), ("c.jsonl", None), (".hidden", "h")]:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            _write_jsonl(d / name, [{"text": "c"}])
        else:
            (d / name).write_text(text + "\n")
    assert [p.relative_to(d).as_posix() for p in expand_inputs([d])] == ["a.txt", "b/1.txt", "b/2.txt", "c.jsonl"]
    assert [p.name for p in expand_inputs([f"{d}/b/*.txt", d / "a.txt"])] == ["1.txt", "2.txt", "a.txt"]
    assert [p.name for p in expand_inputs([f"{d}/**/*.txt"])] == ["a.txt", "1.txt", "2.txt"]
    preprocess([d, f"{d}/b/[12].txt"], tmp_path / "out", ByteTokenizer(), progress=False)
    assert _decoded(tmp_path / "out_text_document") == ["a", "b1", "b2", "c", "b1", "b2"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([f"{d}/*.parquet"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_inputs([d / "missing.txt"])


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory):
    """~2000 jsonl documents of varying lengths, in two files."""
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "δέλτα", "中文", "😀", "x"]
    for part in range(2):
        recs = [{"text": " ".join(rng.choice(words, rng.integers(1, 40)))} for _ in range(1000)]
        _write_jsonl(d / f"part{part}.jsonl", recs)
    return d


@pytest.mark.parametrize("workers,partitions", [(2, 1), (1, 3), (2, 3)])
def test_output_is_identical_for_any_workers_and_partitions(tmp_path, many_docs, workers, partitions):
    kw = dict(append_eod=True, progress=False, chunk_bytes=4096)  # many chunks, so order matters
    ref = preprocess([many_docs], tmp_path / "ref", ByteTokenizer(), **kw)
    out = preprocess([many_docs], tmp_path / "out", ByteTokenizer(), workers=workers, partitions=partitions, **kw)
    assert out["documents"] == ref["documents"] == 2000 and out["tokens"] == ref["tokens"]
    assert _files(tmp_path / "out_text_document") == _files(tmp_path / "ref_text_document")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out_text_document.bin",
        "out_text_document.idx",
        "ref_text_document.bin",
        "ref_text_document.idx",
    ]  # partitions' temporaries removed


def test_dtype_follows_the_vocabulary(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    preprocess(src, tmp_path / "small", ByteTokenizer(), append_eod=True, progress=False)
    big = ByteTokenizer(offset=65600, vocab_size=70000)
    preprocess(src, tmp_path / "big", big, append_eod=True, progress=False)
    small_ds, _ = _docs(tmp_path / "small_text_document")
    big_ds, _ = _docs(tmp_path / "big_text_document")
    assert small_ds.dtype == np.uint16 and big_ds.dtype == np.int32
    assert _decoded(tmp_path / "big_text_document", big) == TEXTS
    assert big_ds.tokens.max() == big.eod_id


def test_non_utf8_line_strict_replace_skip(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"good one\nbad \xff\xfe here\ngood two\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not UTF-8 .*--errors replace"):
        preprocess(src, tmp_path / "strict", ByteTokenizer(), progress=False)
    assert not list(tmp_path.glob("strict*"))
    stats = preprocess(src, tmp_path / "rep", ByteTokenizer(), errors="replace", progress=False)
    assert (stats["replaced"], stats["skipped"]) == (1, 0)
    assert _decoded(tmp_path / "rep_text_document") == ["good one", "bad \ufffd\ufffd here", "good two"]
    stats = preprocess(src, tmp_path / "skip", ByteTokenizer(), errors="skip", progress=False)
    assert (stats["replaced"], stats["skipped"]) == (0, 1)
    assert _decoded(tmp_path / "skip_text_document") == ["good one", "good two"]
    with pytest.raises(ValueError, match=r"bad\.txt:2: not UTF-8"):  # file mode still names the line
        preprocess(src, tmp_path / "file", ByteTokenizer(), text_mode="file", progress=False)


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not a JSON line"),
        ('{"title": "x"}', "no key 'text'"),
        ('{"text": 3}', "a int, not a string, under 'text'"),
        ('["text"]', "a JSON list, not an object"),
    ],
)
def test_malformed_json_line(tmp_path, line, message):
    src = tmp_path / "in.jsonl"
    src.write_text(f'{{"text": "one"}}\n{line}\n{{"text": "three"}}\n')
    with pytest.raises(ValueError, match=rf"in\.jsonl:2: {message}.*--errors skip"):
        preprocess(src, tmp_path / "strict", ByteTokenizer(), progress=False)
    for errors in ("replace", "skip"):
        stats = preprocess(src, tmp_path / errors, ByteTokenizer(), errors=errors, progress=False)
        assert (stats["documents"], stats["skipped"], stats["replaced"]) == (2, 1, 0)
        assert _decoded(tmp_path / f"{errors}_text_document") == ["one", "three"]


def test_failure_mid_run_leaves_nothing_complete(tmp_path, many_docs):
    with pytest.raises(RuntimeError, match="document 1500"):
        preprocess([many_docs], tmp_path / "out", ByteTokenizer(fail_on=1500), chunk_bytes=4096, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="document 1500"):
        preprocess(
            [many_docs], tmp_path / "out", ByteTokenizer(fail_on=1500), chunk_bytes=4096, partitions=3, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing_complete(tmp_path, many_docs, monkeypatch):
    class Interrupting(ByteTokenizer):
        def encode(self, text):
            if self.calls == 700:
                raise KeyboardInterrupt
            return super().encode(text)

    with pytest.raises(KeyboardInterrupt):
        preprocess([many_docs], tmp_path / "out", Interrupting(), chunk_bytes=4096, partitions=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\n")
    with pytest.raises(ValueError, match="one json key"):
        preprocess(src, tmp_path / "o", ByteTokenizer(), json_keys=("text", "title"))
    with pytest.raises(ValueError, match="errors must be"):
        preprocess(src, tmp_path / "o", ByteTokenizer(), errors="ignore")
    with pytest.raises(ValueError, match="text_mode"):
        preprocess(src, tmp_path / "o", ByteTokenizer(), text_mode="paragraph")


@pytest.fixture(scope="module")
def small_spm(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    text = d / "train.txt"
    text.write_text("\n".join(f"{t} {i} the quick brown fox" for i, t in enumerate(TEXTS * 50)) + "\n")
    return train_sentencepiece([text], d / "spm", 500)


def test_cli(tmp_path, small_spm, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", [{"text": t, "title": t[:4]} for t in TEXTS])
    argv = ["preprocess", "--input", str(src), "--output-prefix", str(tmp_path / "out"), "--tokenizer", str(small_spm)]
    assert cli.main([*argv, "--json-keys", "text", "title", "--append-eod", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{len(TEXTS)} documents" in out and f"{tmp_path}/out_title_document.bin/.idx" in out
    tok = load_tokenizer(small_spm)
    assert [tok.decode(d) for d in _docs(tmp_path / "out_text_document")[1]] == TEXTS
    with pytest.raises(SystemExit):
        cli.main(["preprocess", "--input", str(src)])


def test_tinyshakespeare(tmp_path, shared_data):
    src = shared_data / "tinyshakespeare.txt"
    model = train_sentencepiece([src], tmp_path / "spm", 500)
    tok = load_tokenizer(model)
    stats = preprocess(src, tmp_path / "ts", model, append_eod=True, workers=2, progress=False)
    ds, docs = _docs(tmp_path / "ts_text_document")
    assert stats["tokens"] == len(ds.tokens) > 0 and ds.dtype == np.uint16
    first = next(line for line in src.read_text().splitlines() if line.strip())
    assert tok.decode(docs[0][:-1]) == first and docs[0][-1] == tok.eod_id
    ds.check_vocab(tok.vocab_size)


def test_default_dataset_is_built_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path))
    prefix, model = default_dataset(vocab_size=2000)
    ds, tok = IndexedDataset(prefix), load_tokenizer(model)
    manifest = json.loads((model.parent / "manifest.json").read_text())
    assert prefix.parent == model.parent and ds.num_documents == manifest["documents"] and ds.dtype == np.uint16
    corpus = model.parent / "corpus.jsonl"
    with open(corpus, encoding="utf-8") as f:
        first = json.loads(f.readline())["text"]
    assert tok.decode(ds[0][:-1]) == first and ds[0][-1] == tok.eod_id
    mtime = prefix.with_suffix(".idx").stat().st_mtime_ns
    assert cli.main(["preprocess", "--vocab-size", "2000"]) == 0
    assert f"{prefix}.bin/.idx" in capsys.readouterr().out
    assert prefix.with_suffix(".idx").stat().st_mtime_ns == mtime
