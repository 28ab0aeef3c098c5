"""gptcore.serve.protocol on its own: a body checked into a CompletionRequest without a server or a
model; a bad field raised as InvalidParameter naming it (the HTTP layer reads .param, never the text)."""

from types import SimpleNamespace

import pytest

from gptcore.serve.protocol import APIError, InvalidParameter, ServedModel, parse_completion


class Chars:
    """A tokenizer of one id per character."""

    eod_id = 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


SERVED = ServedModel("tiny", SimpleNamespace(vocab_size=128, n_positions=32), Chars(), 20, max_prompts=2)


def test_a_body_becomes_a_typed_request():
    body = {"prompt": ["ab", [1, 2]], "max_tokens": 4, "top_k": -1, "stop": "x", "stop_token_ids": [7], "echo": True}
    req = parse_completion(body, SERVED)
    assert req.prompts == [[97, 98], [1, 2]] and req.echo_texts == ["ab", "\x01\x02"]
    p = req.params
    assert (p.max_new_tokens, p.top_k, p.stop, p.stop_ids) == (4, 0, ("x",), (0, 7))
    assert not req.stream and not req.include_usage and not req.return_token_ids
    req = parse_completion(
        {"prompt": [5], "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}, SERVED
    )
    assert req.params.stop_ids == () and req.stream and req.include_usage and req.echo_texts == [""]


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"temperature": -1, "top_p": 2}, "temperature", None),  # the first bad field, as SamplingParams.check
        ({"top_k": 500}, "top_k", None),
        ({"top_p": 0}, "top_p", None),
        ({"repetition_penalty": 0}, "repetition_penalty", None),
        ({"stop_token_ids": [128]}, "stop_token_ids", None),
        ({"stop": [""]}, "stop", None),
        ({"max_tokens": 25}, "prompt", "context_length_exceeded"),
        ({"prompt": [1] * 21}, "prompt", "context_length_exceeded"),
        ({"prompt": [200] * 19, "max_tokens": 20}, "prompt", None),  # out of the vocabulary comes first
        ({"prompt": ["a", "b", "c"]}, "prompt", None),
        ({"max_tokns": 3}, "max_tokns", "unknown_field"),
        ({"seed": 2**64}, "seed", None),
    ],
)
def test_invalid_parameter_names_the_field(fields, param, code):
    with pytest.raises(InvalidParameter) as e:
        parse_completion({"prompt": "hello world", **fields}, SERVED)
    assert (e.value.status, e.value.param, e.value.code) == (400, param, code)
    assert e.value.body()["error"]["param"] == param


def test_other_errors_are_api_errors():
    with pytest.raises(APIError) as e:
        parse_completion({"prompt": "hi", "model": "gpt-4"}, SERVED)
    assert (e.value.status, e.value.param, e.value.code) == (404, "model", "model_not_found")
    with pytest.raises(APIError) as e:
        parse_completion([1], SERVED)
    assert e.value.status == 400 and e.value.param is None
