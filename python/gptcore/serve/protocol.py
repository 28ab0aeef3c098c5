"""OpenAI's completions API as data: a request body checked into a `CompletionRequest`, errors as
`APIError` / `InvalidParameter` (OpenAI's {"error": {message, type, param, code}}), and the response,
chunk and usage objects. No sockets and no threads: the HTTP layer and the scheduler use it."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from gptcore.generate import MAX_LOGPROBS, SamplingParams, TokenLogprob, check_prompt

FIELDS = frozenset(
    {
        *("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop"),
        *("stop_token_ids", "seed", "stream", "stream_options", "n", "best_of", "echo", "logprobs"),
        *("presence_penalty", "frequency_penalty", "logit_bias", "suffix", "user", "return_token_ids"),
        "ignore_eos",
    }
)

_SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes

# The request field each SamplingParams field comes from, in the order SamplingParams.check tries them.
_SAMPLING_FIELDS = (
    ("temperature", "temperature"),
    ("top_k", "top_k"),
    ("top_p", "top_p"),
    ("repetition_penalty", "repetition_penalty"),
    ("stop_token_ids", "stop_ids"),
    ("stop", "stop"),
)


class APIError(Exception):
    """An error answered as OpenAI's {"error": {message, type, param, code}}."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = int(status), message, param, code
        self.headers = dict(headers or {})
        if self.status == 503:
            self.headers.setdefault("Retry-After", "1")

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class InvalidParameter(APIError):
    """400: the request's field `param` is missing, of the wrong type or out of range."""

    def __init__(self, param: str, message: str, code: str | None = None):
        super().__init__(400, message, param, code)


@dataclass(frozen=True)
class ServedModel:
    """What a request is checked against: the model's name and config (vocab_size, n_positions), its
    tokenizer (None: token-id prompts only), the longest prompt and the most prompts a request may have."""

    name: str
    config: object
    tokenizer: object | None
    max_prompt_tokens: int | None
    max_prompts: int

    @property
    def eod_id(self) -> int | None:
        return getattr(self.tokenizer, "eod_id", None)


@dataclass(frozen=True)
class CompletionRequest:
    """A checked /v1/completions request: token-id prompts, n choices each (choice i is prompt i // n),
    all sampled with `params` (choice j of a prompt seeded seed + j: see choice_params)."""

    prompts: list[list[int]]
    echo_texts: list[str]  # what each prompt's choices' text starts with ("" without echo)
    params: SamplingParams
    stream: bool = False
    echo: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    n: int = 1
    logprobs: int | None = None  # alternatives listed per token (None: no logprobs object)

    def choice_params(self, j: int) -> SamplingParams:
        """The sampling parameters of a prompt's choice j: seed + j (mod 2**64), so n samples of one
        prompt differ and each is reproducible; a request without a seed draws a fresh one per choice."""
        if j == 0 or self.params.seed is None:
            return self.params
        return dataclasses.replace(self.params, seed=(self.params.seed + j) % 2**64)


class _NonFinite(ValueError):
    """A JSON number that is not a finite float (NaN, Infinity, 1e999)."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _no_constant(name: str):
    raise _NonFinite(name)


def decode_body(body: bytes) -> object:
    """A request body parsed as JSON; APIError 400 for one that is not UTF-8, not JSON, nested too
    deeply, holds a non-finite number (NaN, Infinity, 1e999: not JSON, though Python's parser takes
    them) or a string with a lone surrogate ("\\ud800": no text can be made of it), naming the field."""
    try:
        payload = json.loads(body.decode("utf-8-sig"), parse_float=_finite, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8") from None
    except _NonFinite as e:
        raise APIError(
            400, f"the request body holds the number {e}, which is not finite", code="invalid_json"
        ) from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except (ValueError, RecursionError):
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    for field, value in payload.items() if isinstance(payload, dict) else [("body", payload)]:
        if _has_lone_surrogate(value):
            raise InvalidParameter(field, f"{field}: a string holds a lone UTF-16 surrogate (not text)")
    return payload


def _has_lone_surrogate(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def parse_completion(body: object, served: ServedModel) -> CompletionRequest:
    """A CompletionRequest from a parsed /v1/completions body; APIError (400/404) for anything wrong with it."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_json_type(body)}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidParameter(
            unknown[0],
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))};"
            f" supported: {', '.join(sorted(FIELDS))}",
            code="unknown_field",
        )
    f = _Fields(body)
    model = f.string("model")
    if model is not None and model != served.name:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {served.name!r}",
            param="model",
            code="model_not_found",
        )
    _refuse_unsupported(f)
    f.string("user")
    stream = f.boolean("stream", False)
    include_usage = _include_usage(f.get("stream_options"))
    echo = f.boolean("echo", False)
    logprobs = _logprobs(f)
    params = _sampling_params(f, served, echo, logprobs)
    n = _n(f)
    return_token_ids = f.boolean("return_token_ids", served.tokenizer is None)
    prompts = _prompts(f.get("prompt"), served)
    if len(prompts) * n > served.max_prompts:
        raise InvalidParameter(
            "n", f"{len(prompts)} prompts x n={n} choices; this server takes at most {served.max_prompts} a request"
        )
    ids, echo_texts = [], []
    for i, prompt in enumerate(prompts):
        tokens = prompt if isinstance(prompt, list) else served.tokenizer.encode(prompt)
        _check_prompt(tokens, i if len(prompts) > 1 else None, params, served)
        if not echo:
            text = ""
        elif isinstance(prompt, str):
            text = prompt
        else:
            text = served.tokenizer.decode(tokens) if served.tokenizer else ""
        ids.append(tokens)
        echo_texts.append(text)
    return CompletionRequest(
        ids, echo_texts, params, stream, echo, include_usage and stream, return_token_ids, n, logprobs
    )


