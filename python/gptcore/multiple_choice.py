"""Zero-shot multiple-choice accuracy as EleutherAI's lm-evaluation-harness defines it (its
`multiple_choice` output type), computed in process with the numbers lm-eval gets from
`gptcore serve` through its `local-completions` model.

A document is a context, choices and the index of the right one. Each choice is one loglikelihood
request (context, target_delimiter + choice), encoded as lm-eval's `_encode_pair` does: trailing
whitespace of the context moves to the continuation, the whole text is encoded and the context's
tokens cut off its front (an empty context is the end-of-document token). The tokens are
left-truncated to max_length, the model's n_positions - 1 (lm-eval's API models keep one position
for the token they ask the server to generate, so these are the numbers of an lm-eval run with
max_length=n_positions). A request's loglikelihood is the sum of its continuation tokens' scores
(`prompt_logprobs` of Generator: the same prefill the server's `echo` runs, bitwise), and it is
greedy when every continuation token is the model's most likely one. acc is the share of documents
whose highest loglikelihood is the label's; acc_norm divides each loglikelihood by its choice's
length in characters first; their standard errors are lm-eval's (sample standard deviation over
sqrt(n)).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcore.generate import GenerationResult, Generator

DEFAULT_KEYS = {"context": "context", "choices": "choices", "label": "label"}
LABEL_ALIAS = "gold"  # read when the label key is the default "label" and a document has none
EXAMPLE = '{"context": "...", "choices": ["...", "..."], "label": 0}'
REQUESTS_PER_CALL = 256  # a generate call's requests, reduced to (loglikelihood, is_greedy) before the next


@dataclass(frozen=True)
class Doc:
    context: str
    choices: tuple[str, ...]
    label: int
    line: int  # in the data file, from 1


@dataclass(frozen=True)
class ScoreRequest:
    """One choice of one document as token ids: the model scores tokens[ctxlen:] (ctxlen >= 1)."""

    tokens: list[int]
    ctxlen: int
    truncated: bool


def load_docs(
    path, context_key: str = "context", choices_key: str = "choices", label_key: str = "label", limit=None
) -> list[Doc]:
    """The documents of a .jsonl file, one JSON object a line (blank lines skipped), the first `limit`
    only when given; ValueError naming file:line and the fix for a bad line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    docs = []
    for n, line in enumerate(lines, 1):
        if limit is not None and len(docs) >= limit:
            break
        if line.strip():
            docs.append(_parse_doc(line, f"{path}:{n}", n, context_key, choices_key, label_key))
    if not docs:
        raise ValueError(f"{path}: no documents; write one JSON object a line, like {EXAMPLE}")
    return docs


def _parse_doc(line: str, where: str, n: int, context_key: str, choices_key: str, label_key: str) -> Doc:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg}); write one object a line, like {EXAMPLE}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a JSON {type(record).__name__}, expected an object like {EXAMPLE}")
    if label_key == DEFAULT_KEYS["label"] and label_key not in record and LABEL_ALIAS in record:
        label_key = LABEL_ALIAS
    for key, flag in ((context_key, "--context-key"), (choices_key, "--choices-key"), (label_key, "--label-key")):
        if key not in record:
            raise ValueError(
                f"{where}: no {key!r} key (the keys are {', '.join(map(repr, record)) or 'none'}); add it or name"
                f" the key with {flag}"
            )
    context, choices, label = record[context_key], record[choices_key], record[label_key]
    if not isinstance(context, str):
        raise ValueError(f"{where}: {context_key!r} must be a string, got {json.dumps(context)[:60]}")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise ValueError(
            f"{where}: {choices_key!r} must be a non-empty list of strings, got {json.dumps(choices)[:60]}"
        )
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ValueError(
            f"{where}: {label_key!r} must be the index of the right choice, an integer in [0, {len(choices)}),"
            f" got {json.dumps(label)[:60]}"
        )
    return Doc(context, tuple(choices), label, n)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's TemplateLM.loglikelihood encodes them."""
    if context == "":
        # The end-of-document token stands in for the context (lm-eval's prefix_token_id); a continuation
        # starting with it gives its first token as the context.
        eod = tokenizer.eod_id
        if eod is None:
            raise ValueError("an empty context is scored after the end-of-document token; the tokenizer has none")
        continuation_enc = tokenizer.encode(continuation)
        if continuation_enc and continuation_enc[0] == eod:
            return continuation_enc[:1], continuation_enc[1:]
        return [eod], continuation_enc
    spaces = len(context) - len(context.rstrip())
    if spaces:  # the word boundary belongs to the continuation
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_enc = tokenizer.encode(context)
    return context_enc, whole[len(context_enc) :]


