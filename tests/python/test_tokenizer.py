"""Tokenizers: SentencePiece training and round trips on English and Chinese text, the GPT-2 BPE and
tokenizer.json loaders against the `tokenizers` objects they come from, errors, the CLI, the default corpus."""

import json
import os
import random

import pytest

from gptcore import cli
from gptcore.data import (
    HFTokenizer,
    SentencePieceTokenizer,
    default_corpus,
    default_corpus_jsonl,
    iter_documents,
    load_tokenizer,
    train_sentencepiece,
)
from gptcore.data import stdlib_corpus as default_corpus_module

EN_TEXT = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they"
    " you were her she there been one all we their has would when if so no will more out up said what its about"
    " into than them can only other time new some could these two may first then do any like my now over such our"
    " model token train data language text small large fast slow learn read write batch layer weight"
)
ZH_TEXT = (
    "我们 数据 模型 训练 语言 文本 中文 分词 测试 今天 天气 很好 学习 机器 深度 网络 计算 速度 世界 你好 北京 上海"
    " 问题 答案 时间 工作 生活 朋友 城市 国家 的 了 是 在 和 有 也 就 都 不 人 这 个 上 大 来 说 到 能 会 要 好"
)
EN_WORDS, ZH_WORDS = EN_TEXT.split(), ZH_TEXT.split()

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "我们今天在北京学习中文分词，天气很好。",
    "Mixed 中文 and English: 模型 train 了 3 epochs (loss=0.25)。",
    "Emoji 😀🚀 and rare characters: 龘 𝔘 Ωμέγα ÆØÅ ß",
    "  leading spaces,\ttabs,\n\nblank lines\r\nand trailing spaces  ",
    "def f(x):\n    return x ** 2  # indented code\n",
    "",
]


def _corpus_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        en = " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(5, 15))).capitalize() + "."
        zh = "".join(rng.choice(ZH_WORDS) for _ in range(rng.randint(4, 12))) + "。"
        lines.append((en, zh, f"{en} {zh}")[i % 3])
    return lines


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    """The same generated English/Chinese text as a plain text file and as jsonl under "content"."""
    d = tmp_path_factory.mktemp("corpus")
    lines = _corpus_lines(3000)
    (d / "corpus.txt").write_text("\n".join(lines[:1500]) + "\n", encoding="utf-8")
    with open(d / "corpus.jsonl", "w", encoding="utf-8") as f:
        for line in lines[1500:]:
            f.write(json.dumps({"content": line, "id": 0}, ensure_ascii=False) + "\n")
    return d / "corpus.txt", d / "corpus.jsonl"


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_model(request, corpus_files, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("spm") / f"spm_{request.param}"
    model = train_sentencepiece(corpus_files, prefix, 700, request.param, json_keys=("content",))
    return request.param, model


def _assert_round_trips(tok, texts):
    for text in texts:
        ids = tok.encode(text)
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_sentencepiece_round_trips_english_and_chinese(sp_model):
    model_type, model = sp_model
    assert model.name == f"spm_{model_type}.model" and model.with_suffix(".vocab").is_file()
    assert not list(model.parent.glob(".*tmp*"))
    tok = load_tokenizer(model)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.vocab_size, tok.eod_id, tok.pad_id) == (700, 2, 3)
    _assert_round_trips(tok, SAMPLES)
    # learned Chinese words compress; the control symbols decode to nothing
    assert len(tok.encode("我们今天学习中文")) < len("我们今天学习中文")
    assert tok.decode(tok.encode(SAMPLES[1]) + [tok.eod_id, tok.pad_id]) == SAMPLES[1]


def test_sentencepiece_byte_fallback_for_rare_characters(sp_model):
    tok = load_tokenizer(sp_model[1])
    for rare in ("龘", "😀", "𝔘"):
        pieces = [tok.backend.id_to_piece(i) for i in tok.encode(rare)]
        assert pieces and all(p.startswith("<0x") for p in pieces), pieces
        assert len(pieces) == len(rare.encode("utf-8"))
    assert tok.encode("J") == [tok.backend.piece_to_id("J")]  # printable ASCII is always a piece


def test_sentencepiece_training_is_repeatable(corpus_files, tmp_path):
    def pieces(model):
        sp = load_tokenizer(model).backend
        return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]

    a, b = (train_sentencepiece(corpus_files, tmp_path / d / "m", 700, json_keys=("content",)) for d in "ab")
    assert pieces(a) == pieces(b)


