"""Tokenizers behind one interface, loaded from local files only, and SentencePiece training.

Three formats load, each through the library that defines it:

- GPT-2 byte-level BPE: ``vocab.json`` + ``merges.txt`` (under any names: Megatron's
  ``gpt2-vocab.json`` + ``gpt2-merges.txt``), through ``tokenizers`` (HF);
- SentencePiece: a ``.model`` file, through ``sentencepiece``;
- HF ``tokenizer.json``, through ``tokenizers``.

``encode`` never adds special tokens (no BOS, no EOS, no post-processor template): the data pipeline
appends ``eod_id`` itself. ``eod_id`` and ``pad_id`` are ``None`` when the vocabulary has no such
token; nothing is substituted behind the caller's back (GPT-2, for one, has no pad token: pad with
``eod_id`` and mask those positions out of the loss). A tokenizer whose vocabulary is empty does not
load.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

PathLike = str | os.PathLike

# Names an end-of-document token goes by, in order of preference (GPT-2, Megatron, T5/Llama, Llama 3).
EOD_TOKENS = ("<|endoftext|>", "<eod>", "</s>", "<|end_of_text|>", "<eos>")
PAD_TOKENS = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>")
# Always in a trained vocabulary: coverage 0.9995 otherwise drops letters as common as "J" from code corpora.
_PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))


class Tokenizer(ABC):
    """What the data pipeline needs from a tokenizer. ``decode(encode(t)) == t`` for the formats here
    whenever the vocabulary covers ``t`` (byte-level BPE and byte-fallback SentencePiece cover all text)."""

    name: str
    eod_id: int | None  # appended after each document; None when the vocabulary has no such token
    pad_id: int | None
    files: dict[str, Path]  # the files it was loaded from, by the names a tokenizer folder gives them

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size}, eod_id={self.eod_id})"


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer``: the GPT-2 BPE and ``tokenizer.json`` loaders both end here.
    Special tokens decode to their text (``<|endoftext|>`` stays visible in decoded samples)."""

    def __init__(self, backend, name: str, files: dict[str, Path] | None = None):
        self.backend = backend
        self.name = name
        self.files = files or {}
        if backend.get_vocab_size(with_added_tokens=True) == 0:
            raise ValueError(f"{name}: the vocabulary is empty")
        self.eod_id = _first_id(backend.token_to_id, EOD_TOKENS)
        self.pad_id = _first_id(backend.token_to_id, PAD_TOKENS)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model``. eod is the model's EOS (``</s>`` in the models trained here), else an
    ``<eod>`` piece; pad is the model's pad id. Control symbols (EOS, BOS, pad) decode to nothing."""

    def __init__(self, model_file: PathLike):
        import sentencepiece as spm

        path = _existing_file(model_file)
        self.name = f"sentencepiece:{path}"
        self.files = {path.name: path}
        try:
            self.backend = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from e
        if self.backend.get_piece_size() == 0:
            raise ValueError(f"{path}: the vocabulary is empty")
        sp = self.backend
        self.eod_id = sp.eos_id() if sp.eos_id() >= 0 else _first_id(self._piece_id, ("<eod>",))
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else None

    def _piece_id(self, piece: str) -> int | None:
        i = self.backend.piece_to_id(piece)
        return None if i == self.backend.unk_id() and piece != self.backend.id_to_piece(i) else i

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.backend.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        return self.backend.get_piece_size()


