"""Text generation with a KV cache: prefill each prompt once, then one token per step for every
sequence in the batch on gptcore's decode attention.

    gen = Generator(model, tokenizer)
    gen.generate(["Once upon a time", "The"], max_new_tokens=32, temperature=0.8, top_p=0.95)
    for chunk in gen.stream("Once upon a time", max_new_tokens=32):
        print(chunk.text, end="", flush=True)

`Engine` underneath is continuous batching over a fixed number of cache slots: a prompt is
prefilled alone into a free slot (so a batch of different lengths needs no padding), and each
decode step advances every active slot by one token. `Generator` runs a list of prompts through
it; `gptcore serve` feeds it requests as they arrive. On CUDA the decode step is captured in a
CUDA graph per batch-size bucket; on the CPU each forward is one call into gptcore's core
(gptcore.core_decoder), with the weights in fp32, bf16 or int8.

Sampling follows HF's order: repetition penalty, temperature, top-k, top-p, then one draw from
the request's own generator (seeded by `seed`), so a prompt gets the same tokens alone or in any
batch. temperature 0 is greedy.

Scores (`logprobs`, `prompt_logprobs`: vLLM's names) are the model's own log-probabilities,
log_softmax in float32 of the logits that generate (before repetition penalty, temperature, top-k
and top-p, as vLLM's default), with the k most likely tokens. A request that asks for them runs
every forward alone (its prefill and each decode step over its own cache slot), so its scores and
tokens are bitwise the same alone or in any batch: no matrix product it takes part in has a shape
that depends on the other requests. Prompts are scored from the prefill itself; `max_new_tokens=0`
with `prompt_logprobs` scores a prompt without generating.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from gptcore.core_decoder import WEIGHT_FORMATS, CoreDecoder, unsupported
from gptcore.model import GPT

MAX_LOGPROBS = 20  # the most alternatives a token's score lists (OpenAI's and vLLM's limit)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # HF/CTRL: seen tokens' logits divided (> 0) or multiplied (< 0) by it
    stop_ids: tuple[int, ...] = ()  # generation ends at any of these (not included in the output)
    stop: tuple[str, ...] = ()  # ... or when the text contains one of these (text cut before it)
    seed: int | None = None  # None: a fresh random seed
    logprobs: int | None = None  # score each generated token, with this many alternatives (None: off)
    prompt_logprobs: int | None = None  # score each prompt token after the first, alike (None: off)

    def __post_init__(self):
        for name in ("stop_ids", "stop"):  # lists from JSON or argparse are fine
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))

    def check(self, vocab_size: int) -> None:
        """ValueError naming the bad parameter and its valid range."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < (self.prompt_logprobs is None):
            raise ValueError(
                f"max_new_tokens must be a positive integer (0 only to score a prompt, with prompt_logprobs),"
                f" got {self.max_new_tokens!r}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not (isinstance(k, int) and 0 <= k <= MAX_LOGPROBS):
                raise ValueError(f"{name} must be an integer in [0, {MAX_LOGPROBS}] or None (off), got {k!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not isinstance(self.top_k, int) or not 0 <= self.top_k <= vocab_size:
            raise ValueError(f"top_k must be an integer in [0, vocab size = {vocab_size}] (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1: off), got {self.repetition_penalty}")
        for i in self.stop_ids:
            if not isinstance(i, int) or not 0 <= i < vocab_size:
                raise ValueError(f"stop id {i!r} is outside the vocabulary [0, {vocab_size})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)!r}")

    @property
    def scored(self) -> bool:
        """Whether the request asks for scores (and so runs its forwards alone)."""
        return self.logprobs is not None or self.prompt_logprobs is not None


@dataclass(frozen=True)
class TokenLogprob:
    """A token's score: its log-probability under the model and the `top` most likely tokens at
    that position as (id, logprob), most likely first (the token itself may be among them)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Chunk:
    """What one step adds to a sequence: the token, the text it completes (may be "" while a
    multi-byte character or a possible stop string is pending), and, on the last chunk, why it ended."""

    token: int | None
    text: str
    finish_reason: str | None = None  # "stop" (stop id or string) or "length"
    logprob: TokenLogprob | None = None  # the step's token scored (a stop id too), when asked for


@dataclass
class GenerationResult:
    tokens: list[int]  # generated ids, without the stop id that ended it
    text: str | None  # decoded continuation, cut before a stop string; None without a tokenizer
    finish_reason: str
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None  # each generated token's (the stop id's too), when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # each prompt token's (None for the first)


class KVCache:
    """Keys and values of `slots` sequences of up to max_len positions, for every layer (and the
    heads the model computes on this rank, after gptcore.parallel.parallelize), with each
    slot's valid length. Slot rows are the outermost dimension, so slots [0, n) are one contiguous
    block that decode attention reads directly."""

    def __init__(self, model: GPT, slots: int, max_len: int, device, dtype):
        c = model.config
        heads = model.transformer.h[0].attn.n_head  # all, or a tensor-parallel rank's share: sharded alike
        shape = (slots, heads, max_len, c.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(c.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(c.n_layer)]
        self.lens = torch.ones(slots, dtype=torch.int32, device=device)  # decode attention's lengths
        # Index tensors a captured decode step reads: they must outlive every CUDA graph of it (a
        # temporary freed after capture would be replayed from reused memory).
        self.rows = torch.arange(slots, device=device)
        self.heads = torch.arange(heads, device=device)
        self.positions = torch.zeros(slots, 1, dtype=torch.long, device=device)  # decode step's positions
        self.ops = model.ops

    def prefill_attend(self, slots: list[int]):
        """attend(layer, q, k, v) for whole prompts [len(slots), H, T, D] going into `slots`."""
        index = torch.tensor(slots, device=self.lens.device)

        def attend(layer, q, k, v):
            T = q.shape[2]
            self.k[layer][:, :, :T].index_copy_(0, index, k)
            self.v[layer][:, :, :T].index_copy_(0, index, v)
            return self.ops.attention(q, k, v, causal=True)

        return attend

    def decode_attend(self, stop: int, start: int = 0):
        """attend(layer, q, k, v) for one new token [stop - start, H, 1, D] per slot start..stop-1 at
        self.positions[start:stop], with self.lens[start:stop] = positions + 1."""
        slots, H, max_len, D = self.k[0].shape
        heads, span = self.heads, slice(start, stop)
        lens = self.lens[span]
        rows = []

        def attend(layer, q, k, v):
            if layer == 0:  # computed inside the forward, so a CUDA graph of it reads the current positions
                # Row (b, h, positions[b]) of a layer's cache viewed as [slots * H * max_len, D]: one
                # index_copy_ per layer (advanced-index assignment is ~50x slower on the CPU).
                rows[:] = [((self.rows[span, None] * H + heads) * max_len + self.positions[span]).reshape(-1)]
            self.k[layer].view(-1, D).index_copy_(0, rows[0], k.reshape(-1, D))
            self.v[layer].view(-1, D).index_copy_(0, rows[0], v.reshape(-1, D))
            return self.ops.attention_decode(q, self.k[layer][span], self.v[layer][span], lens)

        return attend


def check_prompt(prompt: Sequence[int], params: SamplingParams, config) -> None:
    """ValueError for an empty prompt, out-of-vocabulary ids, or one too long for the model."""
    if len(prompt) == 0:
        raise ValueError("empty prompt: give at least one token (e.g. the tokenizer's end-of-document id)")
    bad = [i for i in prompt if not 0 <= i < config.vocab_size]
    if bad:
        raise ValueError(f"prompt token {bad[0]} is outside the vocabulary [0, {config.vocab_size})")
    if len(prompt) + params.max_new_tokens > config.n_positions:
        raise ValueError(
            f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) ="
            f" {len(prompt) + params.max_new_tokens} exceeds the model's {config.n_positions} positions;"
            " shorten the prompt or lower max_new_tokens"
        )


class _TextStream:
    """Incremental detokenization with stop strings: text is released once it is complete UTF-8 and
    cannot be the start of a stop string; decoding starts a few prompt tokens back so tokenizers
    that drop a leading space at the start of a text (SentencePiece) decode the continuation right."""

    def __init__(self, tokenizer, prompt: Sequence[int], stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.context = list(prompt[-4:])
        self.context_text = tokenizer.decode(self.context)
        self.ids: list[int] = []
        self.text = ""  # the continuation so far (cut before a stop string once one is seen)
        self.sent = 0

    def push(self, token: int) -> tuple[str, bool]:
        """The newly releasable text after token, and whether a stop string has appeared."""
        self.ids.append(token)
        full = self.tokenizer.decode(self.context + self.ids)
        text = full[len(self.context_text) :] if full.startswith(self.context_text) else full
        for s in self.stop:
            if (at := text.find(s, max(0, self.sent - len(s)))) >= 0:
                self.text = text[:at]
                return self.flush(), True
        self.text = text
        hold = len(text) - len(text.rstrip("\ufffd"))  # an incomplete multi-byte character, probably
        for s in self.stop:
            hold = max(hold, next((n for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), 0))
        end = max(self.sent, len(text) - hold)
        delta, self.sent = text[self.sent : end], end
        return delta, False

    def flush(self) -> str:
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta


@dataclass(eq=False)
class Request:
    """One sequence being generated. on_chunk(chunk) is called from the engine's thread for every
    step; result is set when it finishes."""

    prompt: list[int]
    params: SamplingParams
    on_chunk: object = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # set by the prefill when asked for
    result: GenerationResult | None = None
    slot: int = -1
    generator: torch.Generator | None = None
    text: _TextStream | None = None


class Engine:
    """Continuous batching over `slots` KV-cache slots of max_len positions (default: the model's).

    On the CPU every forward runs in gptcore's core (gptcore.core_decoder) with the weights in
    `weights` format ("fp32", "bf16" or "int8"; default fp32); core=False keeps the PyTorch
    forward (model.forward_cached over a KVCache), the path for GPUs and sharded models."""

    def __init__(
        self,
        model: GPT,
        tokenizer=None,
        slots: int = 16,
        max_len: int | None = None,
        cuda_graph: bool | None = None,
        weights: str | None = None,
        core: bool | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_len = max_len or self.config.n_positions
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if weights is not None and weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
        why = unsupported(model)
        if core is None:
            core = why is None
        if weights not in (None, "fp32") and not core:
            raise ValueError(f"weights={weights} needs generation in the core, which cannot run this model: {why}")
        self.core = CoreDecoder(model, slots, self.max_len, weights or "fp32") if core else None
        self.cache = None if core else KVCache(model, slots, self.max_len, self.device, self.dtype)
        self.slots: list[Request | None] = [None] * slots
        self.seen = torch.zeros(slots, self.config.vocab_size, dtype=torch.bool, device=self.device)
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._tokens = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.lock = threading.Lock()  # held by whoever drives add/step

    # ---- requests ------------------------------------------------------------------------------
    @property
    def active(self) -> list[Request]:
        return [r for r in self.slots if r is not None]

    def free_slots(self) -> int:
        return self.slots.count(None)

    def add(self, *requests: Request) -> None:
        """Check the requests (all before any work), put each in the lowest free slot, prefill the
        prompts (those of one length in one forward) and take each one's first token (which may
        already finish it). ValueError on a bad request or when there are not enough free slots."""
        for request in requests:
            params = request.params
            params.check(self.config.vocab_size)
            check_prompt(request.prompt, params, self.config)
            if len(request.prompt) + params.max_new_tokens > self.max_len:
                raise ValueError(f"prompt + max_new_tokens exceeds this engine's {self.max_len} cache positions")
            if params.stop and self.tokenizer is None:
                raise ValueError("stop strings need a tokenizer")
        if len(requests) > self.free_slots():
            raise ValueError(f"{len(requests)} requests for {self.free_slots()} free slots")
        for request in requests:
            params = request.params
            request.slot = slot = self.slots.index(None)
            request.generator = torch.Generator(device=self.device)
            if params.seed is None:
                request.generator.seed()
            else:
                request.generator.manual_seed(params.seed)
            if self.tokenizer is not None:
                request.text = _TextStream(self.tokenizer, request.prompt, params.stop)
            self.slots[slot] = request
            self.seen[slot] = False
            self.seen[slot, request.prompt] = True
        groups: dict[object, list[Request]] = {}  # prompts of one length in one forward; a scored one alone
        for request in requests:
            groups.setdefault(("alone", request.slot) if request.params.scored else len(request.prompt), []).append(
                request
            )
        for group in groups.values():
            self._prefill(group)

    def cancel(self, request: Request) -> None:
        """Drop an unfinished request (a client went away); its slot is free for the next one."""
        if request.result is None and 0 <= request.slot < len(self.slots) and self.slots[request.slot] is request:
            self.slots[request.slot] = None
            request.result = self._result(request, None, "cancelled")

    def step(self) -> None:
        """One decode step for every active slot: the slots that are not scored together, then each
        scored one alone."""
        active = self.active
        shared = [r for r in active if not r.params.scored]
        if shared and self.core is not None:
            self._advance(shared, self._core_decode(shared))
        elif shared:
            n = max(r.slot for r in shared) + 1
            tokens = torch.zeros(n, 1, dtype=torch.long)
            positions = torch.zeros(n, 1, dtype=torch.long)
            # A scored slot below n gets its own token and position too: the row its cache receives
            # here is written again by its own forward below, not left as garbage at position 0.
            for r in active:
                if r.slot < n:
                    tokens[r.slot, 0] = r.tokens[-1]
                    positions[r.slot, 0] = len(r.prompt) + len(r.tokens) - 1
            logits = self._decode(n, tokens, positions)
            self._advance(shared, logits[[r.slot for r in shared]])
        for r in active:
            if r.params.scored:
                self._advance([r], self._decode_alone(r))

    def run(self, requests: Sequence[Request]) -> None:
        """Generate all requests to the end, admitting waiting ones as slots free up."""
        waiting = list(requests)
        with self.lock:
            while waiting or self.active:
                admit, waiting = waiting[: self.free_slots()], waiting[self.free_slots() :]
                if admit:
                    self.add(*admit)
                self.step()

    # ---- internals -----------------------------------------------------------------------------
    def _decode(self, n: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        if self.cuda_graph:
            n = next(b for b in self._buckets() if b >= n)  # rows past the active ones are free slots
            tokens = torch.cat([tokens, tokens.new_zeros(n - len(tokens), 1)])
            positions = torch.cat([positions, positions.new_zeros(n - len(positions), 1)])
        self._tokens[:n].copy_(tokens, non_blocking=True)
        cache.positions[:n].copy_(positions, non_blocking=True)
        cache.lens[:n].copy_((positions[:, 0] + 1).to(torch.int32), non_blocking=True)
        with torch.no_grad():
            if not self.cuda_graph:
                return self.model.forward_cached(self._tokens[:n], cache.positions[:n], cache.decode_attend(n))
            if n not in self._graphs:
                self._graphs[n] = self._capture(n)
            graph, logits = self._graphs[n]
            graph.replay()
            return logits

    def _buckets(self) -> list[int]:
        slots = len(self.slots)
        return sorted({min(2**i, slots) for i in range(slots.bit_length() + 1)})

    def _capture(self, n: int):
        """A CUDA graph of the decode step for slots 0..n-1 over the static token/position/length
        buffers (warmed up on a side stream first, as torch.cuda.graphs requires)."""
        args = (self._tokens[:n], self.cache.positions[:n], self.cache.decode_attend(n))
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model.forward_cached(*args)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.model.forward_cached(*args)
        return graph, logits

    def _core_decode(self, requests: list[Request]) -> torch.Tensor:
        """One decode step of `requests` in the core: logits [len(requests), vocab_size]."""
        positions = [len(r.prompt) + len(r.tokens) - 1 for r in requests]
        return self.core.forward(
            [r.tokens[-1] for r in requests], [r.slot for r in requests], positions, [1] * len(requests)
        )

    def _decode_alone(self, r: Request) -> torch.Tensor:
        """One decode step of a scored request over its own slot: logits [1, vocab_size]."""
        if self.core is not None:
            return self._core_decode([r])
        cache, slot = self.cache, r.slot
        position = len(r.prompt) + len(r.tokens) - 1
        self._tokens[slot, 0] = r.tokens[-1]
        cache.positions[slot, 0] = position
        cache.lens[slot] = position + 1
        with torch.no_grad():
            tokens, positions = self._tokens[slot : slot + 1], cache.positions[slot : slot + 1]
            return self.model.forward_cached(tokens, positions, cache.decode_attend(slot + 1, slot))

    def _prefill(self, group: list[Request]) -> None:
        """Prompts of one length (or one scored prompt) into their slots in one forward, then each one's
        first token; a scored prompt gets its prompt_logprobs from the same forward."""
        scored = group[0].params.prompt_logprobs is not None  # then the group is that one request
        if self.core is not None:
            tokens = [t for r in group for t in r.prompt]
            lens = [len(r.prompt) for r in group]
            logits = self.core.forward(tokens, [r.slot for r in group], [0] * len(group), lens, every_position=scored)
            if scored:
                logits = logits[None]  # [1, T, vocab_size], as the forward below gives it
        else:
            logits = self._forward_prefill(group, scored)
        if scored:
            r = group[0]
            r.prompt_logprobs = [None, *score_tokens(logits[0, :-1], r.prompt[1:], r.params.prompt_logprobs)]
            logits = logits[:, -1]
            if r.params.max_new_tokens == 0:  # scoring the prompt only
                self._finish(r, Chunk(None, "", "length"))
                return
        self._advance(group, logits)

    def _forward_prefill(self, group: list[Request], scored: bool) -> torch.Tensor:
        """The PyTorch forward of prompts of one length into their cache slots."""
        with torch.no_grad():
            idx = torch.tensor([r.prompt for r in group], dtype=torch.long, device=self.device)
            positions = torch.arange(idx.shape[1], device=self.device)
            attend = self.cache.prefill_attend([r.slot for r in group])
            return self.model.forward_cached(idx, positions, attend, every_position=scored)

    def _advance(self, requests: list[Request], logits: torch.Tensor) -> None:
        rows = [r.slot for r in requests]
        penalized = any(r.params.repetition_penalty != 1 for r in requests)  # else no need to gather seen rows
        next_ids = sample_logits(
            logits,
            [r.params for r in requests],
            [r.generator for r in requests],
            self.seen[rows] if penalized else None,
        ).tolist()
        if penalized:  # seen is read for penalized requests only (a slot's row is reset with each prompt)
            self.seen[rows, next_ids] = True
        for i, (r, token) in enumerate(zip(requests, next_ids)):
            k = r.params.logprobs
            self._emit(r, token, None if k is None else score_tokens(logits[i : i + 1], [token], k)[0])

    def _emit(self, r: Request, token: int, scored: TokenLogprob | None) -> None:
        params = r.params
        if scored is not None:
            r.logprobs.append(scored)
        if token in params.stop_ids:
            chunk = Chunk(None, r.text.flush() if r.text else "", "stop", scored)
        else:
            r.tokens.append(token)
            text, stopped = r.text.push(token) if r.text else ("", False)
            reason = "stop" if stopped else "length" if len(r.tokens) >= params.max_new_tokens else None
            if reason == "length" and r.text:
                text += r.text.flush()
            chunk = Chunk(token, text, reason, scored)
        if chunk.finish_reason:
            self._finish(r, chunk)
        elif r.on_chunk is not None:
            r.on_chunk(chunk)

    def _finish(self, r: Request, chunk: Chunk) -> None:
        """r's last chunk: its result set, its slot freed, the chunk delivered."""
        r.result = self._result(r, r.text.text if r.text else None, chunk.finish_reason)
        self.slots[r.slot] = None
        if r.on_chunk is not None:
            r.on_chunk(chunk)

    @staticmethod
    def _result(r: Request, text: str | None, finish_reason: str) -> GenerationResult:
        logprobs = None if r.params.logprobs is None else list(r.logprobs)
        return GenerationResult(list(r.tokens), text, finish_reason, len(r.prompt), logprobs, r.prompt_logprobs)


def score_tokens(logits: torch.Tensor, tokens: Sequence[int], k: int) -> list[TokenLogprob]:
    """Each row of logits [R, V] scored: log_softmax in float32, the logprob of tokens[r] and the k
    most likely tokens of row r."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0].tolist()
    if k == 0:
        return [TokenLogprob(t, lp) for t, lp in zip(tokens, chosen)]
    if k == 1:  # a max is cheaper than a top-k (lm-eval's is_greedy asks for this one)
        values, ids = (t[:, None] for t in logprobs.max(dim=-1))
    else:
        values, ids = logprobs.topk(k, dim=-1)
    return [
        TokenLogprob(t, lp, tuple(zip(row_ids, row_values)))
        for t, lp, row_ids, row_values in zip(tokens, chosen, ids.tolist(), values.tolist())
    ]


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits [R, V].argmax(-1), the first of equal maxima (a NaN counts as the largest). On the CPU
    NumPy's: ~4 us for GPT-2's 50k vocabulary against torch's ~44 us, a few percent of a decode step."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(logits.detach().numpy().argmax(-1))
    return logits.argmax(-1)


def sample_logits(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token of each row of logits [R, V]: repetition penalty over seen [R, V] (bool), then
    greedy (temperature 0) or temperature, top-k, top-p and one uniform draw from the row's
    generator. Every operation is row-wise, so a row's token does not depend on the other rows."""
    logits = logits.float()
    if seen is not None:
        penalty = torch.tensor([p.repetition_penalty for p in params], device=logits.device)[:, None]
        if bool((penalty != 1).any()):
            penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
            logits = torch.where(seen, penalized, logits)
    out = argmax_rows(logits)
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if not sampled:
        return out
    rows = logits[sampled] / torch.tensor([params[i].temperature for i in sampled], device=logits.device)[:, None]
    # Sorted descending once: top-k keeps ranks < k, top-p keeps a token while the mass before it < top_p.
    sorted_logits, order = rows.sort(dim=-1, descending=True)
    rank = torch.arange(rows.shape[-1], device=rows.device)
    top_k = torch.tensor([params[i].top_k or rows.shape[-1] for i in sampled], device=rows.device)[:, None]
    sorted_logits = sorted_logits.masked_fill(rank >= top_k, float("-inf"))
    top_p = torch.tensor([params[i].top_p for i in sampled], device=rows.device)[:, None]
    probs = torch.softmax(sorted_logits, dim=-1)
    keep = (probs.cumsum(-1) - probs < top_p) | (rank == 0)
    probs = probs.masked_fill(~keep, 0.0)
    cdf = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=generators[i], device=rows.device) for i in sampled])
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=rows.shape[-1] - 1)
    # A draw past the last kept token's cdf (rounding) falls back to the last kept one.
    pick = torch.minimum(pick, keep.sum(-1, keepdim=True) - 1)
    out[sampled] = order.gather(-1, pick)[:, 0]
    return out


