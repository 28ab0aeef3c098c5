"""`gptcore serve`: an OpenAI-style completions server over `generate.Engine`, standard library only.

    server = Server(model, tokenizer, port=8000).start()   # background threads; server.url
    ...
    server.shutdown()

Endpoints: `GET /health`, `GET /v1/models` (and `/v1/models/<name>`), `POST /v1/completions`
(non-streaming, or server-sent events with `"stream": true`).

Threads: ThreadingHTTPServer answers each connection on its own thread; those threads parse and
check a request, tokenize it and put it on a bounded queue (503 when full). One scheduler thread
drives the engine (continuous batching): at every step boundary it moves waiting requests into free
cache slots, drops cancelled ones (a client that went away) and runs one decode step for all active
slots. Tokens come back to the connection's thread through a per-request queue.

Request fields (OpenAI's, plus vLLM's extensions): prompt (a string, a list of token ids, or a list of
either: several prompts, one choice each, batched together), max_tokens (16), temperature (1.0; 0 is
greedy), top_p, top_k (0 or -1: off), repetition_penalty, stop (a string or a list), stop_token_ids
(added to the tokenizer's end-of-document id unless ignore_eos), seed, stream, stream_options.include_usage, echo,
return_token_ids (default: true without a tokenizer), model (must be the served name when given),
user (ignored). n and best_of must be 1; logprobs, suffix, logit_bias and presence/frequency
penalties other than their defaults are refused with 400 (not supported). Unknown fields are refused
with 400 naming them, as vLLM does, so a misspelt parameter is not silently ignored.
"""

from __future__ import annotations

import json
import logging
import queue
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import torch

from gptcore.generate import Chunk, Engine, Request, SamplingParams, check_prompt

log = logging.getLogger("gptcore.serve")

COMPLETIONS, HEALTH, MODELS = "/v1/completions", "/health", "/v1/models"

FIELDS = frozenset(
    {
        *("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop"),
        *("stop_token_ids", "seed", "stream", "stream_options", "n", "best_of", "echo", "logprobs"),
        *("presence_penalty", "frequency_penalty", "logit_bias", "suffix", "user", "return_token_ids"),
        "ignore_eos",
    }
)

_SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes


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


@dataclass(eq=False)
class _Job:
    """One HTTP completion request: its prompts' engine requests and the queue their chunks arrive on
    as (choice index, Chunk) or an APIError."""

    requests: list[Request]
    prompt_texts: list[str]
    stream: bool = False
    echo: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


class _Sink:
    """A request's on_chunk: forwards the engine's chunks (or an error) to its job's queue."""

    def __init__(self, job: _Job, index: int):
        self.job, self.index = job, index

    def __call__(self, chunk: Chunk) -> None:
        self.job.events.put((self.index, chunk))

    def error(self, err: APIError) -> None:
        self.job.events.put(err)