def gpt2_bpe_tokenizer(vocab_file: PathLike, merges_file: PathLike) -> HFTokenizer:
    """GPT-2's byte-level BPE from ``vocab.json`` + ``merges.txt`` (as HF's GPT2TokenizerFast builds it:
    no prefix space, ``<|endoftext|>`` a special token when the vocabulary has it)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    vocab, merges = _existing_file(vocab_file), _existing_file(merges_file)
    try:
        backend = Backend(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"{vocab} + {merges}: not a GPT-2 BPE vocabulary ({e})") from e
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if backend.token_to_id("<|endoftext|>") is not None:
        backend.add_special_tokens(["<|endoftext|>"])
    return HFTokenizer(backend, f"gpt2-bpe:{vocab}", {"vocab.json": vocab, "merges.txt": merges})


def hf_tokenizer(tokenizer_json: PathLike) -> HFTokenizer:
    """An HF ``tokenizer.json``, used as is except that encode adds no special tokens."""
    from tokenizers import Tokenizer as Backend

    path = _existing_file(tokenizer_json)
    try:
        backend = Backend.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not an HF tokenizer.json ({e})") from e
    return HFTokenizer(backend, f"hf:{path}", {"tokenizer.json": path})


def load_tokenizer(path: PathLike | Sequence[PathLike]) -> Tokenizer:
    """Load a tokenizer by its files (see ``tokenizer_files``)."""
    files = tokenizer_files(path)
    if "tokenizer.json" in files:
        return hf_tokenizer(files["tokenizer.json"])
    if "vocab.json" in files:
        return gpt2_bpe_tokenizer(files["vocab.json"], files["merges.txt"])
    return SentencePieceTokenizer(next(iter(files.values())))


def tokenizer_files(path: PathLike | Sequence[PathLike]) -> dict[str, Path]:
    """The files of a tokenizer, by the names a tokenizer folder gives them: ``{"tokenizer.json": p}``,
    ``{"vocab.json": v, "merges.txt": m}`` or ``{"<name>.model": p}``.

    ``path`` is a directory holding ``tokenizer.json`` (preferred), a GPT-2 vocab + merges pair or
    exactly one ``.model``; a ``.model`` file; an HF ``tokenizer.json`` (any name); a GPT-2 vocab
    ``.json`` or merges ``.txt`` (any names: ``gpt2-vocab.json``) with its partner beside it
    (``vocab`` <-> ``merges`` in the name, or the folder's only other such file); or the pair itself.
    """
    if not isinstance(path, str | os.PathLike):
        paths = [Path(p) for p in path]
        by_suffix = {p.suffix: p for p in paths}
        if len(paths) != 2 or set(by_suffix) != {".json", ".txt"}:
            raise ValueError(f"{[str(p) for p in paths]}: expected a vocab .json and a merges .txt")
        return {"vocab.json": _existing_file(by_suffix[".json"]), "merges.txt": _existing_file(by_suffix[".txt"])}

    p = Path(path)
    if p.is_dir():
        models = sorted(p.glob("*.model"))
        if (p / "tokenizer.json").is_file():
            return {"tokenizer.json": p / "tokenizer.json"}
        vocabs = [v for v in sorted(p.glob("*vocab*.json")) if _is_gpt2_vocab(v)]
        if len(vocabs) == 1 and any(p.glob("*merges*.txt")):
            return tokenizer_files(vocabs[0])
        if len(models) == 1:
            return {models[0].name: models[0]}
        raise ValueError(
            f"{p}: no tokenizer found (expected tokenizer.json, a GPT-2 vocab .json + merges .txt, or one .model"
            f" file; found {len(vocabs)} vocab .json and {len(models)} .model files)"
        )
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such tokenizer file or directory")
    if p.suffix == ".model":
        return {p.name: _existing_file(p)}
    if p.suffix == ".txt" or p.suffix == ".json" and _is_gpt2_vocab(p):
        vocab, merges = (p, _partner(p, ".txt")) if p.suffix == ".json" else (_partner(p, ".json"), p)
        return {"vocab.json": vocab, "merges.txt": merges}
    if p.suffix == ".json":
        return {"tokenizer.json": _existing_file(p)}
    raise ValueError(
        f"{p}: unknown tokenizer format (expected .model, tokenizer.json or a GPT-2 vocab .json + merges .txt)"
    )


def _is_gpt2_vocab(path: Path) -> bool:
    """A GPT-2 ``vocab.json``: one JSON object of token -> id (an HF ``tokenizer.json`` has a "model")."""
    if path.name == "vocab.json":
        return True
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
    except (OSError, UnicodeDecodeError):
        return False
    match = re.match(r'\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*(-?\d+)\s*[,}]', head)
    return match is not None


def _partner(path: Path, suffix: str) -> Path:
    """The other file of a GPT-2 vocab + merges pair beside ``path``."""
    want, have = ("merges", "vocab") if suffix == ".txt" else ("vocab", "merges")
    named = path.with_name((path.stem.replace(have, want) if have in path.stem else want) + suffix)
    if named.is_file():
        return named
    others = [f for f in sorted(path.parent.glob(f"*{want}*{suffix}")) if f != path]
    if suffix == ".json":
        others = [f for f in others if _is_gpt2_vocab(f)]
    if len(others) == 1:
        return others[0]
    key, flag = ("merge_file", "--merge-file") if suffix == ".txt" else ("vocab_file", "--vocab-file")
    found = f"{len(others)} candidates beside it" if others else f"no {named.name} beside it"
    raise FileNotFoundError(
        f"{path}: a GPT-2 BPE file needs its {want} file ({found}); name it with {key}=PATH ({flag} PATH)"
    )


def iter_documents(inputs: Iterable[PathLike], json_keys: Sequence[str] = ("text",)) -> Iterator[str]:
    """Documents of text and jsonl files: a ``.jsonl``/``.json`` file holds one JSON object a line and
    gives the string under each of ``json_keys`` that the object has (one at least); any other file
    is plain UTF-8 text, one document a line. Blank lines are skipped."""
    for path in map(Path, inputs):
        path = _existing_file(path)
        is_json = path.suffix in (".jsonl", ".json")
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not is_json:
                    yield line.rstrip("\n")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from e
                texts = [record[k] for k in json_keys if isinstance(record, dict) and isinstance(record.get(k), str)]
                if not texts:
                    raise ValueError(f"{path}:{lineno}: no string under any of the keys {list(json_keys)}")
                yield from texts


def _training_sentences(documents: Iterable[str], max_bytes: int) -> Iterator[str]:
    """SentencePiece learns from "sentences" and drops those over ``max_sentence_length`` bytes:
    documents go in line by line, and unspaced lines (Chinese paragraphs) in pieces of at most ``max_bytes``."""
    for doc in documents:
        for line in doc.split("\n"):
            if not line.strip():
                continue
            while len(line.encode("utf-8")) > max_bytes:
                cut = len(line.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore"))
                yield line[:cut]
                line = line[cut:]
            yield line


def train_sentencepiece(
    inputs: Sequence[PathLike],
    model_prefix: PathLike,
    vocab_size: int,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    json_keys: Sequence[str] = ("text",),
    character_coverage: float = 0.9995,
    input_sentence_size: int = 5_000_000,
    num_threads: int | None = None,
    progress: bool = False,
) -> Path:
    """Train a SentencePiece model on text/jsonl ``inputs`` (see ``iter_documents``) and return
    ``<model_prefix>.model`` (with ``.vocab`` beside it), written only once training succeeded.

    Pieces: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 (the eod), ``<pad>`` 3 as control symbols, ``\\n`` a
    user-defined piece, printable ASCII always present. Text is not normalized (identity rule,
    whitespace kept, no dummy prefix, digits split), so decode(encode(t)) == t; with ``byte_fallback``
    characters outside the vocabulary become UTF-8 byte pieces instead of ``<unk>``.
    ``character_coverage`` 0.9995 keeps the common CJK characters and leaves the rare ones to byte
    fallback; ``input_sentence_size`` caps the lines sampled (SentencePiece holds them in memory).
    The sampling seed is fixed (a process-wide SentencePiece setting): the same inputs give the same
    pieces and scores.
    """
    import sentencepiece as spm
    from tqdm import tqdm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    max_sentence_bytes = 4192
    source = [str(p) for p in inputs]
    documents = tqdm(
        iter_documents(inputs, json_keys), desc="tokenizer training text", unit=" docs", disable=not progress
    )
    sentences = _training_sentences(documents, max_sentence_bytes)
    first = next(sentences, None)
    if first is None:
        raise ValueError(f"{source}: no text to train a tokenizer on")

    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = prefix.with_name(f".{prefix.name}.tmp{os.getpid()}")
    spm.set_random_generator_seed(0)  # sentence sampling; the trainers themselves are deterministic
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], sentences),
            model_prefix=str(tmp_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=byte_fallback,
            character_coverage=character_coverage,
            required_chars=_PRINTABLE_ASCII,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            user_defined_symbols=["\n"],
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=max_sentence_bytes,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=0 if progress else 2,
        )
    except RuntimeError as e:
        for leftover in tmp_prefix.parent.glob(f"{tmp_prefix.name}.*"):
            leftover.unlink()
        raise ValueError(f"SentencePiece training on {source} failed: {e}") from e
    finally:
        documents.close()
    for suffix in (".vocab", ".model"):  # the .model last: its presence marks a finished tokenizer
        os.replace(f"{tmp_prefix}{suffix}", f"{prefix}{suffix}")
    return Path(f"{prefix}.model")


def _existing_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    return p


def _first_id(lookup, tokens: Sequence[str]) -> int | None:
    return next((i for i in map(lookup, tokens) if i is not None), None)