def test_sentencepiece_without_byte_fallback_maps_rare_characters_to_unk(corpus_files, tmp_path):
    model = train_sentencepiece(corpus_files[:1], tmp_path / "nofb", 300, "bpe", byte_fallback=False)
    tok = load_tokenizer(model)
    assert tok.encode("龘") == [0]
    assert tok.decode(tok.encode("我们 model")) == "我们 model"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_on_tinyshakespeare(shared_data, tmp_path, model_type):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    model = train_sentencepiece(
        [shared_data / "tinyshakespeare.txt"], tmp_path / "ts", 1000, model_type, input_sentence_size=10_000
    )
    tok = load_tokenizer(model)
    passage = text[:4000]
    ids = tok.encode(passage)
    assert tok.decode(ids) == passage
    assert len(passage) / len(ids) > 2.0
    _assert_round_trips(tok, SAMPLES)


@pytest.fixture(scope="module")
def byte_level_bpe(corpus_files, tmp_path_factory):
    """A tiny GPT-2 style byte-level BPE trained with `tokenizers`, saved both ways."""
    from tokenizers import ByteLevelBPETokenizer

    hf = ByteLevelBPETokenizer()
    hf.train([str(corpus_files[0])], vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False)
    d = tmp_path_factory.mktemp("gpt2")
    hf.save_model(str(d))
    hf.save(str(d / "tokenizer.json"))
    return hf, d


@pytest.mark.parametrize("how", ["dir", "pair", "vocab_file", "merges_file"])
def test_gpt2_bpe_loader_matches_tokenizers(byte_level_bpe, tmp_path, how):
    hf, d = byte_level_bpe
    only_bpe = tmp_path / "bpe"
    only_bpe.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (only_bpe / name).write_bytes((d / name).read_bytes())
    arg = {
        "dir": only_bpe,
        "pair": [only_bpe / "merges.txt", only_bpe / "vocab.json"],
        "vocab_file": only_bpe / "vocab.json",
        "merges_file": str(only_bpe / "merges.txt"),
    }[how]
    tok = load_tokenizer(arg)
    assert isinstance(tok, HFTokenizer) and tok.name.startswith("gpt2-bpe:")
    assert tok.vocab_size == hf.get_vocab_size()
    assert tok.eod_id == hf.token_to_id("<|endoftext|>") == 0
    assert tok.pad_id is None
    for text in SAMPLES:
        assert tok.encode(text) == hf.encode(text).ids
        assert tok.decode(tok.encode(text)) == text == hf.decode(hf.encode(text).ids)
    assert tok.encode("a<|endoftext|>b") == tok.encode("a") + [tok.eod_id] + tok.encode("b")
    assert tok.decode([tok.eod_id]) == "<|endoftext|>"


def test_tokenizer_json_loader_matches_tokenizers(byte_level_bpe):
    hf, d = byte_level_bpe
    for arg in (d, d / "tokenizer.json"):  # a directory with all three files prefers tokenizer.json
        tok = load_tokenizer(arg)
        assert isinstance(tok, HFTokenizer) and tok.name.startswith("hf:")
        assert (tok.vocab_size, tok.eod_id, tok.pad_id) == (hf.get_vocab_size(), 0, None)
        for text in SAMPLES:
            assert tok.encode(text) == hf.encode(text).ids
        _assert_round_trips(tok, SAMPLES)


def test_tokenizer_json_pad_token_and_no_special_tokens_added(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<pad>", "</s>"])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 4)])
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert (tok.vocab_size, tok.eod_id, tok.pad_id) == (5, 4, 3)
    assert tok.encode("hello world") == [1, 2]


def test_sentencepiece_directory_and_name(sp_model, tmp_path):
    (tmp_path / "m.model").write_bytes(sp_model[1].read_bytes())
    tok = load_tokenizer(tmp_path)
    assert tok.name == f"sentencepiece:{tmp_path / 'm.model'}"
    assert "vocab_size=700" in repr(tok)


def test_empty_vocabularies_are_errors(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=r"vocab\.json.*empty"):
        load_tokenizer(tmp_path)
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.model"):
        load_tokenizer(tmp_path / "empty.model")
    (tmp_path / "tokenizer.json").write_text("")
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_missing_and_unknown_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.model"):
        load_tokenizer(tmp_path / "absent.model")
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
        load_tokenizer(tmp_path / "vocab.json")
    with pytest.raises(ValueError, match=r"no tokenizer found"):
        load_tokenizer(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"weights\.bin: unknown tokenizer format"):
        load_tokenizer(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="vocab .json and a merges .txt"):
        load_tokenizer([tmp_path / "vocab.json"])


def test_training_input_errors(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"blank\.txt.*no text"):
        train_sentencepiece([tmp_path / "blank.txt"], tmp_path / "m", 300)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no string under any of the keys \['text'\]"):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt"):
        train_sentencepiece([tmp_path / "nothing.txt"], tmp_path / "m", 300)
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece([tmp_path / "blank.txt"], tmp_path / "m", 300, "wordpiece")
    assert not list(tmp_path.glob("*m.*"))


