"""Perplexity of a model on text or a token stream, with a sliding window (`gptcore eval`).

The stream of N tokens is N - 1 (input, target) pairs: token i predicts token i + 1. Windows over
the pairs start at 0, stride, 2 * stride, ... and end at min(begin + window, N - 1); each window
runs its `window` input tokens through the model in one forward and scores only the targets the
previous window did not score (the last end - prev_end), the rest serving as context. The last
window is the one that reaches the end of the stream. So every target is scored exactly once, with
at least window - stride tokens of context (the first window's targets with what precedes them),
and stride == window gives plain non-overlapping chunks.

This is Hugging Face's sliding-window method ("Perplexity of fixed-length models"), with two
differences: HF's window is `window` tokens of which the first is never a target (so with stride ==
window the first token of every window goes unscored), where here the window is `window` inputs and
every logit scores a target; and the NLL is the exact sum of per-token -log p (log-softmax in
float32, float64 for a float64 model), not HF's mean * target count.

The first token of a stream has no context and is never scored: scored tokens = N - 1.
`evaluate_text` and `evaluate_indexed` therefore put the tokenizer's end-of-document token in front
by default (`prepend_eod`, as lm-eval-harness's rolling loglikelihood does), so every token of the
text is scored.

Reported: token perplexity exp(nll / scored), the mean NLL (`loss`, nats a token, comparable to the
training loss), bits per byte nll / (ln 2 * UTF-8 bytes of the text) and word perplexity
exp(nll / words), words being the text's whitespace-separated pieces. Word perplexity compares
models with different tokenizers on word-tokenized text (WikiText); bits per byte on any text.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptcore.core_decoder import CoreDecoder
from gptcore.data import IndexedDataset

__all__ = [
    "dataset_prefix",
    "evaluate_file",
    "evaluate_indexed",
    "evaluate_text",
    "format_summary",
    "perplexity",
    "resolve_window",
]


def resolve_window(config, window: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """(window, stride) with the defaults filled in: window = the model's n_positions, stride =
    window // 2 (HF's example: 1024 and 512). ValueError when either is out of range."""
    n_positions = config.n_positions
    window = n_positions if window is None else int(window)
    if window < 1:
        raise ValueError(f"window {window}: must be at least 1")
    if window > n_positions:
        raise ValueError(f"window {window} exceeds the model's n_positions {n_positions}")
    stride = max(1, window // 2) if stride is None else int(stride)
    if not 1 <= stride <= window:
        raise ValueError(f"stride {stride}: must be between 1 and the window ({window})")
    return window, stride


def _as_ids(tokens) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        ids = tokens.detach().to("cpu", torch.long)
    else:
        ids = torch.from_numpy(np.array(tokens, dtype=np.int64, copy=True))
    if ids.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(ids.shape)}")
    return ids