class Generator:
    """A model (and optional tokenizer) ready to generate; prompts are token lists or, with a
    tokenizer, strings. engine: the Engine to run on (default: one of max_batch slots, made when
    first needed)."""

    def __init__(
        self,
        model: GPT,
        tokenizer=None,
        max_batch: int = 16,
        cuda_graph: bool | None = None,
        engine: Engine | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.cuda_graph = max_batch, cuda_graph
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.model, self.tokenizer, self.max_batch, cuda_graph=self.cuda_graph)
        return self._engine

    def params(self, **kwargs) -> SamplingParams:
        """SamplingParams from keyword arguments, with the tokenizer's end-of-document id as the
        default stop id; ValueError on a bad value or an unknown name."""
        names = {f.name for f in dataclasses.fields(SamplingParams)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown generation parameter {unknown[0]!r}; choose from {', '.join(sorted(names))}")
        if "stop_ids" not in kwargs and getattr(self.tokenizer, "eod_id", None) is not None:
            kwargs["stop_ids"] = (self.tokenizer.eod_id,)
        params = SamplingParams(**kwargs)
        params.check(self.model.config.vocab_size)
        return params

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; give token ids or load one")
            return self.tokenizer.encode(prompt)
        return [int(i) for i in prompt]

    def generate(self, prompts, **kwargs) -> list[GenerationResult]:
        """Results for a list of prompts (a single prompt: a list of one), batched up to max_batch."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = self.params(**kwargs)
        requests = [Request(self.encode(p), params) for p in prompts]
        for r in requests:  # all checked before any work
            check_prompt(r.prompt, params, self.model.config)
        self.engine.run(requests)
        return [r.result for r in requests]

    def stream(self, prompt, **kwargs) -> Iterator[Chunk]:
        """Chunks of one prompt's continuation as they are produced."""
        params = self.params(**kwargs)
        chunks: list[Chunk] = []
        request = Request(self.encode(prompt), params, on_chunk=chunks.append)
        engine = self.engine
        with engine.lock:
            engine.add(request)
            try:
                while True:
                    yield from chunks
                    if request.result is not None:
                        return
                    chunks.clear()
                    engine.step()
            finally:  # a consumer that stops reading early frees the slot
                engine.cancel(request)


def sample(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_id: int | None = None,
) -> list[int]:
    """The prompt's continuation (new ids only), at most max_new_tokens, ending early at stop_id;
    an empty prompt starts from stop_id (the end-of-document token), as GPT-2's unconditional samples do."""
    prompt = list(prompt_ids) or [0 if stop_id is None else stop_id]
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k or 0,
        stop_ids=() if stop_id is None else (stop_id,),
        seed=seed,
    )
    request = Request(prompt, params)
    was_training = model.training
    Engine(model, slots=1, max_len=len(prompt) + max_new_tokens).run([request])
    model.train(was_training)
    return request.result.tokens
