"""Raw text to Megatron token files: ``<prefix>_<key>_document.bin/.idx``, one dataset per json key.

Inputs are files, directories (every non-hidden file below, in sorted path order) and glob patterns,
taken in the order given. A ``.jsonl``/``.json`` file holds one JSON object a line; any other file is
plain text, one document a line (``text_mode="line"``) or one document a file (``text_mode="file"``);
blank lines and blank files are no documents. Plain text feeds the first json key.

The reading process only splits files into raw lines; decoding, JSON parsing and tokenization happen in
chunks in ``workers`` processes, and the results are written back in input order, so the output is
byte-identical for any worker count and any number of partitions. At most ``2 * workers`` chunks are in
flight: documents are streamed, never all held.

Lines that are not UTF-8, and jsonl lines that are not a JSON object with a string under every key,
raise a ``ValueError`` naming ``file:line`` (``errors="strict"``); ``errors="replace"`` decodes with
U+FFFD and counts the lines it repaired (malformed JSON cannot be repaired and is skipped);
``errors="skip"`` drops such documents. Both counts come back in the stats.

Nothing is written half: the builders write under temporary names and move ``.bin`` then ``.idx``
into place only at the end; any exception, ``KeyboardInterrupt`` included, removes them.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptcore.data.indexed import IndexedDatasetBuilder, best_dtype
from gptcore.data.stdlib_corpus import default_corpus
from gptcore.data.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
JSON_SUFFIXES = (".jsonl", ".json")
CHUNK_BYTES = 1 << 20  # raw input per task: large enough to amortize a round trip to a worker
ERRORS = ("strict", "replace", "skip")
TEXT_MODES = ("line", "file")


def expand_inputs(inputs: Sequence[PathLike]) -> list[Path]:
    """Files in order: a file as is, a directory as its non-hidden files below (sorted by relative
    path), a glob pattern (``*``, ``?``, ``[``; ``**`` recursive) as its sorted matches."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            below = [f for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p))]
            files.extend(sorted(below, key=lambda f: f.relative_to(p).as_posix()))
        elif glob.has_magic(str(item)):
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            files.extend(f for f in matches if f.is_file())
            if not any(f.is_file() for f in matches):
                raise FileNotFoundError(f"{item}: the pattern matches no file")
        else:
            raise FileNotFoundError(f"{p}: no such file, directory or pattern")
    if not files:
        raise FileNotFoundError(f"{[str(i) for i in inputs]}: no input files")
    return files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


@dataclass(frozen=True)
class _Settings:
    json_keys: tuple[str, ...]
    append_eod: bool
    errors: str
    eod_id: int | None
    dtype: np.dtype


@dataclass
class _Chunk:
    """Raw documents for one task: (file, first line number, bytes, is_json) each, all in one partition;
    ``nbytes`` counts the input consumed, blank lines and line ends included."""

    partition: int
    items: list[tuple[str, int, bytes, bool]] = field(default_factory=list)
    nbytes: int = 0


@dataclass
class _Encoded:
    partition: int
    nbytes: int
    tokens: list[np.ndarray]  # per key: the chunk's kept documents, concatenated
    lengths: list[np.ndarray]  # per key: tokens per kept document
    replaced: int
    skipped: int


class _Encoder:
    """Decodes, parses and tokenizes chunks; runs in the caller's process or once per worker."""

    def __init__(self, tokenizer: Tokenizer, settings: _Settings):
        self.tokenizer = tokenizer
        self.s = settings

    def __call__(self, chunk: _Chunk) -> _Encoded:
        keys = self.s.json_keys
        texts: list[list[str]] = [[] for _ in keys]
        replaced = skipped = 0
        for path, lineno, raw, is_json in chunk.items:
            record, fixed = self._parse(path, lineno, raw, is_json)
            if record is None:
                skipped += 1
                continue
            replaced += fixed
            for column, text in zip(texts, record):
                column.append(text)
        tokens, lengths = [], []
        for column in texts:
            ids = self.tokenizer.encode_batch(column) if column else []
            if self.s.append_eod:
                for doc in ids:
                    doc.append(self.s.eod_id)
            lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
            flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths[-1].sum()))
            tokens.append(flat)
        return _Encoded(chunk.partition, chunk.nbytes, tokens, lengths, replaced, skipped)

    def _parse(self, path: str, lineno: int, raw: bytes, is_json: bool) -> tuple[list[str] | None, bool]:
        """(one text per key, whether bytes were replaced), or (None, False) for a skipped document."""
        errors, fixed = self.s.errors, False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if errors == "strict":
                line = lineno + raw.count(b"\n", 0, e.start)
                column = e.start - (raw.rfind(b"\n", 0, e.start) + 1)
                raise ValueError(
                    f"{path}:{line}: not UTF-8 ({e.reason} at byte {column} of the line);"
                    " pass --errors replace (errors='replace') or --errors skip to go on"
                ) from None
            if errors == "skip":
                return None, False
            text, fixed = raw.decode("utf-8", errors="replace"), True
        if not is_json:
            return [text], fixed
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            return self._malformed(f"{path}:{lineno}: not a JSON line ({e})")
        if not isinstance(record, dict):
            return self._malformed(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object")
        for k in self.s.json_keys:
            if not isinstance(record.get(k), str):
                what = "no key" if k not in record else f"a {type(record[k]).__name__}, not a string, under"
                return self._malformed(f"{path}:{lineno}: {what} {k!r}")
        return [record[k] for k in self.s.json_keys], fixed

    def _malformed(self, message: str) -> tuple[None, bool]:
        if self.s.errors == "strict":
            raise ValueError(f"{message}; pass --errors skip (errors='skip') to drop such lines")
        return None, False  # "replace" has nothing to repair in a malformed line: it is skipped


_worker_encoder: _Encoder | None = None


def _init_worker(tokenizer: PathLike | Sequence[PathLike] | Tokenizer, settings: _Settings) -> None:
    global _worker_encoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it cleans up
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    _worker_encoder = _Encoder(tok, settings)


def _encode_in_worker(chunk: _Chunk) -> _Encoded:
    return _worker_encoder(chunk)


def _chunks(files: list[Path], text_mode: str, partitions: int, total_bytes: int, chunk_bytes: int) -> Iterator[_Chunk]:
    """Raw documents in input order, cut into chunks; a document belongs to the partition its first
    byte falls in (partition p holds bytes [p * total / N, (p + 1) * total / N) of the inputs)."""
    offset = 0
    chunk = _Chunk(0)
    for path in files:
        is_json = path.suffix in JSON_SUFFIXES
        with open(path, "rb") as f:
            if text_mode == "file" and not is_json:
                documents = iter([(1, f.read())])
            else:
                documents = ((n, line) for n, line in enumerate(f, 1))
            for lineno, raw in documents:
                partition = min(offset * partitions // max(total_bytes, 1), partitions - 1)
                offset += len(raw)
                if chunk.items and (chunk.partition != partition or chunk.nbytes >= chunk_bytes):
                    yield chunk
                    chunk = _Chunk(partition)
                chunk.nbytes += len(raw)
                if text_mode == "line" or is_json:
                    raw = raw.rstrip(b"\n").removesuffix(b"\r")
                if not raw.strip():
                    continue
                chunk.partition = partition
                chunk.items.append((str(path), lineno, raw, is_json))
    if chunk.items or chunk.nbytes:
        yield chunk


def _encoded_chunks(chunks: Iterator[_Chunk], encoder: _Encoder, tokenizer, settings, workers: int):
    """Encoded chunks in input order, at most ``2 * workers`` in flight."""
    if workers == 1:
        yield from map(encoder, chunks)
        return
    with multiprocessing.Pool(workers, _init_worker, (tokenizer, settings)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _Outputs:
    """The final builders (one per key) and, with partitions, each partition's temporary builders."""

    def __init__(self, prefixes: list[str], dtype: np.dtype, vocab_size: int, partitions: int):
        self.prefixes, self.dtype, self.vocab_size, self.partitions = prefixes, dtype, vocab_size, partitions
        self.finals = [IndexedDatasetBuilder(p, dtype, vocab_size) for p in prefixes]
        self.parts_done: list[list[str]] = []  # temporary prefixes of finished partitions, per partition
        self.partition, self.current = -1, self.finals if partitions == 1 else []

    def builders(self, partition: int) -> list[IndexedDatasetBuilder]:
        if self.partitions > 1 and partition != self.partition:
            self._finish_partition()
            tmp = [self._part_prefix(p, partition) for p in self.prefixes]
            self.current = [IndexedDatasetBuilder(p, self.dtype, self.vocab_size) for p in tmp]
            self.partition = partition
        return self.current

    def _part_prefix(self, prefix: str, partition: int) -> str:
        head, name = os.path.split(prefix)
        return os.path.join(head, f".{name}.part{partition}of{self.partitions}.tmp{os.getpid()}")

    def _finish_partition(self) -> None:
        if self.partitions > 1 and self.current:
            for b in self.current:
                b.finalize()
            self.parts_done.append([b.prefix for b in self.current])
            self.current = []

    def finalize(self) -> None:
        self._finish_partition()
        for i, final in enumerate(self.finals):
            for part in self.parts_done:
                final.merge_file_(part[i])
        for final in self.finals:
            final.finalize()
        self._remove_parts()

    def abort(self) -> None:
        for b in [*self.current, *self.finals]:
            if not b._done:
                b.abort()
        self._remove_parts()

    def _remove_parts(self) -> None:
        for part in self.parts_done:
            for prefix in part:
                for suffix in (".bin", ".idx"):
                    Path(prefix + suffix).unlink(missing_ok=True)
        self.parts_done = []


def preprocess(
    inputs: PathLike | Sequence[PathLike],
    output_prefix: PathLike,
    tokenizer: PathLike | Sequence[PathLike] | Tokenizer,
    json_keys: Sequence[str] = ("text",),
    text_mode: str = "line",
    append_eod: bool = False,
    workers: int = 1,
    partitions: int = 1,
    errors: str = "strict",
    progress: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Tokenize ``inputs`` into ``<output_prefix>_<key>_document`` for each of ``json_keys``.

    ``tokenizer`` is a path ``load_tokenizer`` takes (each worker loads it once) or a ``Tokenizer``
    (sent to the workers, so it must pickle when ``workers > 1``). Tokens are uint16 below a vocabulary
    of 65500, else int32; ``append_eod`` ends every document with the tokenizer's eod. ``partitions``
    writes the documents into that many temporary datasets, merged at the end.

    Returns the stats: ``documents``, ``tokens`` (over all keys), ``bytes`` (input read), ``replaced``
    and ``skipped`` lines, ``outputs`` (key -> dataset prefix), ``seconds``.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    json_keys = tuple(json_keys)
    if not json_keys or len(set(json_keys)) != len(json_keys):
        raise ValueError(f"json_keys must be distinct and at least one, got {list(json_keys)}")
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
    if workers < 1 or partitions < 1:
        raise ValueError(f"workers and partitions must be at least 1, got {workers} and {partitions}")

    files = expand_inputs(inputs)
    text_files = [f for f in files if f.suffix not in JSON_SUFFIXES]
    if text_files and len(json_keys) > 1:
        raise ValueError(f"{text_files[0]}: plain text has one document stream; give one json key, not {json_keys}")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    if append_eod and tok.eod_id is None:
        raise ValueError(f"{tok.name}: append_eod needs an end-of-document token and the vocabulary has none")
    settings = _Settings(json_keys, append_eod, errors, tok.eod_id, best_dtype(tok.vocab_size))
    total_bytes = sum(f.stat().st_size for f in files)

    prefix = os.fspath(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    prefixes = [f"{prefix}_{k}_document" for k in json_keys]
    stats = {"documents": 0, "tokens": 0, "bytes": 0, "replaced": 0, "skipped": 0}
    t0 = time.perf_counter()

    from tqdm import tqdm

    bar = tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc=f"preprocess -> {os.path.basename(prefix)}",
        disable=not (progress and sys.stderr.isatty()),
    )
    outputs = _Outputs(prefixes, settings.dtype, tok.vocab_size, partitions)
    chunks = _chunks(files, text_mode, partitions, total_bytes, chunk_bytes)
    try:
        for enc in _encoded_chunks(chunks, _Encoder(tok, settings), tokenizer, settings, workers):
            for builder, tokens, lengths in zip(outputs.builders(enc.partition), enc.tokens, enc.lengths):
                if tokens.size and (tokens.min() < 0 or tokens.max() >= tok.vocab_size):
                    raise ValueError(f"{tok.name}: token ids {tokens.min()}..{tokens.max()} outside the vocabulary")
                tokens = tokens.astype(settings.dtype)
                ends = np.cumsum(lengths)
                for start, end in zip(ends - lengths, ends):
                    builder.add_document(tokens[start:end])
                stats["tokens"] += len(tokens)
            stats["documents"] += len(enc.lengths[0])
            stats["bytes"] += enc.nbytes
            stats["replaced"] += enc.replaced
            stats["skipped"] += enc.skipped
            bar.update(enc.nbytes)
            bar.set_postfix(docs_per_s=f"{stats['documents'] / max(time.perf_counter() - t0, 1e-9):.0f}")
        outputs.finalize()
    except BaseException:
        outputs.abort()
        raise
    finally:
        bar.close()
    stats["outputs"] = dict(zip(json_keys, prefixes))
    stats["seconds"] = time.perf_counter() - t0
    return stats


def default_dataset(
    vocab_size: int = 8192, cache_dir: PathLike | None = None, workers: int = 1, progress: bool = False
) -> tuple[Path, Path]:
    """``(dataset prefix, tokenizer .model)`` of the default corpus: the standard library's sources
    (``default_corpus``) tokenized with the SentencePiece BPE of ``vocab_size`` trained on them, one eod
    after each document. Cached beside the corpus as ``spm-bpe-<V>_text_document.bin/.idx`` (the corpus
    directory's key covers the interpreter and the recipe) and reused when present."""
    jsonl, model = default_corpus(vocab_size, cache_dir)
    prefix = model.with_suffix("")
    dataset = Path(f"{prefix}_text_document")
    if not Path(f"{dataset}.idx").is_file() or not Path(f"{dataset}.bin").is_file():
        stats = preprocess([jsonl], prefix, model, append_eod=True, workers=workers, progress=progress)
        log.info(
            "default corpus: %d documents, %d tokens in %.1f s -> %s",
            stats["documents"],
            stats["tokens"],
            stats["seconds"],
            dataset,
        )
    return dataset, model
