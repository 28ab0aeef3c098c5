"""Scoring through the server: logprobs, echo, max_tokens 0, n > 1 and streamed logprobs, checked
against the engine's own scores (bitwise), a float64 forward of the same tokens, and the openai client."""

from __future__ import annotations

import threading

import pytest
import torch
from serve_client import complete, generator, model, request, server, stream, tokenizer, tokenizer_file

from gptcore.serve import Server

TEXT = "def main(args):\n    return json.dumps(args)"


def float64_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1, from a float64 copy of the model on PyTorch's reference ops."""
    reference = type(model)(type(model.config)(**{**vars(model.config), "use_gptcore_ops": False}))
    reference.load_state_dict(model.state_dict())
    reference = reference.double().eval()
    with torch.no_grad():
        logits = reference(torch.tensor([ids]))[0][0]
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[t - 1, ids[t]].item() for t in range(1, len(ids))]


def scored_choice(server, prompt, **body):
    out = complete(server, prompt=prompt, **body)
    (choice,) = out["choices"]
    return choice, out["usage"]


def test_echo_logprobs_as_lm_eval_asks_for_them(server, generator, tokenizer, model):
    """lm-eval's loglikelihood request: token ids, max_tokens 1, temperature 0, logprobs 1, echo. Every
    prompt token but the first is scored, plus the one generated; values are the engine's own (bitwise)
    and a float64 forward's (to float32 rounding)."""
    ids = tokenizer.encode(TEXT)
    choice, usage = scored_choice(server, ids, max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1234)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids) + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    want = generator.generate([ids], max_new_tokens=1, temperature=0, logprobs=1, prompt_logprobs=1)[0]
    assert lp["token_logprobs"][1:] == [s.logprob for s in want.prompt_logprobs[1:] + want.logprobs]
    generated = want.logprobs[0].token
    assert lp["tokens"] == [tokenizer.decode([t]) for t in ids + [generated]]
    reference = float64_logprobs(model, ids + [generated])
    assert lp["token_logprobs"][1:] == pytest.approx(reference, abs=2e-5)
    for token, value, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert top[token] == value and 1 <= len(top) <= 2  # the top-1 and the token itself
        assert max(top.values()) >= value
    assert max(lp["top_logprobs"][-1].values()) == lp["token_logprobs"][-1]  # greedy: the top-1 was taken
    offsets = [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert lp["text_offset"] == offsets
    assert choice["text"] == tokenizer.decode(ids) + (want.text or "")
    assert usage["prompt_tokens"] == len(ids)  # the ids as sent: nothing prepended


def test_generated_logprobs_and_top_k(server, generator, model, tokenizer):
    ids = tokenizer.encode(TEXT)
    body = dict(max_tokens=6, temperature=0.8, seed=3, ignore_eos=True)
    for k in (0, 5, 20):
        choice, _ = scored_choice(server, TEXT, logprobs=k, **body)
        lp = choice["logprobs"]
        want = generator.generate(TEXT, max_new_tokens=6, temperature=0.8, seed=3, stop_ids=(), logprobs=k)[0]
        assert lp["token_logprobs"] == [s.logprob for s in want.logprobs]
        assert lp["tokens"] == [tokenizer.decode([s.token]) for s in want.logprobs]
        assert "".join(lp["tokens"]) == choice["text"] == want.text
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
        for s, top in zip(want.logprobs, lp["top_logprobs"]):
            assert len(s.top) == k and [v for _, v in s.top] == sorted((v for _, v in s.top), reverse=True)
            want_top = {}  # the k best and the token itself, by text; of two with one text, the more likely
            for t, v in sorted((*s.top, (s.token, s.logprob)), key=lambda tv: -tv[1]):
                want_top.setdefault(tokenizer.decode([t]), v)
            assert top == want_top and len(top) <= k + 1
    reference = float64_logprobs(model, ids + want.tokens)[len(ids) - 1 :]
    assert lp["token_logprobs"] == pytest.approx(reference, abs=2e-5)


def test_scores_are_the_same_alone_and_in_any_batch(server, tokenizer):
    """One scored prompt alone, among 2 and among 7 of mixed lengths, with other clients' unscored
    requests decoding at the same time: bitwise the same scores and tokens."""
    target = tokenizer.encode(TEXT)
    others = [tokenizer.encode(t) for t in ("import os", "x = 1\n", "class A:\n    pass", "for i in range(10):")]
    others += [[7, 8, 9], tokenizer.encode("while True:\n    break\n")]
    body = dict(max_tokens=5, temperature=0.7, seed=9, logprobs=4, echo=True)
    alone = complete(server, prompt=[target], **body)["choices"][0]

    stop = threading.Event()

    def background():  # unscored requests keep the engine's shared decode batch busy
        while not stop.is_set():
            complete(server, prompt="import json", max_tokens=8, temperature=1.0)

    thread = threading.Thread(target=background)
    thread.start()
    try:
        for batch in ([others[0], target], [*others[:3], target, *others[3:]]):
            choices = complete(server, prompt=batch, **body)["choices"]
            mine = next(c for c in choices if c["index"] == batch.index(target))
            assert mine["logprobs"] == alone["logprobs"] and mine["text"] == alone["text"], len(batch)
    finally:
        stop.set()
        thread.join(60)


def test_max_tokens_0_with_echo_scores_the_prompt_only(server, tokenizer):
    ids = tokenizer.encode(TEXT)
    choice, usage = scored_choice(server, ids, max_tokens=0, echo=True, logprobs=2)
    assert choice["text"] == tokenizer.decode(ids) and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids) and usage["completion_tokens"] == 0
    scored, _ = scored_choice(server, ids, max_tokens=1, temperature=0, echo=True, logprobs=2)
    assert scored["logprobs"]["token_logprobs"][:-1] == choice["logprobs"]["token_logprobs"]
    choice, _ = scored_choice(server, TEXT, max_tokens=0, echo=True)  # echo alone: the text, no logprobs
    assert choice["text"] == TEXT and choice["logprobs"] is None
    status, _, err = request(server, body={"prompt": TEXT, "max_tokens": 0})
    assert status == 400 and err["error"]["param"] == "max_tokens" and "only with echo" in err["error"]["message"]


