"""Continuous batching: one thread drives `generate.Engine`, taking jobs from a bounded queue.

At every step boundary it moves waiting requests into free cache slots, drops cancelled ones (a client
that went away) and runs one decode step for all active slots. Chunks go back to each job's queue."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import torch

from gptcore.generate import Chunk, Engine, Request
from gptcore.serve.protocol import APIError, CompletionRequest

log = logging.getLogger("gptcore.serve")


@dataclass(eq=False)
class Job:
    """One completion request: an engine request per choice (n a prompt, in prompt order), and the
    queue their chunks arrive on as (choice index, Chunk) or an APIError."""

    request: CompletionRequest
    requests: list[Request] = field(init=False)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        request = self.request
        self.requests = [
            Request(ids, request.choice_params(j), on_chunk=_Sink(self, i * request.n + j))
            for i, ids in enumerate(request.prompts)
            for j in range(request.n)
        ]


class _Sink:
    """A request's on_chunk: forwards the engine's chunks (or an error) to its job's queue."""

    def __init__(self, job: Job, index: int):
        self.job, self.index = job, index

    def __call__(self, chunk: Chunk) -> None:
        self.job.events.put((self.index, chunk))

    def error(self, err: APIError) -> None:
        self.job.events.put(err)


class Scheduler:
    """Jobs in (`submit`, all of a job's prompts or none: 503 when max_queue would overflow), chunks
    out through each job's queue; `cancel` drops a job whose client went away. counts: requests,
    completed, cancelled, queue_full and errors so far."""

    def __init__(self, engine: Engine, max_queue: int):
        self.engine, self.max_queue = engine, max_queue
        self.max_active_seen = 0  # the most sequences one decode step has advanced together
        self.counts = dict(requests=0, completed=0, cancelled=0, queue_full=0, errors=0)
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._to_cancel: list[Request] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gptcore-serve-engine", daemon=True)
            self._thread.start()

    def stop(self) -> bool:
        """Refuse new jobs and let the engine's thread end; False when it was already stopping."""
        with self._cond:
            if self._stopping:
                return False
            self._stopping = True
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """After stop(): wait for the engine's thread, then answer whatever was still waiting or running with 503."""
        if self._thread is not None:
            self._thread.join()
        with self.engine.lock, self._cond:
            left = list(self._waiting) + self.engine.active
            self._waiting.clear()
            for r in left:
                self.engine.cancel(r)
                r.on_chunk.error(APIError(503, "the server is shutting down", code="shutting_down"))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)

    def count(self, name: str) -> None:
        with self._cond:
            self.counts[name] += 1

    # ---- jobs ----------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
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

    def cancel(self, job: Job) -> None:
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
    def _run(self) -> None:
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
        except ValueError as e:  # checked by the protocol, so unexpected; answered as a bad request anyway
            self.engine.cancel(r)
            r.on_chunk.error(APIError(400, str(e), "prompt"))
        except Exception:
            log.exception("prefill failed")
            self._fail([r], "generation failed: internal error in the prefill")

    def _fail(self, requests: list[Request], message: str) -> None:
        self.count("errors")
        for r in requests:
            if r.result is None:
                self.engine.cancel(r)
                r.on_chunk.error(APIError(500, message, code="internal_error"))
