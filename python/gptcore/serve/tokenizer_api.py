"""vLLM's tokenizer endpoints, as data: POST /tokenize, POST /detokenize, GET /tokenizer_info (what
lm-evaluation-harness's `tokenizer_backend=remote` reads). Request bodies are checked here;
errors are protocol.APIError / InvalidParameter."""

from __future__ import annotations

from gptcore.data.tokenizer import EOD_TOKENS
from gptcore.serve.protocol import APIError, InvalidParameter, ServedModel, _Fields, _is_int, _json_type

TOKENIZE_FIELDS = frozenset({"model", "prompt", "add_special_tokens", "return_token_strs"})
DETOKENIZE_FIELDS = frozenset({"model", "tokens"})


def _fields(body: object, allowed: frozenset, served: ServedModel) -> _Fields:
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_json_type(body)}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidParameter(unknown[0], f"unknown field {unknown[0]!r}; supported: {', '.join(sorted(allowed))}")
    _tokenizer(served)
    f = _Fields(body)
    model = f.string("model")
    if model is not None and model != served.name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {served.name!r}", "model")
    return f


def _tokenizer(served: ServedModel):
    """The served tokenizer; APIError 400 when the server has none."""
    if served.tokenizer is None:
        raise APIError(400, "this server has no tokenizer (serve it with --tokenizer)", code="no_tokenizer")
    return served.tokenizer


def tokenize(body: object, served: ServedModel) -> dict:
    """{"count", "max_model_len", "tokens"[, "token_strs"]} of {"prompt": text}. gptcore's tokenizers
    add no special tokens, so add_special_tokens changes nothing; the ids are those a completions
    request with this text as its prompt uses."""
    f = _fields(body, TOKENIZE_FIELDS, served)
    prompt = f.string("prompt")
    if prompt is None:
        raise InvalidParameter("prompt", "prompt is required: the text to tokenize")
    f.boolean("add_special_tokens", True)
    tokens = served.tokenizer.encode(prompt)
    out = {"count": len(tokens), "max_model_len": served.config.n_positions, "tokens": tokens}
    if f.boolean("return_token_strs", False):
        out["token_strs"] = [served.tokenizer.decode([t]) for t in tokens]
    return out


def detokenize(body: object, served: ServedModel) -> dict:
    """{"prompt": text} of {"tokens": [ids]}; 400 for an id outside the vocabulary."""
    f = _fields(body, DETOKENIZE_FIELDS, served)
    tokens = f.get("tokens")
    if not isinstance(tokens, list) or not all(_is_int(t) for t in tokens):
        raise InvalidParameter("tokens", f"tokens must be a list of token ids, got {_json_type(tokens)}")
    vocab = served.tokenizer.vocab_size
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise InvalidParameter("tokens", f"token id {bad[0]} is outside the vocabulary (0 .. {vocab - 1})")
    return {"prompt": served.tokenizer.decode(tokens)}


def tokenizer_info(served: ServedModel) -> dict:
    """The tokenizer's special tokens and limits. eos_token is the end-of-document token's text, such
    that /tokenize of it gives exactly its id (lm-eval finds the eos id so); no bos or pad token."""
    tokenizer = _tokenizer(served)
    eos = next(
        (t for t in EOD_TOKENS if tokenizer.eod_id is not None and tokenizer.encode(t) == [tokenizer.eod_id]), None
    )
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": tokenizer.vocab_size,
        "model_max_length": served.config.n_positions,
        "eos_token": eos,
        "eos_token_id": tokenizer.eod_id,
        "bos_token": None,
        "pad_token": None,
    }