def test_a_stop_token_is_kept_in_the_logprobs(server, generator, tokenizer):
    ids = tokenizer.encode(TEXT)
    greedy = generator.generate([ids], max_new_tokens=1, temperature=0, stop_ids=())[0].tokens[0]
    choice, usage = scored_choice(
        server, ids, max_tokens=4, temperature=0, logprobs=1, echo=True, stop_token_ids=[greedy]
    )
    assert choice["finish_reason"] == "stop" and usage["completion_tokens"] == 0
    assert choice["text"] == tokenizer.decode(ids)  # the stop token's text is not in the text...
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1  # ... but it is scored
    assert (
        lp["tokens"][-1] == tokenizer.decode([greedy])
        and max(lp["top_logprobs"][-1].values()) == lp["token_logprobs"][-1]
    )


def test_n_choices_have_their_own_seeds(server, generator, tokenizer):
    prompts = ["import json\n", "class Server:"]
    out = complete(server, prompt=prompts, n=3, max_tokens=8, temperature=1.0, seed=21, return_token_ids=True)
    assert [c["index"] for c in out["choices"]] == list(range(6))
    for c in out["choices"]:
        prompt, j = prompts[c["index"] // 3], c["index"] % 3
        want = generator.generate(prompt, max_new_tokens=8, temperature=1.0, seed=21 + j)[0]
        assert c["token_ids"] == want.tokens and c["text"] == want.text
    assert len({tuple(c["token_ids"]) for c in out["choices"][:3]}) > 1  # the samples differ
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in prompts)  # each prompt counted once
    assert out["usage"]["prompt_tokens"] == prompt_tokens
    assert out["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in out["choices"])
    assert complete(server, prompt="hi", n=2, best_of=2, max_tokens=2)["choices"][1]["index"] == 1


@pytest.mark.parametrize("echo", [True, False])
def test_streamed_logprobs_equal_the_whole_answer(server, echo):
    body = dict(prompt=TEXT, max_tokens=10, temperature=0.9, seed=4, logprobs=3, echo=echo, ignore_eos=True)
    whole = complete(server, **body)["choices"][0]
    events = stream(server, **body)
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in events:
        for key, values in e["choices"][0]["logprobs"].items():
            merged[key] += values
    assert merged == whole["logprobs"]
    assert "".join(e["choices"][0]["text"] for e in events) == whole["text"]
    if echo:
        assert events[0]["choices"][0]["text"] == TEXT and events[0]["choices"][0]["logprobs"]["tokens"]


def test_without_a_tokenizer_tokens_are_named_by_id(model):
    with Server(model, None, port=0, max_batch=2) as bare:
        choice, _ = scored_choice(bare, [5, 6, 7], max_tokens=1, temperature=0, logprobs=1, echo=True)
    assert choice["logprobs"]["tokens"][:3] == ["token_id:5", "token_id:6", "token_id:7"]
    assert all(key.startswith("token_id:") for key in choice["logprobs"]["top_logprobs"][1])


def test_the_openai_client_reads_the_logprobs(server, tokenizer):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    ids = tokenizer.encode(TEXT)
    out = client.completions.create(
        model="gptcore", prompt=[ids], max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1
    )
    lp = out.choices[0].logprobs
    want = complete(server, prompt=[ids], max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1)
    assert lp.token_logprobs == want["choices"][0]["logprobs"]["token_logprobs"]
    assert lp.top_logprobs[1] == want["choices"][0]["logprobs"]["top_logprobs"][1]
    samples = client.completions.create(model="gptcore", prompt="x = ", max_tokens=3, n=2, seed=5)
    assert [c.index for c in samples.choices] == [0, 1]