def _n(f: _Fields) -> int:
    n = f.integer("n", 1)
    if n < 1:
        raise InvalidParameter("n", f"n must be a positive integer, got {n}")
    best_of = f.integer("best_of", n)
    if best_of != n:
        raise InvalidParameter(
            "best_of", f"best_of must equal n (it is {best_of}, n is {n}): ranking extra samples is not supported"
        )
    return n


def _logprobs(f: _Fields) -> int | None:
    k = f.integer("logprobs", None)
    if k is not None and not 0 <= k <= MAX_LOGPROBS:
        raise InvalidParameter("logprobs", f"logprobs must be an integer in [0, {MAX_LOGPROBS}] or null, got {k}")
    return k


def _refuse_unsupported(f: _Fields) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if f.number(name, 0.0) != 0:
            message = f"{name} is not supported; use repetition_penalty"
            raise InvalidParameter(name, message, code="unsupported_parameter")
    if f.get("logit_bias") not in (None, {}):
        raise InvalidParameter("logit_bias", "logit_bias is not supported", code="unsupported_parameter")
    if f.get("suffix") not in (None, ""):
        raise InvalidParameter("suffix", "suffix is not supported", code="unsupported_parameter")


def _include_usage(options) -> bool:
    if options is not None and not isinstance(options, dict):
        raise InvalidParameter("stream_options", f"stream_options must be an object, got {_json_type(options)}")
    options = options or {}
    if set(options) - {"include_usage"}:
        raise InvalidParameter("stream_options", "stream_options takes only include_usage")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidParameter("stream_options", "stream_options.include_usage must be a boolean")
    return include_usage


def _sampling_params(f: _Fields, served: ServedModel, echo: bool, logprobs: int | None) -> SamplingParams:
    max_tokens = f.integer("max_tokens", 16)
    if max_tokens < 0 or (max_tokens == 0 and not echo):
        message = f"max_tokens must be a positive integer (0 only with echo: the prompt alone), got {max_tokens}"
        raise InvalidParameter("max_tokens", message)
    top_k = f.integer("top_k", 0)
    stop = f.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    elif stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise InvalidParameter("stop", f"stop must be a string or a list of strings, got {_json_type(stop)}")
    if stop and served.tokenizer is None:
        raise InvalidParameter("stop", "stop strings need a tokenizer and this server has none; use stop_token_ids")
    stop_ids = f.get("stop_token_ids") or []
    if not (isinstance(stop_ids, list) and all(_is_int(i) for i in stop_ids)):
        raise InvalidParameter("stop_token_ids", "stop_token_ids must be a list of integers")
    ignore_eos = f.boolean("ignore_eos", False)
    seed = f.get("seed")
    if seed is not None and not (_is_int(seed) and _SEED_RANGE[0] <= seed < _SEED_RANGE[1]):
        raise InvalidParameter("seed", f"seed must be an integer in [-2**63, 2**64) or null, got {seed!r}")
    eod = [] if served.eod_id is None or ignore_eos else [served.eod_id]
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=f.number("temperature", 1.0),
        top_k=0 if top_k == -1 else top_k,
        top_p=f.number("top_p", 1.0),
        repetition_penalty=f.number("repetition_penalty", 1.0),
        stop_ids=tuple(dict.fromkeys(eod + stop_ids)),
        stop=tuple(stop or ()),
        seed=seed,
        logprobs=logprobs,
        # the echoed prompt's scores come from the prefill; max_tokens 0 is the prefill alone
        prompt_logprobs=logprobs if echo and logprobs is not None else 0 if max_tokens == 0 else None,
    )
    # Each field checked on its own (the others left at their valid defaults), so a failure names its field.
    for param, name in _SAMPLING_FIELDS:
        try:
            SamplingParams(**{name: getattr(params, name)}).check(served.config.vocab_size)
        except ValueError as e:
            raise InvalidParameter(param, str(e)) from None
    return params


