"""`Server`: one model behind the HTTP layer, the protocol and the scheduler, with its lifecycle."""

from __future__ import annotations

import logging
import signal
import threading
import time

from gptcore.generate import Engine
from gptcore.serve import http, protocol
from gptcore.serve.protocol import ServedModel
from gptcore.serve.scheduler import Job, Scheduler

log = logging.getLogger("gptcore.serve")


class Server:
    """An OpenAI-style HTTP completions server for one model.

    host: "127.0.0.1" (this machine only) unless told otherwise ("0.0.0.0" or "::" to expose it);
    port 0 picks a free one (see `url`). max_batch: cache slots, i.e. sequences decoded together;
    max_queue: requests (prompts) waiting for a slot before new ones get 503; max_prompt_tokens:
    longer prompts get 400 (default: whatever fits the model's positions with max_tokens);
    max_body_bytes: larger request bodies get 413. engine: the Engine to run on, of max_batch slots
    (default: a new one; gptcore.parallel.inference's LockstepEngine for a model split over
    processes). The socket is bound on construction (OSError when
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
        engine: Engine | None = None,
    ):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_body_bytes", max_body_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_prompt_tokens is not None and (not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1):
            raise ValueError(f"max_prompt_tokens must be a positive integer or None, got {max_prompt_tokens!r}")
        self.tokenizer = tokenizer
        self.config = model.config
        if engine is None:
            engine = Engine(model, tokenizer, slots=max_batch, cuda_graph=cuda_graph)
        self.engine = engine
        self.scheduler = Scheduler(self.engine, max_queue)
        self.served = ServedModel(model_name, model.config, tokenizer, max_prompt_tokens, max_prompts=max_queue)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_prompt_tokens, self.max_body_bytes = max_prompt_tokens, max_body_bytes
        self.model_name = model_name
        self.created = int(time.time())
        self._http = http.bind(host, port, self)
        self._http_thread: threading.Thread | None = None
        self.host, self.port = host, self._http.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def counts(self) -> dict:
        """requests, completed, cancelled, queue_full and errors so far."""
        return self.scheduler.counts

    @property
    def max_active_seen(self) -> int:
        """The most sequences one decode step has advanced together."""
        return self.scheduler.max_active_seen

    @max_active_seen.setter
    def max_active_seen(self, value: int) -> None:
        self.scheduler.max_active_seen = value

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Server:
        if self._http_thread is None:
            self.scheduler.start()
            self._http_thread = threading.Thread(
                target=self._http.serve_forever, kwargs=dict(poll_interval=0.1), name="gptcore-serve-http", daemon=True
            )
            self._http_thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, stop the engine and answer whatever was still waiting or running with 503."""
        if not self.scheduler.stop():
            return
        if self._http_thread is not None:
            self._http.shutdown()
        self._http.server_close()
        self.scheduler.close()

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (or SIGTERM, from the main thread), then shut down cleanly."""
        main = threading.current_thread() is threading.main_thread()
        # SIGINT too, explicitly: a process started as a background job of a script inherits SIGINT
        # ignored, and Python then leaves it ignored (uvicorn installs its handlers the same way).
        handlers = (_raise_interrupt, signal.default_int_handler)
        previous = (
            {sig: signal.signal(sig, h) for sig, h in zip((signal.SIGTERM, signal.SIGINT), handlers)} if main else {}
        )
        self.start()
        try:
            while self._http_thread.is_alive():
                self._http_thread.join(0.5)
        except KeyboardInterrupt:
            log.info("shutting down")
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---- what the HTTP layer asks --------------------------------------------------------------
    def health(self) -> dict:
        return {
            "status": "ok" if self.scheduler.running else "unavailable",
            "model": self.model_name,
            "active": sum(r is not None for r in self.engine.slots),
            "queued": self.scheduler.queued(),
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
        }

    def model_card(self) -> dict:
        return protocol.model_card(self.model_name, self.created, self.config.n_positions)

    def prepare(self, body: object) -> Job:
        """A job from a parsed /v1/completions body; APIError (400/404) for anything wrong with it."""
        return Job(protocol.parse_completion(body, self.served))

    def submit(self, job: Job) -> None:
        """Queue a job's requests, all or none: APIError 503 when the queue has no room for them."""
        self.scheduler.submit(job)

    def cancel(self, job: Job) -> None:
        """Drop a job whose client went away."""
        self.scheduler.cancel(job)

    def count(self, name: str) -> None:
        self.scheduler.count(name)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