def truncate(context_enc: list[int], continuation_enc: list[int], max_length: int) -> ScoreRequest:
    """The last max_length tokens of context + continuation, the context shortened by what is cut;
    ValueError when nothing of the context is left (the first continuation token would have no score)."""
    tokens = (context_enc + continuation_enc)[-max_length:]
    cut = max(0, len(context_enc) + len(continuation_enc) - max_length)
    ctxlen = len(context_enc) - cut
    if ctxlen < 1:
        raise ValueError(
            f"a continuation of {len(continuation_enc)} tokens leaves no context within max_length {max_length}"
        )
    return ScoreRequest(tokens, ctxlen, cut > 0)


def build_requests(docs: Sequence[Doc], tokenizer, max_length: int, target_delimiter: str = " ") -> list[ScoreRequest]:
    """Every document's choices in order, as requests."""
    requests = []
    for doc in docs:
        for i, choice in enumerate(doc.choices):
            try:
                requests.append(truncate(*encode_pair(tokenizer, doc.context, target_delimiter + choice), max_length))
            except ValueError as e:
                raise ValueError(f"line {doc.line}, choice {i}: {e}") from None
    return requests


def loglikelihood(result: GenerationResult, ctxlen: int) -> tuple[float, bool]:
    """(sum of the continuation's scores, whether each continuation token is the most likely one) from a
    result with prompt_logprobs >= 1, summed in order as lm-eval's parse_logprobs does."""
    scored = result.prompt_logprobs[ctxlen:]
    return sum(t.logprob for t in scored), all(t.logprob >= t.top[0][1] for t in scored)


def score(generator: Generator, requests: Sequence[ScoreRequest]) -> list[tuple[float, bool]]:
    """(loglikelihood, is_greedy) of each request, from the prefill alone (max_new_tokens=0)."""
    out = []
    for start in range(0, len(requests), REQUESTS_PER_CALL):
        chunk = requests[start : start + REQUESTS_PER_CALL]
        results = generator.generate([r.tokens for r in chunk], max_new_tokens=0, prompt_logprobs=1)
        out.extend(loglikelihood(result, r.ctxlen) for result, r in zip(results, chunk))
    return out


def mean_stderr(values: Sequence[float]) -> float | None:
    """lm-eval's standard error of a mean (sample standard deviation / sqrt(n)), in its order of
    operations; None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def doc_result(doc: Doc, scores: Sequence[tuple[float, bool]]) -> dict:
    """One document's record: its choices' loglikelihoods and greediness, the predictions and scores."""
    lls = np.array([ll for ll, _ in scores])
    lengths = np.array([float(len(c)) for c in doc.choices])
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty choice: as lm-eval (numpy) divides
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
    return dict(
        line=doc.line,
        label=doc.label,
        lls=lls.tolist(),
        is_greedy=[bool(g) for _, g in scores],
        pred=pred,
        pred_norm=pred_norm,
        acc=float(pred == doc.label),
        acc_norm=float(pred_norm == doc.label),
    )


def evaluate_multiple_choice(
    generator: Generator, docs: Sequence[Doc], target_delimiter: str = " ", max_length: int | None = None
) -> tuple[dict, list[dict]]:
    """(metrics, per-document records) of the documents; max_length defaults to the model's
    n_positions - 1 (an lm-eval run through the server with max_length=n_positions)."""
    if generator.tokenizer is None:
        raise ValueError("multiple-choice scoring encodes text: the model needs a tokenizer")
    if max_length is None:
        max_length = generator.model.config.n_positions - 1
    requests = build_requests(docs, generator.tokenizer, max_length, target_delimiter)
    scores = score(generator, requests)
    samples, at = [], 0
    for doc in docs:
        samples.append(doc_result(doc, scores[at : at + len(doc.choices)]))
        at += len(doc.choices)
    acc, acc_norm = [s["acc"] for s in samples], [s["acc_norm"] for s in samples]
    metrics = dict(
        acc=sum(acc) / len(acc),
        acc_stderr=mean_stderr(acc),
        acc_norm=sum(acc_norm) / len(acc_norm),
        acc_norm_stderr=mean_stderr(acc_norm),
        n=len(samples),
        requests=len(requests),
        truncated=sum(r.truncated for r in requests),
        target_delimiter=target_delimiter,
        max_length=max_length,
    )
    return metrics, samples
