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
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    srv.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    srv.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 503")
    srv.add_argument("--max-prompt-tokens", type=int, help="longer prompts get 400 (default: the model's positions)")
    srv.add_argument("--model-name", default="gptcore", help="the model's name in the API (default: gptcore)")
    srv.set_defaults(run=run)


def run(args) -> int:
    model, tokenizer = source.load(args, need_tokenizer=False)
    server = Server(
        model,
        tokenizer,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        model_name=args.model_name,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    c, param = model.config, next(model.parameters())
    print(
        f"serving {args.model_name} ({c.n_layer} layers, {c.n_embd} wide, {str(param.dtype).removeprefix('torch.')}"
        f" on {param.device}; tokenizer {tokenizer.name if tokenizer is not None else 'none: token-id prompts only'})"
        f" at {server.url}/v1/completions",
        flush=True,
    )
    server.serve_forever()
    print("stopped", flush=True)
    return 0