class Server:
    """An OpenAI-style HTTP completions server for one model.

    host: "127.0.0.1" (this machine only) unless told otherwise ("0.0.0.0" or "::" to expose it);
    port 0 picks a free one (see `url`). max_batch: cache slots, i.e. sequences decoded together;
    max_queue: requests (prompts) waiting for a slot before new ones get 503; max_prompt_tokens:
    longer prompts get 400 (default: whatever fits the model's positions with max_tokens);
    max_body_bytes: larger request bodies get 413. The socket is bound on construction (OSError when
    the port is taken); `start()` starts serving in background threads, `serve_forever()` blocks
    until Ctrl-C or SIGTERM.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_batch: int = 8,
        max_queue: int = 64,
        max_prompt_tokens: int | None = None,
        model_name: str = "gptcore",
        max_body_bytes: int = 1 << 20,
        cuda_graph: bool | None = None,
    ):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_body_bytes", max_body_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_prompt_tokens is not None and (not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1):
            raise ValueError(f"max_prompt_tokens must be a positive integer or None, got {max_prompt_tokens!r}")
        self.tokenizer = tokenizer
        self.config = model.config
        self.engine = Engine(model, tokenizer, slots=max_batch, cuda_graph=cuda_graph)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_prompt_tokens, self.max_body_bytes = max_prompt_tokens, max_body_bytes
        self.model_name = model_name
        self.eod_id = getattr(tokenizer, "eod_id", None)
        self.created = int(time.time())
        self.max_active_seen = 0  # the most sequences one decode step has advanced together
        self.counts = dict(requests=0, completed=0, cancelled=0, queue_full=0, errors=0)
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._to_cancel: list[Request] = []
        self._stopping = False
        self._scheduler: threading.Thread | None = None
        self._http_thread: threading.Thread | None = None
        http_class = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            self._http = http_class((host, port), _Handler)
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        self._http.app = self
        self.host, self.port = host, self._http.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Server:
        if self._scheduler is None:
            self._scheduler = threading.Thread(target=self._schedule, name="gptcore-serve-engine", daemon=True)
            self._http_thread = threading.Thread(
                target=self._http.serve_forever, kwargs=dict(poll_interval=0.1), name="gptcore-serve-http", daemon=True
            )
            self._scheduler.start()
            self._http_thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, stop the engine and answer whatever was still waiting or running with 503."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        if self._http_thread is not None:
            self._http.shutdown()
        self._http.server_close()
        if self._scheduler is not None:
            self._scheduler.join()
        with self.engine.lock, self._cond:
            left = list(self._waiting) + self.engine.active
            self._waiting.clear()
            for r in left:
                self.engine.cancel(r)
                r.on_chunk.error(APIError(503, "the server is shutting down", code="shutting_down"))

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (or SIGTERM, from the main thread), then shut down cleanly."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
        self.start()
        try:
            while self._http_thread.is_alive():
                self._http_thread.join(0.5)
        except KeyboardInterrupt:
            log.info("shutting down")
        finally:
            self.shutdown()
            if main:
                signal.signal(signal.SIGTERM, previous)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---- state ---------------------------------------------------------------------------------
    def health(self) -> dict:
        with self._cond:
            queued = len(self._waiting)
        ok = self._scheduler is not None and self._scheduler.is_alive() and not self._stopping
        return {
            "status": "ok" if ok else "unavailable",
            "model": self.model_name,
            "active": sum(r is not None for r in self.engine.slots),
            "queued": queued,
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
        }

    def model_card(self) -> dict:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "gptcore",
            "max_model_len": self.config.n_positions,
        }

    def _count(self, name: str) -> None:
        with self._cond:
            self.counts[name] += 1

    # ---- requests ------------------------------------------------------------------------------
    def prepare(self, body: object) -> _Job:
        """A job from a parsed /v1/completions body; APIError (400/404) for anything wrong with it."""
        if not isinstance(body, dict):
            raise APIError(400, f"the request body must be a JSON object, got {_json_type(body)}")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise APIError(
                400,
                f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))};"
                f" supported: {', '.join(sorted(FIELDS))}",
                param=unknown[0],
                code="unknown_field",
            )
        f = _Fields(body)
        model = f.string("model")
        if model is not None and model != self.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        if f.integer("n", 1) != 1:
            raise APIError(400, "only n=1 is supported (send several prompts for several completions)", "n")
        if f.integer("best_of", 1) != 1:
            raise APIError(400, "only best_of=1 is supported", "best_of")
        if f.get("logprobs") is not None:
            raise APIError(400, "logprobs are not supported", "logprobs", code="unsupported_parameter")
        for name in ("presence_penalty", "frequency_penalty"):
            if f.number(name, 0.0) != 0:
                raise APIError(
                    400, f"{name} is not supported; use repetition_penalty", name, code="unsupported_parameter"
                )
        if f.get("logit_bias") not in (None, {}):
            raise APIError(400, "logit_bias is not supported", "logit_bias", code="unsupported_parameter")
        if f.get("suffix") not in (None, ""):
            raise APIError(400, "suffix is not supported", "suffix", code="unsupported_parameter")
        f.string("user")
        stream = f.boolean("stream", False)
        options = f.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise APIError(400, f"stream_options must be an object, got {_json_type(options)}", "stream_options")
        options = options or {}
        if set(options) - {"include_usage"}:
            raise APIError(400, "stream_options takes only include_usage", "stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise APIError(400, "stream_options.include_usage must be a boolean", "stream_options")

        max_tokens = f.integer("max_tokens", 16)
        if max_tokens < 1:
            raise APIError(400, f"max_tokens must be a positive integer, got {max_tokens}", "max_tokens")
        top_k = f.integer("top_k", 0)
        stop = f.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        elif stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise APIError(400, f"stop must be a string or a list of strings, got {_json_type(stop)}", "stop")
        if stop and self.tokenizer is None:
            raise APIError(400, "stop strings need a tokenizer and this server has none; use stop_token_ids", "stop")
        stop_ids = f.get("stop_token_ids") or []
        if not (isinstance(stop_ids, list) and all(_is_int(i) for i in stop_ids)):
            raise APIError(400, "stop_token_ids must be a list of integers", "stop_token_ids")
        ignore_eos = f.boolean("ignore_eos", False)
        seed = f.get("seed")
        if seed is not None and not (_is_int(seed) and _SEED_RANGE[0] <= seed < _SEED_RANGE[1]):
            raise APIError(400, f"seed must be an integer in [-2**63, 2**64) or null, got {seed!r}", "seed")
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=f.number("temperature", 1.0),
            top_k=0 if top_k == -1 else top_k,
            top_p=f.number("top_p", 1.0),
            repetition_penalty=f.number("repetition_penalty", 1.0),
            stop_ids=tuple(dict.fromkeys(([] if self.eod_id is None or ignore_eos else [self.eod_id]) + stop_ids)),
            stop=tuple(stop or ()),
            seed=seed,
        )
        try:
            params.check(self.config.vocab_size)
        except ValueError as e:
            names = ("temperature", "top_k", "top_p", "repetition_penalty", "stop strings", "stop id")
            param = next((n for n in names if str(e).startswith(n)), None)
            param = {"stop strings": "stop", "stop id": "stop_token_ids"}.get(param, param)
            raise APIError(400, str(e), param) from None

        echo = f.boolean("echo", False)
        job = _Job(
            requests=[],
            prompt_texts=[],
            stream=stream,
            echo=echo,
            include_usage=include_usage and stream,
            return_token_ids=f.boolean("return_token_ids", self.tokenizer is None),
        )
        prompts = self._prompts(f.get("prompt"))
        for i, prompt in enumerate(prompts):
            ids = prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt)
            if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
                raise APIError(
                    400,
                    f"prompt{f' {i}' if len(prompts) > 1 else ''} is {len(ids)} tokens; this server takes at most"
                    f" {self.max_prompt_tokens}",
                    "prompt",
                    code="context_length_exceeded",
                )
            try:
                check_prompt(ids, params, self.config)
            except ValueError as e:
                code = "context_length_exceeded" if "exceeds" in str(e) else None
                raise APIError(400, str(e), "prompt", code=code) from None
            if echo:
                text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids) if self.tokenizer else ""
            else:
                text = ""
            job.prompt_texts.append(text)
            job.requests.append(Request(ids, params, on_chunk=_Sink(job, i)))
        return job

    def _prompts(self, prompt) -> list[str | list[int]]:
        what = "prompt must be a string, a list of token ids, or a list of strings or of token-id lists"
        if prompt is None:
            raise APIError(400, "prompt is required", "prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(i) for i in prompt)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = prompt
            for p in prompts:
                if not (isinstance(p, str) or (isinstance(p, list) and all(_is_int(i) for i in p))):
                    raise APIError(400, f"{what}; got a list holding {_json_type(p)}", "prompt")
        else:
            raise APIError(400, f"{what}; got {_json_type(prompt) if prompt != [] else 'an empty list'}", "prompt")
        if any(isinstance(p, str) for p in prompts) and self.tokenizer is None:
            raise APIError(400, "this server has no tokenizer: send the prompt as token ids", "prompt")
        if len(prompts) > self.max_queue:
            raise APIError(
                400, f"{len(prompts)} prompts; this server takes at most {self.max_queue} a request", "prompt"
            )
        return prompts

    def submit(self, job: _Job) -> None:
        """Queue a job's requests, all or none: APIError 503 when the queue has no room for them."""
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) + len(job.requests) > self.max_queue:
                self.counts["queue_full"] += 1
                raise APIError(
                    503, f"the server is busy ({len(self._waiting)} requests queued); retry later", code="queue_full"
                )
            self._waiting.extend(job.requests)
            self.counts["requests"] += 1
            self._cond.notify_all()

    def cancel(self, job: _Job) -> None:
        """Drop a job whose client went away: out of the queue now, out of its slot at the next step."""
        with self._cond:
            dropped = 0
            for r in job.requests:
                if r in self._waiting:
                    self._waiting.remove(r)
                    dropped += 1
                elif r.result is None:
                    self._to_cancel.append(r)
                    dropped += 1
            if dropped:
                self.counts["cancelled"] += 1
                self._cond.notify_all()

    # ---- the engine's thread -------------------------------------------------------------------
    def _schedule(self) -> None:
        engine = self.engine
        if engine.device.type == "cuda":  # gptcore's kernels run on the thread's current device
            torch.cuda.set_device(engine.device)
        while True:
            with self._cond:
                while not (self._waiting or self._to_cancel or engine.active or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    return
            with engine.lock:
                try:
                    self._iteration()
                except Exception:
                    log.exception("generation failed; failing the %d active requests", len(engine.active))
                    self._fail(engine.active, "generation failed: internal server error")

    def _iteration(self) -> None:
        """Admit waiting requests into free slots, drop cancelled ones, then one decode step for all."""
        engine = self.engine
        with self._cond:
            take = [self._waiting.popleft() for _ in range(min(engine.free_slots(), len(self._waiting)))]
            cancel, self._to_cancel = self._to_cancel, []
        for r in take:
            self._admit(r)
        for r in cancel:
            engine.cancel(r)
        self.max_active_seen = max(self.max_active_seen, len(engine.active))
        engine.step()

    def _admit(self, r: Request) -> None:
        try:
            self.engine.add(r)
        except ValueError as e:  # checked in prepare(), so unexpected; answered as a bad request anyway
            self.engine.cancel(r)
            r.on_chunk.error(APIError(400, str(e), "prompt"))
        except Exception:
            log.exception("prefill failed")
            self._fail([r], "generation failed: internal error in the prefill")

    def _fail(self, requests: list[Request], message: str) -> None:
        self._count("errors")
        for r in requests:
            if r.result is None:
                self.engine.cancel(r)
                r.on_chunk.error(APIError(500, message, code="internal_error"))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: Server

    def handle_error(self, request, client_address):
        """A client that resets its connection is no error of ours; anything else is logged."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("connection from %s dropped", client_address)
        else:
            log.exception("error handling a connection from %s", client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Fields:
    """Typed access to a request body's fields; APIError 400 naming the field on a wrong type."""

    def __init__(self, body: dict):
        self.body = body

    def get(self, name):
        return self.body.get(name)

    def _typed(self, name, default, ok, what):
        value = self.body.get(name)
        if value is None:
            return default
        if not ok(value):
            raise APIError(400, f"{name} must be {what}, got {_json_type(value)} {_short(value)}", name)
        return value

    def integer(self, name, default):
        return self._typed(name, default, _is_int, "an integer")

    def number(self, name, default) -> float:
        value = self._typed(name, default, lambda v: _is_int(v) or isinstance(v, float), "a number")
        try:
            return float(value)
        except OverflowError:
            raise APIError(400, f"{name} is out of range", name) from None

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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gptcore"
    timeout = 120  # seconds a connection may sit idle, or block one read or write
    routes = {HEALTH: ("GET",), MODELS: ("GET",), COMPLETIONS: ("POST",)}

    @property
    def app(self) -> Server:
        return self.server.app

    # ---- routing -------------------------------------------------------------------------------
    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_HEAD(self):
        self._route("HEAD")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")

    def do_PATCH(self):
        self._route("PATCH")

    def do_OPTIONS(self):
        self._route("OPTIONS")

    def _route(self, method: str) -> None:
        self._headers_sent = False
        path = urlsplit(self.path).path
        if len(path) > 1:
            path = path.rstrip("/")
        allowed = self.routes.get(MODELS if path.startswith(MODELS + "/") else path)
        try:
            if allowed is None or method not in allowed:
                self.close_connection = True  # any body stays unread
            if allowed is None:
                raise APIError(404, f"no such endpoint {method} {path}; try POST {COMPLETIONS}", code="not_found")
            if method not in allowed:
                raise APIError(
                    405,
                    f"{path} takes {' or '.join(allowed)}, not {method}",
                    code="method_not_allowed",
                    headers={"Allow": ", ".join(allowed)},
                )
            if path == HEALTH:
                status = self.app.health()
                self._send_json(200 if status["status"] == "ok" else 503, status)
            elif path == MODELS:
                self._send_json(200, {"object": "list", "data": [self.app.model_card()]})
            elif path.startswith(MODELS + "/"):
                name = path[len(MODELS) + 1 :]
                if name != self.app.model_name:
                    raise APIError(404, f"the model {name!r} does not exist", code="model_not_found")
                self._send_json(200, self.app.model_card())
            else:
                self._completions()
        except APIError as e:
            self._send_error(e)
        except _ClientGone:
            self.close_connection = True
        except Exception:
            log.exception("internal error answering %s %s", method, self.path)
            self.app._count("errors")
            self._send_error(APIError(500, "internal server error", code="internal_error"))

    # ---- /v1/completions -----------------------------------------------------------------------
    def _completions(self) -> None:
        body = self._read_body()
        try:
            payload = json.loads(body.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise APIError(400, "the request body is not UTF-8") from None
        except json.JSONDecodeError as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        except (ValueError, RecursionError):
            raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
        job = self.app.prepare(payload)
        self.app.submit(job)
        try:
            if job.stream:
                self._stream(job)
            else:
                self._respond(job)
        except (_ClientGone, OSError):  # a reset, a broken pipe or a timed-out write
            self.app.cancel(job)
            self.close_connection = True
        except BaseException:
            self.app.cancel(job)
            raise
        else:
            self.app._count("completed")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise APIError(411, "send the body with a Content-Length (chunked requests are not supported)")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise APIError(411, "Content-Length is required")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise APIError(400, f"bad Content-Length {length!r}") from None
        if length > self.app.max_body_bytes:
            self.close_connection = True
            raise APIError(
                413, f"the request body is {length} bytes; this server takes at most {self.app.max_body_bytes}"
            )
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise APIError(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _events(self, job: _Job):
        """(index, chunk) as they come until every request has finished; APIError if one failed;
        _ClientGone when the client closed its connection in the meantime."""
        pending, checked = len(job.requests), time.monotonic()
        while pending:
            try:
                event = job.events.get(timeout=0.2)
            except queue.Empty:
                event = None
            if time.monotonic() - checked >= 0.2:  # still there? (a non-streaming client writes nothing)
                if self._client_gone():
                    raise _ClientGone
                checked = time.monotonic()
            if event is None:
                continue
            if isinstance(event, APIError):
                raise event
            if event[1].finish_reason is not None:
                pending -= 1
            yield event

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _respond(self, job: _Job) -> None:
        for _ in self._events(job):
            pass
        choices = []
        for i, r in enumerate(job.requests):
            choice = {
                "index": i,
                "text": job.prompt_texts[i] + (r.result.text or ""),
                "logprobs": None,
                "finish_reason": r.result.finish_reason,
            }
            if job.return_token_ids:
                choice["token_ids"] = list(r.result.tokens)
            choices.append(choice)
        self._send_json(200, self._envelope(job, choices, usage=self._usage(job)))

    def _stream(self, job: _Job) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._headers_sent = True
        usage = {"usage": None} if job.include_usage else {}
        if job.echo:
            for i, text in enumerate(job.prompt_texts):
                self._event(self._envelope(job, [self._delta(job, i, text, None, [])], **usage))
        token_ids = [[] for _ in job.requests]
        try:
            for i, chunk in self._events(job):
                if chunk.token is not None:
                    token_ids[i].append(chunk.token)
                if chunk.text or chunk.finish_reason or (job.return_token_ids and token_ids[i]):
                    delta = self._delta(job, i, chunk.text, chunk.finish_reason, token_ids[i])
                    self._event(self._envelope(job, [delta], **usage))
                    token_ids[i] = []
        except APIError as e:
            self._event(e.body())
        else:
            if job.include_usage:
                self._event(self._envelope(job, [], usage=self._usage(job)))
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    @staticmethod
    def _delta(job: _Job, index: int, text: str, finish_reason, token_ids) -> dict:
        delta = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if job.return_token_ids:
            delta["token_ids"] = list(token_ids)
        return delta

    def _envelope(self, job: _Job, choices: list, **extra) -> dict:
        return {
            "id": job.id,
            "object": "text_completion",
            "created": job.created,
            "model": self.app.model_name,
            "choices": choices,
            **extra,
        }

    @staticmethod
    def _usage(job: _Job) -> dict:
        prompt = sum(len(r.prompt) for r in job.requests)
        completion = sum(len(r.result.tokens) for r in job.requests)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # ---- writing -------------------------------------------------------------------------------
    def _event(self, obj: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_sent = True
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: APIError) -> None:
        if getattr(self, "_headers_sent", False):  # mid-stream: nothing sensible left to send
            self.close_connection = True
            return
        try:
            self._send_json(err.status, err.body(), err.headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """The base class's own errors (bad request line, unsupported method, ...) as JSON."""
        self.close_connection = True
        self._headers_sent = False
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
        self._send_error(APIError(code, message or phrase))

    def log_message(self, format, *args):
        log.info("%s %s", self.address_string(), format % args)
