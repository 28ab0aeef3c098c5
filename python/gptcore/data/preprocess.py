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

``preprocess_sft`` takes the same path for supervised finetuning data (jsonl only): one example a
record, written as one document of ``<prefix>.bin/.idx`` with its target flags in the companion
``<prefix>_loss_mask.bin/.idx`` (see ``gptcore.data.sft``).
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
from gptcore.data.sft import loss_mask_prefix
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
    target_key: str | None = None  # SFT: json_keys is (source key,); a record may hold a target here


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
    loss_mask: np.ndarray | None = None  # SFT: uint8 target flags of tokens[0]


class _Encoder:
    """Decodes, parses and tokenizes chunks; runs in the caller's process or once per worker."""

    def __init__(self, tokenizer: Tokenizer, settings: _Settings):
        self.tokenizer = tokenizer
        self.s = settings

    def __call__(self, chunk: _Chunk) -> _Encoded:
        if self.s.target_key is not None:
            return self._encode_examples(chunk)
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
                    if doc:  # as Megatron: a document with no tokens gets no eod (and is written empty)
                        doc.append(self.s.eod_id)
            lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
            flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths[-1].sum()))
            tokens.append(flat)
        return _Encoded(chunk.partition, chunk.nbytes, tokens, lengths, replaced, skipped)

    def _encode_examples(self, chunk: _Chunk) -> _Encoded:
        """SFT: source and target are tokenized apart and their ids concatenated (as HF and Megatron
        SFT do), so the boundary between context and targets is exact whatever the tokenizer merges;
        the targets are the target tokens and the eod, or every token of a record with no target."""
        where, sources, targets, replaced, skipped = [], [], [], 0, 0
        for path, lineno, raw, is_json in chunk.items:
            record, fixed = self._parse(path, lineno, raw, is_json)
            if record is None:
                skipped += 1
                continue
            replaced += fixed
            where.append(f"{path}:{lineno}")
            sources.append(record[0])
            targets.append(record[1])
        source_ids = self.tokenizer.encode_batch(sources) if sources else []
        given = [t for t in targets if t is not None]
        target_ids = iter(self.tokenizer.encode_batch(given) if given else [])
        examples, contexts = [], []
        for place, ids, target in zip(where, source_ids, targets):
            context = len(ids) if target is not None else 0
            if target is not None:
                ids = ids + next(target_ids)
            if not ids:
                self._malformed(f"{place}: an empty example (no tokens)")  # raises unless errors="skip"/"replace"
                skipped += 1
                continue
            if self.s.append_eod:
                ids.append(self.s.eod_id)
            if context == len(ids):
                self._malformed(f"{place}: an empty target and no eod after it: nothing to learn")
                skipped += 1
                continue
            examples.append(ids)
            contexts.append(context)
        lengths = np.fromiter(map(len, examples), np.int64, len(examples))
        tokens = np.fromiter(itertools.chain.from_iterable(examples), np.int64, int(lengths.sum()))
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        loss_mask = (np.arange(len(tokens)) - starts >= np.repeat(contexts, lengths)).astype(np.uint8)
        return _Encoded(chunk.partition, chunk.nbytes, [tokens], [lengths], replaced, skipped, loss_mask)

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
            if k not in record:  # most often the file's field has another name: say which it has
                flag = "--src-key" if self.s.target_key is not None else "--json-keys"
                keys = ", ".join(map(repr, record)) or "none"
                return self._malformed(
                    f"{path}:{lineno}: no key {k!r} (the record's keys: {keys}); name the field with {flag}"
                )
            if not isinstance(record[k], str):
                return self._malformed(f"{path}:{lineno}: a {type(record[k]).__name__}, not a string, under {k!r}")
        texts = [record[k] for k in self.s.json_keys]
        if self.s.target_key is not None:  # optional; present, it must be a string (null too is refused)
            target = record.get(self.s.target_key)
            if self.s.target_key in record and not isinstance(target, str):
                what = "null" if target is None else f"a {type(target).__name__}, not a string,"
                return self._malformed(f"{path}:{lineno}: {what} under {self.s.target_key!r} (leave it out for none)")
            texts.append(target)
        return texts, fixed

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
    """The final builders (one per output: (prefix, dtype, vocab size)) and, with partitions, each
    partition's temporary builders."""

    def __init__(self, specs: list[tuple[str, np.dtype, int]], partitions: int):
        self.specs, self.partitions = specs, partitions
        self.finals = [IndexedDatasetBuilder(p, dtype, vocab_size) for p, dtype, vocab_size in specs]
        self.parts_done: list[list[str]] = []  # temporary prefixes of finished partitions, per partition
        self.partition, self.current = -1, self.finals if partitions == 1 else []

    def builders(self, partition: int) -> list[IndexedDatasetBuilder]:
        if self.partitions > 1 and partition != self.partition:
            self._finish_partition()
            self.current = [
                IndexedDatasetBuilder(self._part_prefix(p, partition), dtype, vocab_size)
                for p, dtype, vocab_size in self.specs
            ]
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
        # Last output first: an SFT loss mask lands before its tokens, which without it read as pretraining data.
        for final in reversed(self.finals):
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
    log_interval: int = 0,
) -> dict:
    """Tokenize ``inputs`` into ``<output_prefix>_<key>_document`` for each of ``json_keys``.

    ``tokenizer`` is a path ``load_tokenizer`` takes (each worker loads it once) or a ``Tokenizer``
    (sent to the workers, so it must pickle when ``workers > 1``). Tokens are uint16 below a vocabulary
    of 65500, else int32; ``append_eod`` ends every document with the tokenizer's eod (a document with
    no tokens stays empty: no eod, no sequence, as in Megatron). ``partitions`` writes the documents into
    that many temporary datasets, merged at the end. ``log_interval`` > 0 prints Megatron's progress line
    ("Processed N documents (... docs/s, ... MB/s).") to stderr each time that many more documents are done.

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
    _check_run(errors, workers, partitions)

    files = expand_inputs(inputs)
    text_files = [f for f in files if f.suffix not in JSON_SUFFIXES]
    if text_files and len(json_keys) > 1:
        raise ValueError(f"{text_files[0]}: plain text has one document stream; give one json key, not {json_keys}")
    tok = _checked_tokenizer(tokenizer, append_eod)
    settings = _Settings(json_keys, append_eod, errors, tok.eod_id, best_dtype(tok.vocab_size))
    prefix = os.fspath(output_prefix)
    prefixes = [f"{prefix}_{k}_document" for k in json_keys]
    specs = [(p, settings.dtype, tok.vocab_size) for p in prefixes]
    stats = _run(
        files, tokenizer, tok, settings, specs, text_mode, workers, partitions, progress, chunk_bytes, log_interval
    )
    stats["outputs"] = dict(zip(json_keys, prefixes))
    return stats


def preprocess_sft(
    inputs: PathLike | Sequence[PathLike],
    output_prefix: PathLike,
    tokenizer: PathLike | Sequence[PathLike] | Tokenizer,
    src_key: str = "src",
    tgt_key: str = "tgt",
    append_eod: bool = True,
    workers: int = 1,
    partitions: int = 1,
    errors: str = "strict",
    progress: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Tokenize the jsonl ``inputs`` into the SFT dataset ``<output_prefix>.bin/.idx`` (one example a
    document) and its loss mask ``<output_prefix>_loss_mask.bin/.idx`` (uint8, 1 on target tokens).

    Each record holds a string under ``src_key`` and, optionally, one under ``tgt_key``. With a target,
    the example is the source tokens, the target tokens and the eod, and the targets are the target
    tokens and the eod (input-output training); without, every token is a target (continuation
    training); one file may mix both. Source and target are tokenized apart and their ids concatenated,
    so put any separator (a space, a newline) into the text itself. A record without the source, a
    field that is not a string (null included), an example with no tokens or no targets, and bad JSON
    raise a ``ValueError`` naming ``file:line`` (``errors="skip"`` drops them instead). The other
    arguments are ``preprocess``'s.

    Returns the stats: ``examples``, ``tokens``, ``target_tokens``, ``bytes``, ``replaced``, ``skipped``,
    ``outputs`` ({"tokens": prefix, "loss_mask": prefix}), ``seconds``.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if src_key == tgt_key:
        raise ValueError(f"src_key and tgt_key must differ, both are {src_key!r}")
    _check_run(errors, workers, partitions)
    files = expand_inputs(inputs)
    text_files = [f for f in files if f.suffix not in JSON_SUFFIXES]
    if text_files:
        suffixes = "/".join(JSON_SUFFIXES)
        raise ValueError(f"{text_files[0]}: SFT data is jsonl ({suffixes}), one JSON object a line, not plain text")
    tok = _checked_tokenizer(tokenizer, append_eod)
    settings = _Settings((src_key,), append_eod, errors, tok.eod_id, best_dtype(tok.vocab_size), target_key=tgt_key)
    prefix = os.fspath(output_prefix)
    outputs = {"tokens": prefix, "loss_mask": loss_mask_prefix(prefix)}
    specs = [(outputs["tokens"], settings.dtype, tok.vocab_size), (outputs["loss_mask"], np.dtype(np.uint8), 2)]
    stats = _run(files, tokenizer, tok, settings, specs, "line", workers, partitions, progress, chunk_bytes)
    stats = {"examples": stats.pop("documents"), **stats, "outputs": outputs}
    return stats


def _check_run(errors: str, workers: int, partitions: int) -> None:
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
    if workers < 1 or partitions < 1:
        raise ValueError(f"workers and partitions must be at least 1, got {workers} and {partitions}")


def _checked_tokenizer(tokenizer: PathLike | Sequence[PathLike] | Tokenizer, append_eod: bool) -> Tokenizer:
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    if append_eod and tok.eod_id is None:
        raise ValueError(f"{tok.name}: append_eod needs an end-of-document token and the vocabulary has none")
    return tok


def _add_documents(builder: IndexedDatasetBuilder, flat: np.ndarray, lengths: np.ndarray) -> None:
    """One sequence a document; a document with no tokens has no sequence (as Megatron writes it)."""
    flat = flat.astype(builder.dtype)
    ends = np.cumsum(lengths)
    for start, end in zip(ends - lengths, ends):
        builder.add_document(flat[start:end] if end > start else [])


def _run(
    files: list[Path],
    tokenizer: PathLike | Sequence[PathLike] | Tokenizer,
    tok: Tokenizer,
    settings: _Settings,
    specs: list[tuple[str, np.dtype, int]],
    text_mode: str,
    workers: int,
    partitions: int,
    progress: bool,
    chunk_bytes: int,
    log_interval: int = 0,
) -> dict:
    """Streams ``files`` through the encoders into the outputs ``specs`` (prefix, dtype, vocab size)
    (an SFT run's last output is its loss mask); the stats, less ``outputs``."""
    total_bytes = sum(f.stat().st_size for f in files)
    prefix = specs[0][0]
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    stats = {"documents": 0, "tokens": 0, "bytes": 0, "replaced": 0, "skipped": 0}
    if settings.target_key is not None:
        stats["target_tokens"] = 0
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
    outputs = _Outputs(specs, partitions)
    chunks = _chunks(files, text_mode, partitions, total_bytes, chunk_bytes)
    try:
        for enc in _encoded_chunks(chunks, _Encoder(tok, settings), tokenizer, settings, workers):
            builders = outputs.builders(enc.partition)
            for builder, tokens, lengths in zip(builders, enc.tokens, enc.lengths):
                if tokens.size and (tokens.min() < 0 or tokens.max() >= tok.vocab_size):
                    raise ValueError(f"{tok.name}: token ids {tokens.min()}..{tokens.max()} outside the vocabulary")
                _add_documents(builder, tokens, lengths)
                stats["tokens"] += len(tokens)
            if enc.loss_mask is not None:
                _add_documents(builders[-1], enc.loss_mask, enc.lengths[0])
                stats["target_tokens"] += int(enc.loss_mask.sum())
            done_before = stats["documents"]
            stats["documents"] += len(enc.lengths[0])
            stats["bytes"] += enc.nbytes
            stats["replaced"] += enc.replaced
            stats["skipped"] += enc.skipped
            bar.update(enc.nbytes)
            if log_interval > 0 and stats["documents"] // log_interval > done_before // log_interval:
                seconds = max(time.perf_counter() - t0, 1e-9)
                print(
                    f"Processed {stats['documents']} documents ({stats['documents'] / seconds:.2f} docs/s,"
                    f" {stats['bytes'] / seconds / 1024 / 1024:.4f} MB/s).",
                    file=sys.stderr,
                )
            bar.set_postfix(docs_per_s=f"{stats['documents'] / max(time.perf_counter() - t0, 1e-9):.0f}")
        outputs.finalize()
    except BaseException:
        outputs.abort()
        raise
    finally:
        bar.close()
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