def _prompts(prompt, served: ServedModel) -> list[str | list[int]]:
    what = "prompt must be a string, a list of token ids, or a list of strings or of token-id lists"
    if prompt is None:
        raise InvalidParameter("prompt", "prompt is required")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(i) for i in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
        for p in prompts:
            if not (isinstance(p, str) or (isinstance(p, list) and all(_is_int(i) for i in p))):
                raise InvalidParameter("prompt", f"{what}; got a list holding {_json_type(p)}")
    else:
        raise InvalidParameter("prompt", f"{what}; got {_json_type(prompt) if prompt != [] else 'an empty list'}")
    if any(isinstance(p, str) for p in prompts) and served.tokenizer is None:
        raise InvalidParameter("prompt", "this server has no tokenizer: send the prompt as token ids")
    if len(prompts) > served.max_prompts:
        raise InvalidParameter(
            "prompt", f"{len(prompts)} prompts; this server takes at most {served.max_prompts} a request"
        )
    return prompts


def _check_prompt(ids: list[int], index: int | None, params: SamplingParams, served: ServedModel) -> None:
    """index: the prompt's place among several (None: the only one)."""
    if served.max_prompt_tokens is not None and len(ids) > served.max_prompt_tokens:
        raise InvalidParameter(
            "prompt",
            f"prompt{f' {index}' if index is not None else ''} is {len(ids)} tokens; this server takes at most"
            f" {served.max_prompt_tokens}",
            code="context_length_exceeded",
        )
    try:
        check_prompt(ids, params, served.config)
    except ValueError as e:  # check_prompt tries emptiness and the vocabulary before the length
        valid = bool(ids) and all(0 <= i < served.config.vocab_size for i in ids)
        too_long = valid and len(ids) + params.max_new_tokens > served.config.n_positions
        raise InvalidParameter("prompt", str(e), code="context_length_exceeded" if too_long else None) from None


# ---- responses ------------------------------------------------------------------------------------
def choice(
    index: int, text: str, finish_reason: str | None, token_ids: list[int] | None = None, logprobs: dict | None = None
) -> dict:
    """One choice of a response, or one streamed delta; token_ids only when the request asked for them."""
    out = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    if token_ids is not None:
        out["token_ids"] = list(token_ids)
    return out


def logprobs(scored: list[tuple[int, TokenLogprob | None]], tokenizer, offset: int = 0) -> tuple[dict, int]:
    """OpenAI's logprobs object of a choice (or of a streamed delta) for (token id, its score) pairs
    (None: the first prompt token, which nothing predicts), and the text offset after them.

    tokens: each token's text (vLLM's "token_id:N" without a tokenizer); token_logprobs; top_logprobs:
    {text: logprob} of the k most likely tokens and the token itself (up to k + 1 entries; of two
    tokens with one text, the more likely); text_offset: where each token's text starts, from
    `offset`, counting the texts of the tokens before it (a streamed choice passes on the last end)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token, score in scored:
        text = _token_text(token, tokenizer)
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if score is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        top = {}
        for alternative, value in sorted((*score.top, (token, score.logprob)), key=lambda t: -t[1]):
            top.setdefault(_token_text(alternative, tokenizer), _json_logprob(value))
        out["token_logprobs"].append(_json_logprob(score.logprob))
        out["top_logprobs"].append(top)
    return out, offset


def _token_text(token: int, tokenizer) -> str:
    return tokenizer.decode([token]) if tokenizer is not None else f"token_id:{token}"


def _json_logprob(value: float) -> float:
    """-inf (a token of probability 0 in float32) as vLLM writes it: -9999.0, since JSON has no infinity."""
    return max(value, -9999.0)


def completion(id: str, created: int, model: str, choices: list[dict], **extra) -> dict:
    """A text_completion object: a whole response, or one server-sent event of a streamed one."""
    return {"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices, **extra}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(name: str, created: int, max_model_len: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "gptcore", "max_model_len": max_model_len}


# ---- typed fields ---------------------------------------------------------------------------------
class _Fields:
    """Typed access to a request body's fields; InvalidParameter naming the field on a wrong type."""

    def __init__(self, body: dict):
        self.body = body

    def get(self, name):
        return self.body.get(name)

    def _typed(self, name, default, ok, what):
        value = self.body.get(name)
        if value is None:
            return default
        if not ok(value):
            raise InvalidParameter(name, f"{name} must be {what}, got {_json_type(value)} {_short(value)}")
        return value

    def integer(self, name, default):
        return self._typed(name, default, _is_int, "an integer")

    def number(self, name, default) -> float:
        value = self._typed(name, default, lambda v: _is_int(v) or isinstance(v, float), "a number")
        try:
            return float(value)
        except OverflowError:
            raise InvalidParameter(name, f"{name} is out of range") from None

    def boolean(self, name, default):
        return self._typed(name, default, lambda v: isinstance(v, bool), "a boolean")

    def string(self, name):
        return self._typed(name, None, lambda v: isinstance(v, str), "a string")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
