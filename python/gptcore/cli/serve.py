"""`gptcore serve`: a model behind an OpenAI-style HTTP completions server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging

from gptcore.cli import source
from gptcore.serve import Server


def add_parser(commands) -> None:
    srv = commands.add_parser(
        "serve",
        help="an OpenAI-style HTTP completions server (/v1/completions, streaming, /health)",
        description="Serve a model over HTTP: POST /v1/completions (OpenAI's completions API; server-sent"
        ' events with "stream": true), GET /v1/models and GET /health. Concurrent requests are decoded'
        " together (continuous batching over --max-batch sequences); up to --max-queue more wait for a slot"
        " and the rest get 503. Listens on 127.0.0.1 (this machine only) unless --host says otherwise."
        " Ctrl-C or SIGTERM stops it.",
    )
    source.add_model_source(srv)
    source.add_processes(srv)
    source.add_weights(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    srv.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    srv.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 503")
    srv.add_argument("--max-prompt-tokens", type=int, help="longer prompts get 400 (default: the model's positions)")
    srv.add_argument("--model-name", default="gptcore", help="the model's name in the API (default: gptcore)")
    srv.set_defaults(run=run)


def run(args) -> int:
    if (code := source.launch(args)) is not None:
        return code
    with source.processes(args) as ranks:
        model, tokenizer = source.load(args, need_tokenizer=False, ranks=ranks)
        engine = source.engine(args, model, tokenizer, ranks)
        if ranks is None:
            return _serve(args, model, tokenizer, engine)
        # Rank 0 answers HTTP and drives the others, which run the same forwards on their shards.
        if not ranks.is_leader:
            engine.follow()
            return 0
        with engine.leading():
            return _serve(args, model, tokenizer, engine, f", split over {ranks.size} processes")


def _serve(args, model, tokenizer, engine, split: str = "") -> int:
    server = Server(
        model,
        tokenizer,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        model_name=args.model_name,
        engine=engine,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    c, param = model.config, next(model.parameters())
    named = tokenizer.name if tokenizer is not None else "none: token-id prompts only"
    dtype = str(param.dtype).removeprefix("torch.")
    if engine.core is not None:
        dtype = f"{engine.core.weights} weights in gptcore's core"
    print(
        f"serving {args.model_name} ({c.n_layer} layers, {c.n_embd} wide, {dtype}"
        f" on {param.device}{split}; tokenizer {named}) at {server.url}/v1/completions",
        flush=True,
    )
    server.serve_forever()
    print("stopped", flush=True)
    return 0
