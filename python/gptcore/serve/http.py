"""The HTTP side of `gptcore serve`: routing, request bodies, JSON and server-sent-event answers.

ThreadingHTTPServer answers each connection on its own thread. The handler asks its app (the
`Server`) to turn a body into a job and queue it, then waits on the job's queue, watching for a
client that went away, and writes the answer built by `protocol`."""

from __future__ import annotations

import json
import logging
import queue
import select
import socket
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import urlsplit

from gptcore.serve import protocol, tokenizer_api
from gptcore.serve.protocol import APIError
from gptcore.serve.scheduler import Job

log = logging.getLogger("gptcore.serve")

COMPLETIONS, HEALTH, MODELS = "/v1/completions", "/health", "/v1/models"
TOKENIZE, DETOKENIZE, TOKENIZER_INFO = "/tokenize", "/detokenize", "/tokenizer_info"  # vLLM's


class App(Protocol):
    """What the handler needs from the server behind it."""

    model_name: str
    max_body_bytes: int
    served: protocol.ServedModel

    def health(self) -> dict: ...
    def model_card(self) -> dict: ...
    def prepare(self, body: object) -> Job: ...
    def submit(self, job: Job) -> None: ...
    def cancel(self, job: Job) -> None: ...
    def count(self, name: str) -> None: ...


def bind(host: str, port: int, app: App) -> ThreadingHTTPServer:
    """An HTTP server bound to host:port (IPv6 when host has a ':'), not yet serving; OSError naming
    the address when it cannot listen there."""
    http_class = _HTTPServer6 if ":" in host else _HTTPServer
    try:
        server = http_class((host, port), _Handler)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    server.app = app
    return server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: App

    def handle_error(self, request, client_address):
        """A client that resets its connection is no error of ours; anything else is logged."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("connection from %s dropped", client_address)
        else:
            log.exception("error handling a connection from %s", client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gptcore"
    timeout = 120  # seconds a connection may sit idle, or block one read or write
    routes = {
        HEALTH: ("GET",), MODELS: ("GET",), COMPLETIONS: ("POST",),
        TOKENIZE: ("POST",), DETOKENIZE: ("POST",), TOKENIZER_INFO: ("GET",),
    }  # fmt: skip

    @property
    def app(self) -> App:
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
            elif path == TOKENIZER_INFO:
                self._send_json(200, tokenizer_api.tokenizer_info(self.app.served))
            elif path in (TOKENIZE, DETOKENIZE):
                answer = tokenizer_api.tokenize if path == TOKENIZE else tokenizer_api.detokenize
                self._send_json(200, answer(protocol.decode_body(self._read_body()), self.app.served))
            else:
                self._completions()
        except APIError as e:
            self._send_error(e)
        except _ClientGone:
            self.close_connection = True
        except Exception:
            log.exception("internal error answering %s %s", method, self.path)
            self.app.count("errors")
            self._send_error(APIError(500, "internal server error", code="internal_error"))

    # ---- /v1/completions -----------------------------------------------------------------------
    def _completions(self) -> None:
        job = self.app.prepare(protocol.decode_body(self._read_body()))
        self.app.submit(job)
        try:
            if job.request.stream:
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
            self.app.count("completed")

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

    def _events(self, job: Job):
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

    def _respond(self, job: Job) -> None:
        for _ in self._events(job):
            pass
        choices = []
        for i, r in enumerate(job.requests):
            result = r.result
            scored = _prompt_scores(job, i) + [(s.token, s) for s in result.logprobs or ()]
            text = _echo_text(job, i) + (result.text or "")
            choices.append(self._choice(job, i, text, result.finish_reason, result.tokens, scored))
        self._send_json(200, self._completion(job, choices, usage=_usage(job)))

    def _stream(self, job: Job) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._headers_sent = True
        request = job.request
        usage = {"usage": None} if request.include_usage else {}
        token_ids = [[] for _ in job.requests]
        scored = [[] for _ in job.requests]  # a delta's scored tokens, its text possibly still held back
        offsets = [0] * len(job.requests)  # each choice's text offset so far
        echoed = [not request.echo] * len(job.requests)
        per_token = request.return_token_ids or request.logprobs is not None
        try:
            for i, chunk in self._events(job):
                if not echoed[i]:  # after the prefill, which scored the prompt
                    echoed[i] = True
                    echo = self._choice(job, i, _echo_text(job, i), None, [], _prompt_scores(job, i), offsets)
                    self._event(self._completion(job, [echo], **usage))
                if chunk.token is not None:
                    token_ids[i].append(chunk.token)
                if chunk.logprob is not None:
                    scored[i].append((chunk.logprob.token, chunk.logprob))
                if chunk.text or chunk.finish_reason or (per_token and (token_ids[i] or scored[i])):
                    delta = self._choice(job, i, chunk.text, chunk.finish_reason, token_ids[i], scored[i], offsets)
                    self._event(self._completion(job, [delta], **usage))
                    token_ids[i], scored[i] = [], []
        except APIError as e:
            self._event(e.body())
        else:
            if request.include_usage:
                self._event(self._completion(job, [], usage=_usage(job)))
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _choice(
        self,
        job: Job,
        index: int,
        text: str,
        finish_reason: str | None,
        token_ids: list[int],
        scored: list,
        offsets: list[int] | None = None,
    ) -> dict:
        """A choice, or a streamed delta (offsets[index]: its choice's text offset so far, moved past it)."""
        request, logprobs = job.request, None
        if request.logprobs is not None:
            start = offsets[index] if offsets else 0
            logprobs, end = protocol.logprobs(scored, self.app.served.tokenizer, start)
            if offsets:
                offsets[index] = end
        return protocol.choice(index, text, finish_reason, token_ids if request.return_token_ids else None, logprobs)

    def _completion(self, job: Job, choices: list, **extra) -> dict:
        return protocol.completion(job.id, job.created, self.app.model_name, choices, **extra)

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


def _usage(job: Job) -> dict:
    """Each prompt counted once (as OpenAI and vLLM do with n > 1), every choice's tokens."""
    prompt_tokens = sum(len(p) for p in job.request.prompts)
    return protocol.usage(prompt_tokens, sum(len(r.result.tokens) for r in job.requests))


def _echo_text(job: Job, index: int) -> str:
    return job.request.echo_texts[index // job.request.n]


def _prompt_scores(job: Job, index: int) -> list:
    """The echoed prompt's (token, score) pairs of choice index (the first unscored), when logprobs are asked for."""
    request, r = job.request, job.requests[index]
    if not request.echo or request.logprobs is None:
        return []
    return list(zip(r.prompt, r.prompt_logprobs))
