"""The built-in default corpus: the running interpreter's standard library sources (code, comments and
docstrings), assembled at run time and cached with a SentencePiece tokenizer trained on it, so a fresh
machine trains with no downloads.

Cache layout, under ``$GPTCORE_CACHE`` (default ``~/.cache/gptcore``)::

    default_corpus/py<version>-<key>/corpus.jsonl        {"text": ..., "source": "json/decoder.py"} a line
                                     manifest.json       counts: files, documents, bytes, skipped files
                                     spm-bpe-<V>.model   the tokenizer (+ .vocab)

The key hashes the interpreter, the stdlib path and every source's name, size and mtime, so a
different or updated Python builds its own corpus. Files are written under temporary names and renamed,
``corpus.jsonl`` after ``manifest.json`` and ``.model`` after ``.vocab``: an interrupted build never looks
complete. Processes building at once each write their own temporaries; the last rename wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from gptcore.data.tokenizer import train_sentencepiece

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the assembly or the tokenizer recipe below changes
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
MAX_DOCUMENT_CHARS = 32_768
TOKENIZER_SENTENCES = 400_000  # lines sampled for training: all of CPython 3.11's ~330k, a 15 s BPE run
_TOP_LEVEL_BREAK = re.compile(r"\n\n(?=\S)")  # a blank line, then an unindented statement


@dataclass
class StdlibSources:
    root: Path
    files: list[Path]  # the .py sources kept, sorted by path relative to root
    skipped_tests: int  # .py files under test directories

    def key(self) -> str:
        h = hashlib.sha256(f"{RECIPE_VERSION}\n{sys.implementation.name} {sys.version}\n{self.root}\n".encode())
        for f in self.files:
            st = f.stat()
            h.update(f"{f.relative_to(self.root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        v = sys.version_info
        return f"py{v.major}.{v.minor}.{v.micro}-{h.hexdigest()[:16]}"


def stdlib_sources(root: str | os.PathLike | None = None) -> StdlibSources:
    """The standard library's .py files, without tests, caches and installed third-party packages."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files, skipped_tests = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:  # third-party packages live inside the stdlib directory
            dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages")]
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        sources = [here / f for f in filenames if f.endswith(".py")]
        if TEST_DIRS.intersection(here.relative_to(root).parts):
            skipped_tests += len(sources)
        else:
            files.extend(sources)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise FileNotFoundError(f"{root}: no Python standard library sources found")
    return StdlibSources(root, files, skipped_tests)


def split_document(text: str, max_chars: int = MAX_DOCUMENT_CHARS) -> list[str]:
    """Cut a long source file between top-level blocks into chunks of at most ``max_chars`` (a single
    longer block stays whole); the chunks concatenate back to ``text``."""
    chunks, start, prev = [], 0, 0
    for cut in [m.end() for m in _TOP_LEVEL_BREAK.finditer(text)] + [len(text)]:
        if cut - start > max_chars and prev > start:
            chunks.append(text[start:prev])
            start = prev
        prev = cut
    chunks.append(text[start:])
    return chunks


def write_corpus(sources: StdlibSources, out_dir: str | os.PathLike) -> dict:
    """Write ``corpus.jsonl`` (documents in path order) and ``manifest.json`` into ``out_dir``, atomically;
    return the manifest. Files that are not UTF-8 or hold only whitespace are skipped and counted."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"files": 0, "documents": 0, "bytes": 0, "skipped_non_utf8": 0, "skipped_empty": 0}
    tmp = out / f".corpus.jsonl.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for path in sources.files:
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                counts["skipped_non_utf8"] += 1
                continue
            if not text.strip():
                counts["skipped_empty"] += 1
                continue
            source = path.relative_to(sources.root).as_posix()
            for chunk in split_document(text):
                f.write(json.dumps({"text": chunk, "source": source}, ensure_ascii=False) + "\n")
                counts["documents"] += 1
            counts["files"] += 1
            counts["bytes"] += len(text.encode("utf-8"))
    manifest = {
        "python": sys.version,
        "stdlib": str(sources.root),
        "recipe_version": RECIPE_VERSION,
        **counts,
        "skipped_tests": sources.skipped_tests,
    }
    _write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "corpus.jsonl")
    return manifest


def cache_root() -> Path:
    return Path(os.environ.get("GPTCORE_CACHE") or Path.home() / ".cache" / "gptcore")


def default_corpus_jsonl(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached ``corpus.jsonl`` of this interpreter's standard library, built on first use."""
    sources = stdlib_sources()
    out = Path(cache_dir) if cache_dir is not None else cache_root()
    out = out / "default_corpus" / sources.key()
    jsonl = out / "corpus.jsonl"
    if not jsonl.is_file():
        t0 = time.perf_counter()
        m = write_corpus(sources, out)
        log.info(
            "default corpus: %d documents from %d stdlib files (%.1f MB) in %.1f s -> %s",
            m["documents"],
            m["files"],
            m["bytes"] / 1e6,
            time.perf_counter() - t0,
            jsonl,
        )
    return jsonl


def default_corpus(vocab_size: int = 8192, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(corpus.jsonl, tokenizer .model)`` of the default corpus: a byte-fallback SentencePiece BPE
    of ``vocab_size`` pieces trained on it. Both are cached and reused; either is rebuilt when missing."""
    jsonl = default_corpus_jsonl(cache_dir)
    model = jsonl.parent / f"spm-bpe-{vocab_size}.model"
    if not model.is_file():
        t0 = time.perf_counter()
        train_sentencepiece([jsonl], model.with_suffix(""), vocab_size, "bpe", input_sentence_size=TOKENIZER_SENTENCES)
        log.info("default corpus: trained %s in %.1f s", model.name, time.perf_counter() - t0)
    return jsonl, model


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