def test_long_unspaced_lines_reach_training_in_pieces():
    from gptcore.data.tokenizer import _training_sentences

    line = "".join(random.Random(1).choice(ZH_WORDS) for _ in range(2000))  # ~9 KB of Chinese, no spaces
    pieces = list(_training_sentences(["short\n\n  \n" + line], max_bytes=4192))
    assert pieces[0] == "short" and "".join(pieces[1:]) == line
    assert all(len(p.encode("utf-8")) <= 4192 for p in pieces) and len(pieces) == 4


def test_cli_tokenizer_train(corpus_files, tmp_path, capsys):
    prefix = tmp_path / "out" / "tok"
    argv = ["tokenizer", "train", "--input", str(corpus_files[1]), "--model-prefix", str(prefix)]
    argv += ["--model-type", "unigram", "--json-keys", "content"]
    assert cli.main(argv + ["--vocab-size", "500"]) == 0
    assert "vocab size 500, eod id 2, pad id 3" in capsys.readouterr().out
    _assert_round_trips(load_tokenizer(f"{prefix}.model"), SAMPLES)

    assert cli.main(argv + ["--vocab-size", "400", "--no-byte-fallback"]) == 0
    assert load_tokenizer(f"{prefix}.model").encode("龘") == [0]
    with pytest.raises(SystemExit):
        cli.main(["tokenizer", "train", "--model-prefix", str(prefix), "--vocab-size", "9", "--model-type", "wp"])


def test_split_document_keeps_text_and_cuts_between_top_level_blocks():
    text = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(100))
    chunks = default_corpus_module.split_document(text, max_chars=200)
    assert "".join(chunks) == text
    assert all(len(c) <= 200 and c.startswith("def ") for c in chunks)
    assert default_corpus_module.split_document("x" * 500, max_chars=100) == ["x" * 500]


def test_default_corpus_is_deterministic(tmp_path):
    sources = default_corpus_module.stdlib_sources()
    assert not any({"test", "tests", "site-packages"} & set(f.relative_to(sources.root).parts) for f in sources.files)
    a = default_corpus_module.write_corpus(sources, tmp_path / "a")
    b = default_corpus_module.write_corpus(default_corpus_module.stdlib_sources(), tmp_path / "b")
    assert a == b and a["files"] > 100 and a["bytes"] > 1_000_000 and a["skipped_tests"] > 0
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() == (tmp_path / "b" / "corpus.jsonl").read_bytes()
    assert sources.key() == default_corpus_module.stdlib_sources().key()
    with open(tmp_path / "a" / "corpus.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == a["documents"]
    assert [r["source"] for r in records] == sorted(r["source"] for r in records)
    assert any(r["source"] == "json/__init__.py" and "JSON (JavaScript Object Notation)" in r["text"] for r in records)


def test_default_corpus_builds_once_and_round_trips_a_docstring(tmp_path, monkeypatch):
    import json as json_module

    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path))
    jsonl, model = default_corpus(vocab_size=2000)
    assert jsonl.parent.parent == tmp_path / "default_corpus" and model.parent == jsonl.parent
    stamps = {p: p.stat().st_mtime_ns for p in (jsonl, model, jsonl.parent / "manifest.json")}
    assert default_corpus(vocab_size=2000) == (jsonl, model)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert not list(jsonl.parent.glob(".*tmp*"))

    tok = load_tokenizer(model)
    assert (tok.vocab_size, tok.eod_id, tok.pad_id) == (2000, 2, 3)
    doc = json_module.__doc__
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc and len(doc) / len(ids) > 2.0
    _assert_round_trips(tok, SAMPLES)

    # an interrupted build (temporaries, no corpus.jsonl) does not count; a new key builds a new directory
    os.remove(jsonl)
    (jsonl.parent / ".corpus.jsonl.tmp1").write_text("{")
    assert default_corpus_jsonl() == jsonl and jsonl.stat().st_size > 1_000_000
    monkeypatch.setattr(default_corpus_module, "RECIPE_VERSION", default_corpus_module.RECIPE_VERSION + 1)
    assert default_corpus_jsonl().parent != jsonl.parent


def test_cli_tokenizer_train_defaults_to_the_default_corpus(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    argv = ["tokenizer", "train", "--model-prefix", str(tmp_path / "std"), "--vocab-size", "1000"]
    assert cli.main(argv + ["--input-sentence-size", "20000"]) == 0
    assert list((tmp_path / "cache" / "default_corpus").glob("*/corpus.jsonl"))
    tok = load_tokenizer(tmp_path / "std.model")
    assert tok.vocab_size == 1000 and tok.decode(tok.encode("def f(): pass")) == "def f(): pass"