def _windows(pairs: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, prev_end) of each window over `pairs` (input, target) pairs."""
    out, prev_end = [], 0
    for begin in range(0, pairs, stride):
        end = min(begin + window, pairs)
        out.append((begin, end, prev_end))
        prev_end = end
        if end == pairs:
            break
    return out


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def perplexity(
    model,
    tokens,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
    weights: str | None = None,
) -> dict:
    """Sliding-window perplexity of `model` on one token stream (a list, numpy or torch 1-D array).

    Returns {"tokens": N, "scored_tokens": N - 1, "nll": summed -log p in nats (float64), "loss":
    nll / scored_tokens, "token_perplexity", "window", "stride", "windows", "seconds"}. Windows of
    equal length (all but maybe the last) run `batch_size` to a forward. The model runs in eval mode
    without gradients and is put back in the mode it was in. `progress`: a tqdm bar on stderr.
    weights ("fp32", "bf16", "int8"): the forwards run in gptcore's core with the weights in that
    format (gptcore.core_decoder; a float32 model on the CPU), to measure what a format costs.
    """
    config = model.config
    window, stride = resolve_window(config, window, stride)
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be at least 1")
    ids = _as_ids(tokens)
    n = ids.numel()
    if n < 2:
        raise ValueError(f"{n} token(s): perplexity needs at least 2 (a context token and a token to predict)")
    bad = ((ids < 0) | (ids >= config.vocab_size)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise ValueError(
            f"token id {int(ids[i])} at position {i} is outside the model's vocabulary of {config.vocab_size}"
        )

    windows = _windows(n - 1, window, stride)
    batches: list[list[tuple[int, int, int]]] = []
    for w in windows:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and last[0][1] - last[0][0] == w[1] - w[0]:
            last.append(w)
        else:
            batches.append([w])

    from tqdm import tqdm

    device = next(model.parameters()).device
    forward = _core_forward(model, weights, batch_size, window) if weights is not None else lambda x: model(x)[0]
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    bar = tqdm(total=n - 1, desc="perplexity", unit="tok", unit_scale=True, disable=not progress, file=sys.stderr)
    try:
        with torch.inference_mode():
            for batch in batches:
                x = torch.stack([ids[b:e] for b, e, _ in batch]).to(device, non_blocking=True)
                y = torch.stack([ids[b + 1 : e + 1] for b, e, _ in batch]).to(device, non_blocking=True)
                logits = forward(x)
                for row, (b, _, prev_end) in enumerate(batch):
                    scored = logits[row, prev_end - b :]
                    scored = scored.to(torch.float64 if scored.dtype == torch.float64 else torch.float32)
                    logp = F.log_softmax(scored, dim=-1).gather(-1, y[row, prev_end - b :, None])
                    nll -= logp.sum(dtype=torch.float64)
                if progress:
                    bar.update(sum(e - p for _, e, p in batch))
                    bar.set_postfix(ppl=f"{_exp(nll.item() / bar.n):.3f}")
    finally:
        bar.close()
        model.train(was_training)
    total = nll.item()
    return {
        "tokens": n,
        "scored_tokens": n - 1,
        "nll": total,
        "loss": total / (n - 1),
        "token_perplexity": _exp(total / (n - 1)),
        "window": window,
        "stride": stride,
        "windows": len(windows),
        "seconds": time.perf_counter() - t0,
    }


def _core_forward(model, weights: str, rows: int, window: int):
    """x [B <= rows, T <= window] -> logits [B, T, vocab_size], every position, through the core."""
    decoder = CoreDecoder(model, slots=rows, max_len=window, weights=weights)

    def forward(x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        return decoder.forward(x.flatten().tolist(), range(B), [0] * B, [T] * B, every_position=True).view(B, T, -1)

    return forward


def _prepend(tokenizer, prepend_eod: bool | None) -> int | None:
    """The token to put in front of the stream, or None."""
    eod = getattr(tokenizer, "eod_id", None) if tokenizer is not None else None
    if prepend_eod is None:
        return eod
    if prepend_eod and eod is None:
        raise ValueError(
            "prepend_eod needs an end-of-document token; the tokenizer has none (or there is no tokenizer)"
        )
    return eod if prepend_eod else None


def _check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens {max_tokens}: must be at least 1")


def _score(model, ids, first, counted_texts, window, stride, batch_size, progress, source, weights) -> dict:
    """Perplexity of `ids` (with `first` in front unless None), byte and word measures over the texts."""
    ids = np.asarray(ids, dtype=np.int64)
    stream = ids if first is None else np.concatenate([np.array([first], dtype=np.int64), ids])
    if len(stream) < 2:
        raise ValueError(
            f"the text is {len(ids)} token(s); perplexity needs at least 2"
            " (or 1 with an end-of-document token in front)"
        )
    r = perplexity(model, stream, window, stride, batch_size, progress, weights)
    nll = r["nll"]
    nbytes = words = None
    if counted_texts is not None:
        nbytes = sum(len(t.encode("utf-8")) for t in counted_texts)
        words = sum(len(t.split()) for t in counted_texts)
    return {
        "source": source,
        "tokens": len(ids),
        "scored_tokens": r["scored_tokens"],
        "prepend_eod": first is not None,
        "nll": nll,
        "loss": r["loss"],
        "token_perplexity": r["token_perplexity"],
        "bits_per_byte": nll / (math.log(2) * nbytes) if nbytes else None,
        "word_perplexity": _exp(nll / words) if words else None,
        "bytes": nbytes,
        "words": words,
        "window": r["window"],
        "stride": r["stride"],
        "windows": r["windows"],
        "seconds": r["seconds"],
    }


def evaluate_text(
    model,
    tokenizer,
    text: str,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    prepend_eod: bool | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
    source: str | None = None,
    weights: str | None = None,
) -> dict:
    """Perplexity, bits per byte and word perplexity of `model` on `text`, tokenized as one stream.

    prepend_eod: put the tokenizer's end-of-document token in front so the first token is scored too
    (None: when the tokenizer has one). max_tokens: evaluate only the first that many tokens (bytes and
    words then count their decoded text). Returns `_score`'s dict: source, tokens, scored_tokens,
    prepend_eod, nll, loss, token_perplexity, bits_per_byte, word_perplexity, bytes, words, window,
    stride, windows, seconds.
    """
    if tokenizer is None:
        raise ValueError("evaluating text needs a tokenizer")
    window, stride = resolve_window(model.config, window, stride)
    _check_max_tokens(max_tokens)
    first = _prepend(tokenizer, prepend_eod)
    ids = tokenizer.encode(text)
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        text = tokenizer.decode(ids)
    return _score(model, ids, first, [text], window, stride, batch_size, progress, source, weights)


def evaluate_file(model, tokenizer, path, **kwargs) -> dict:
    """`evaluate_text` on a UTF-8 text file (read whole); source = the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    kwargs.setdefault("source", str(path))
    return evaluate_text(model, tokenizer, text, **kwargs)


