"""`gptcore serve`: an OpenAI-style completions server over `generate.Engine`, standard library only.

    server = Server(model, tokenizer, port=8000).start()   # background threads; server.url
    ...
    server.shutdown()

Endpoints: `GET /health`, `GET /v1/models` (and `/v1/models/<name>`), `POST /v1/completions`
(non-streaming, or server-sent events with `"stream": true`), and vLLM's tokenizer endpoints below.

Modules: `protocol` (a request body checked into a CompletionRequest, errors naming the parameter,
response objects), `scheduler` (continuous batching on the engine's thread), `http` (the handler,
on a thread per connection), `server` (`Server`, tying them together). A connection's thread parses
and checks a request, tokenizes it and puts it on a bounded queue (503 when full); the scheduler's
thread, at every step boundary, moves waiting requests into free cache slots, drops cancelled ones (a
client that went away) and runs one decode step for all active slots; tokens come back to the
connection's thread through a per-job queue.

Request fields (OpenAI's, plus vLLM's extensions): prompt (a string, a list of token ids, or a list of
either: several prompts, batched together; token ids are used exactly as sent), max_tokens (16; 0 only
with echo: the prompt scored, nothing generated), temperature (1.0; 0 is greedy), top_p, top_k (0 or -1:
off), repetition_penalty, stop (a string or a list), stop_token_ids (added to the tokenizer's
end-of-document id unless ignore_eos), seed, n (choices a prompt, choice j seeded seed + j; choice i is
prompt i // n), best_of (only equal to n), stream, stream_options.include_usage, echo, logprobs (0..20:
each token's logprob and the k most likely, `tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`; with echo the prompt's tokens too, the first one null; streamed with each delta),
return_token_ids (default: true without a tokenizer), model (must be the served name when given), user
(ignored). Logprobs are the model's own (float32 log-softmax of the logits that generate, before
temperature and the other sampling controls) and bitwise the same alone or in any batch. suffix,
logit_bias and presence/frequency penalties other than their defaults are refused with 400 (not
supported). Unknown fields are refused with 400 naming them, as vLLM does, so a misspelt parameter is
not silently ignored.

vLLM's tokenizer endpoints: `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (what
lm-evaluation-harness's remote tokenizer reads).
"""

from gptcore.serve.protocol import APIError, CompletionRequest, InvalidParameter, ServedModel, parse_completion
from gptcore.serve.scheduler import Job, Scheduler
from gptcore.serve.server import Server

__all__ = [
    "APIError",
    "CompletionRequest",
    "InvalidParameter",
    "Job",
    "Scheduler",
    "ServedModel",
    "Server",
    "parse_completion",
]
