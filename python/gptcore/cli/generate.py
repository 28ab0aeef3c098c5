"""`gptcore generate`: text from a model, streamed for one prompt, batched for several, or read
interactively from stdin."""

from __future__ import annotations

import json
import sys
import time

from gptcore.cli import source
from gptcore.generate import Generator


def add_parser(commands) -> None:
    gen = commands.add_parser(
        "generate",
        help="generate text from a checkpoint (KV cache; greedy, temperature, top-k, top-p)",
        description="Generate text from a model: a training checkpoint or save folder, a gptcore model file, or"
        " an HF GPT-2 folder. One --prompt streams its continuation as it is produced; several prompts"
        " (repeated --prompt, or --prompt-file with one prompt a line) are generated as one batch;"
        " --interactive reads prompts from stdin until an empty line or end of input. The speed (generated"
        " tokens/s, prompt included in the time) goes to stderr.",
    )
    source.add_model_source(gen, lora=True)
    source.add_processes(gen)
    source.add_weights(gen)
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    src.add_argument("--prompt-file", help="a UTF-8 file with one prompt a line (blank lines skipped)")
    src.add_argument("--interactive", action="store_true", help="read prompts from stdin, one a line")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default 1.0)")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1: off)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1: off)")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-document token")
    gen.add_argument("--seed", type=int, help="sampling seed (default: random)")
    gen.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    gen.add_argument("--json", action="store_true", help="print one JSON object a prompt instead of text")
    gen.set_defaults(run=run)


def run(args) -> int:
    if (code := source.launch(args)) is not None:
        return code
    prompts = _read_prompts(args.prompt_file) if args.prompt_file else args.prompt or []
    with source.processes(args) as ranks:
        model, tokenizer = source.load(args, need_tokenizer=True, ranks=ranks)
        engine = source.engine(args, model, tokenizer, ranks)
        if ranks is None:
            return _generate(args, prompts, Generator(model, tokenizer, max_batch=args.max_batch, engine=engine))
        # Rank 0 reads the prompts and prints; the others run the same forwards on their shards.
        if not ranks.is_leader:
            engine.follow()
            return 0
        with engine.leading():
            return _generate(args, prompts, Generator(model, tokenizer, max_batch=args.max_batch, engine=engine))


def _generate(args, prompts: list[str], generator: Generator) -> int:
    kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    if args.ignore_eos:
        kwargs["stop_ids"] = ()
    generator.params(**kwargs)  # bad values stop here, before any prompt is read
    if any(not p for p in prompts):
        raise ValueError("empty prompt: give some text")

    def stream(prompt: str) -> None:
        print(prompt, end="", flush=True)
        reason, tokens, start = None, 0, time.perf_counter()
        for chunk in generator.stream(prompt, **kwargs):
            print(chunk.text, end="", flush=True)
            reason = chunk.finish_reason or reason
            tokens += chunk.token is not None
        print(f"\n[{reason}]" if sys.stdout.isatty() else "", flush=True)
        _report_speed(tokens, time.perf_counter() - start)

    if args.interactive:
        while True:
            if sys.stdin.isatty():
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line.strip():
                return 0
            try:
                stream(line.rstrip("\n"))
            except ValueError as e:  # a prompt too long for the model: say so and take the next one
                print(f"error: {e}", file=sys.stderr)
    if len(prompts) == 1 and not args.json:
        stream(prompts[0])
        return 0
    start = time.perf_counter()
    results = generator.generate(prompts, **kwargs)
    _report_speed(sum(len(r.tokens) for r in results), time.perf_counter() - start, len(prompts))
    for prompt, result in zip(prompts, results):
        if args.json:
            record = dict(prompt=prompt, text=result.text, tokens=result.tokens, finish_reason=result.finish_reason)
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(prompt + result.text)
            print("-" * 40)
    return 0


def _report_speed(tokens: int, seconds: float, prompts: int = 1) -> None:
    """The decoding speed, on stderr (stdout holds the text or the JSON records alone)."""
    batch = f"{prompts} prompts, " if prompts > 1 else ""
    rate = tokens / seconds if seconds > 0 else 0.0
    print(f"gptcore generate: {batch}{tokens} tokens in {seconds:.2f} s, {rate:,.1f} tokens/s", file=sys.stderr)


def _read_prompts(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts (the file has no non-blank line)")
    return prompts