def dataset_prefix(prefix) -> str:
    """An indexed dataset's prefix (a trailing .bin or .idx dropped); FileNotFoundError without both files."""
    prefix = os.fspath(prefix)
    if prefix.endswith((".bin", ".idx")):
        prefix = prefix[:-4]
    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            raise FileNotFoundError(f"{prefix}{suffix}: no such file (expected an indexed dataset PREFIX.bin/.idx)")
    return prefix


def evaluate_indexed(
    model,
    prefix,
    tokenizer=None,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    prepend_eod: bool | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
    weights: str | None = None,
) -> dict:
    """Perplexity of `model` on an indexed dataset (PREFIX.bin/.idx): its documents concatenated in file
    order, end-of-document tokens included as stored (and scored), the eod in front as `evaluate_text`.

    Bytes and words count the text the tokens decode to, split at eod tokens, which add no bytes; this
    needs the tokenizer, and without one bits_per_byte, word_perplexity, bytes and words are None.
    """
    window, stride = resolve_window(model.config, window, stride)
    _check_max_tokens(max_tokens)
    prefix = dataset_prefix(prefix)
    first = _prepend(tokenizer, prepend_eod)
    ids = IndexedDataset(prefix).tokens
    if max_tokens is not None:
        ids = ids[:max_tokens]
    ids = np.asarray(ids, dtype=np.int64)
    texts = None
    if tokenizer is not None:
        if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
            bad = int(np.flatnonzero((ids < 0) | (ids >= tokenizer.vocab_size))[0])
            raise ValueError(
                f"{prefix}: token id {int(ids[bad])} at position {bad} is outside the tokenizer's vocabulary"
                f" of {tokenizer.vocab_size}; was the dataset made with this tokenizer?"
            )
        eod = tokenizer.eod_id
        segments = [ids] if eod is None else np.split(ids, np.flatnonzero(ids == eod))
        texts = [tokenizer.decode(s[s != eod] if eod is not None else s) for s in segments if s.size]
    return _score(model, ids, first, texts, window, stride, batch_size, progress, prefix, weights)


def format_summary(result: dict) -> str:
    """A few readable lines of an `evaluate_*` result."""
    r = result
    eod = ", eod in front" if r.get("prepend_eod") else ""
    lines = [
        f"{r.get('source') or 'text'}: {r['tokens']:,} tokens ({r['scored_tokens']:,} scored{eod}),"
        f" window {r['window']}, stride {r['stride']}, {r['windows']:,} windows, {r['seconds']:.1f} s",
        f"  token perplexity  {r['token_perplexity']:.4f}  (loss {r['loss']:.4f} nats/token)",
    ]
    if r.get("bits_per_byte") is not None:
        lines.append(f"  bits per byte     {r['bits_per_byte']:.4f}  ({r['bytes']:,} bytes)")
    if r.get("word_perplexity") is not None:
        lines.append(f"  word perplexity   {r['word_perplexity']:.4f}  ({r['words']:,} words)")
    return "\n".join(lines)
