"""Multiple-choice scoring (`gptcore eval mc`): loglikelihoods against a float64 forward, acc and
acc_norm by hand, the encoding, truncation and parsing against lm-evaluation-harness's own code,
the prefill scoring bitwise equal to a request the server would run, and the command end to end."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gptcore import cli
from gptcore.checkpoint import load_for_inference, save_model
from gptcore.data import train_sentencepiece
from gptcore.generate import Generator
from gptcore.model import GPT, GPTConfig
from gptcore.multiple_choice import (
    Doc,
    ScoreRequest,
    build_requests,
    doc_result,
    encode_pair,
    evaluate_multiple_choice,
    load_docs,
    loglikelihood,
    mean_stderr,
    truncate,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_POSITIONS = 64
TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "To be or not to be, that is the question. All that glitters is not gold.\n"
) * 40
DOCS = [
    {"context": "The quick brown fox jumps over the", "choices": ["lazy dog.", "cat", "question of gold"], "label": 0},
    {"context": "A stitch in time saves ", "choices": ["nine.", "ten", "the fox"], "label": 0},
    {"context": "To be or not to be,", "choices": ["that is the question.", "gold"], "label": 1},
    {"context": "", "choices": ["All that glitters", "is not"], "label": 0},
    {"context": "Question: what glitters?\nAnswer:", "choices": ["gold", "the lazy dog", "time"], "gold": 2},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model file with a SentencePiece tokenizer folder beside it."""
    root = tmp_path_factory.mktemp("mc")
    (root / "text.txt").write_text(TEXT)
    spm = train_sentencepiece([root / "text.txt"], root / "spm", vocab_size=512)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_positions=N_POSITIONS, n_layer=2, n_head=2, n_embd=64))
    with torch.no_grad():  # larger than the default init, so the choices' scores differ visibly
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "spm.model").write_bytes(spm.read_bytes())
    save_model(model, root / "model.safetensors")
    with open(root / "docs.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in DOCS)
    return root


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, tokenizer = load_for_inference(checkpoint / "model.safetensors", device="cpu", dtype="fp32")
    return Generator(model, tokenizer), tokenizer


def _float64_loglikelihood(model: GPT, tokens: list[int], ctxlen: int) -> float:
    copy = GPT(GPTConfig(**(model.config.to_dict() | {"use_gptcore_ops": False}))).double().eval()
    copy.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    with torch.no_grad():
        logits, _ = copy(torch.tensor([tokens]))
    logprobs = F.log_softmax(logits[0], dim=-1)
    return sum(logprobs[t - 1, tokens[t]].item() for t in range(ctxlen, len(tokens)))


def test_loglikelihoods_equal_a_float64_forward(checkpoint, loaded):
    generator, tokenizer = loaded
    docs = load_docs(checkpoint / "docs.jsonl")
    metrics, samples = evaluate_multiple_choice(generator, docs)
    requests = build_requests(docs, tokenizer, N_POSITIONS - 1)
    expected = [_float64_loglikelihood(generator.model, r.tokens, r.ctxlen) for r in requests]
    got = [ll for s in samples for ll in s["lls"]]
    assert got == pytest.approx(expected, abs=1e-4, rel=1e-5)
    assert len(set(got)) == len(got)  # the choices are told apart
    assert metrics["n"] == 5 and metrics["requests"] == 13 and metrics["truncated"] == 0
    # the metrics are the means of the documents' scores
    assert metrics["acc"] == sum(s["acc"] for s in samples) / 5
    assert metrics["acc_norm"] == sum(s["acc_norm"] for s in samples) / 5


def test_acc_and_acc_norm_by_hand():
    doc = Doc("Q:", ("a", "much longer"), label=1, line=1)
    # acc takes the highest loglikelihood (-2 > -5); acc_norm the highest per character: -2/1 < -5/11.
    record = doc_result(doc, [(-2.0, True), (-5.0, False)])
    assert (record["pred"], record["pred_norm"], record["acc"], record["acc_norm"]) == (0, 1, 0.0, 1.0)
    assert record["lls"] == [-2.0, -5.0] and record["is_greedy"] == [True, False]
    # the delimiter is not counted: " a" vs "a" would change nothing here, but 1 vs 2 characters would
    record = doc_result(Doc("Q:", ("ab", "c"), 0, 1), [(-3.0, False), (-2.0, False)])
    assert (record["pred"], record["pred_norm"]) == (1, 0)  # -3/2 > -2/1


def test_stderr_is_lm_evals():
    metrics = pytest.importorskip("lm_eval.api.metrics")
    for values in ([1.0, 0.0, 0.0, 1.0, 1.0], [0.0, 1.0], [1.0, 1.0, 1.0]):
        assert mean_stderr(values) == metrics.mean_stderr(values)
    assert mean_stderr([1.0]) is None


def test_encode_pair_hand_computed(loaded):
    _, tok = loaded
    # trailing whitespace moves to the continuation; the context's tokens are cut off the whole
    context_enc, continuation_enc = encode_pair(tok, "To be or not ", "to be")
    assert context_enc == tok.encode("To be or not")
    assert context_enc + continuation_enc == tok.encode("To be or not to be")
    # an empty context is the end-of-document token
    assert encode_pair(tok, "", " the fox") == ([tok.eod_id], tok.encode(" the fox"))


class _Recorder:
    """lm-eval's TemplateLM around our tokenizer: its loglikelihood() encodes the pairs and hands them
    to _loglikelihood_tokens, which records them."""

    @staticmethod
    def make(tokenizer):
        model = pytest.importorskip("lm_eval.api.model")

        class Recorder(model.TemplateLM):
            eot_token_id = tokenizer.eod_id

            def tok_encode(self, string, add_special_tokens=None, **kwargs):
                return tokenizer.encode(string)

            def _loglikelihood_tokens(self, requests, **kwargs):
                self.requests = requests
                return [(0.0, False)] * len(requests)

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def generate_until(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Recorder()


class _CharTokenizer:
    """One id a character, "#" the end-of-document token: continuations that start with it."""

    eod_id = 0

    @staticmethod
    def encode(text):
        return [0 if c == "#" else ord(c) for c in text]


PAIRS = [
    ("To be or not to be,", " that is the question."),
    ("A stitch in time saves ", " nine."),  # trailing space: two spaces go to the continuation
    ("Question: what glitters?\nAnswer:\n", " gold"),
    ("", " All that glitters"),  # empty: after the end-of-document token
    ("", "#lazy"),  # empty, the continuation starting with that token (with _CharTokenizer)
    ("The lazy dog", ""),
]


@pytest.mark.parametrize("char_tokenizer", [False, True])
def test_encoding_equals_lm_evals(loaded, char_tokenizer):
    tok = _CharTokenizer() if char_tokenizer else loaded[1]
    recorder = _Recorder.make(tok)
    recorder.loglikelihood([SimpleNamespace(args=pair) for pair in PAIRS], disable_tqdm=True)
    for (context, continuation), (_, context_enc, continuation_enc) in zip(PAIRS, recorder.requests):
        assert encode_pair(tok, context, continuation) == (context_enc, continuation_enc), (context, continuation)
    if char_tokenizer:
        assert recorder.requests[4][1:] == ([0], [ord(c) for c in "lazy"])
    no_eod = SimpleNamespace(eod_id=None, encode=_CharTokenizer.encode)
    with pytest.raises(ValueError, match="the tokenizer has none"):
        encode_pair(no_eod, "", " x")


def test_truncation_equals_lm_evals(loaded):
    api_models = pytest.importorskip("lm_eval.models.api_models")
    _, tok = loaded
    recorder = _Recorder.make(tok)
    long = ("To be or not to be, that is the question. " * 8, " All that glitters is not gold.")
    recorder.loglikelihood([SimpleNamespace(args=long)], disable_tqdm=True)
    _, context_enc, continuation_enc = recorder.requests[0]
    assert len(context_enc) + len(continuation_enc) > N_POSITIONS
    # lm-eval's API model with max_length=N_POSITIONS keeps N_POSITIONS - 1 (one for the generated token)
    api = SimpleNamespace(max_length=N_POSITIONS - 1)
    inputs, ctxlens, _ = api_models.TemplateAPI.batch_loglikelihood_requests(
        api, [[(None, context_enc, continuation_enc)]]
    )
    ours = truncate(*encode_pair(tok, *long), N_POSITIONS - 1)
    assert (ours.tokens, ours.ctxlen, ours.truncated) == (inputs[0], ctxlens[0], True)


def _completions_response(result, tokenizer) -> dict:
    """The OpenAI completions body `gptcore serve` answers an lm-eval request with (echo, logprobs=1,
    max_tokens=1): the prompt's scores then the generated token's, top alternatives by token text."""
    scores = [*result.prompt_logprobs, *result.logprobs]
    return {
        "choices": [
            {
                "index": 0,
                "logprobs": {
                    "token_logprobs": [None if s is None else s.logprob for s in scores],
                    "top_logprobs": [
                        None if s is None else {tokenizer.decode([i]): lp for i, lp in s.top} for s in scores
                    ],
                },
            }
        ]
    }


def test_server_request_scores_equal_bitwise_and_parse_as_lm_eval_does(loaded):
    generator, tok = loaded
    docs = [Doc(d["context"], tuple(d["choices"]), 0, n) for n, d in enumerate(DOCS, 1)]
    requests = build_requests(docs, tok, N_POSITIONS - 1)
    # and a continuation the model would generate greedily
    context = tok.encode("To be or not")
    greedy = generator.generate(context, max_new_tokens=3, temperature=0, stop_ids=())[0].tokens
    requests.append(ScoreRequest(context + greedy, len(context), False))
    prompts = [r.tokens for r in requests]
    scored = generator.generate(prompts, max_new_tokens=0, prompt_logprobs=1)
    served = generator.generate(prompts, max_new_tokens=1, logprobs=1, prompt_logprobs=1, temperature=0)
    alone = [generator.generate([p], max_new_tokens=0, prompt_logprobs=1)[0] for p in prompts[:3]]
    for a, b in zip(scored, served):
        assert a.prompt_logprobs == b.prompt_logprobs  # bitwise: the same prefill forward
    assert [a.prompt_logprobs for a in alone] == [s.prompt_logprobs for s in scored[:3]]  # batch-invariant
    openai = pytest.importorskip("lm_eval.models.openai_completions")
    for request, a, b in zip(requests, scored, served):
        parsed = openai.LocalCompletionsAPI.parse_logprobs(_completions_response(b, tok), ctxlens=[request.ctxlen])
        assert parsed == [loglikelihood(a, request.ctxlen)]
    assert not loglikelihood(scored[0], requests[0].ctxlen)[1] and loglikelihood(scored[-1], len(context))[1]


def test_truncation_keeps_the_last_positions(loaded):
    generator, tok = loaded
    context = "To be or not to be, that is the question. " * 8
    doc = Doc(context, ("All that glitters", "is not gold"), 0, 1)
    metrics, samples = evaluate_multiple_choice(generator, [doc])
    assert metrics["truncated"] == 2 and metrics["max_length"] == N_POSITIONS - 1
    for choice, ll in zip(doc.choices, samples[0]["lls"]):
        context_enc, continuation_enc = encode_pair(tok, context, " " + choice)
        tokens = (context_enc + continuation_enc)[-(N_POSITIONS - 1) :]
        ctxlen = len(tokens) - len(continuation_enc)
        assert ll == pytest.approx(_float64_loglikelihood(generator.model, tokens, ctxlen), abs=1e-4)
    with pytest.raises(ValueError, match="line 7, choice 1: a continuation of .* leaves no context"):
        evaluate_multiple_choice(generator, [Doc("Q:", ("yes", "gold " * 80), 0, 7)])


def _eval(capsys, *argv):
    code = cli.main(["eval", "mc", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_and_output_equal_in_process(checkpoint, loaded, capsys, tmp_path):
    generator, _ = loaded
    data, output = checkpoint / "docs.jsonl", tmp_path / "out" / "results.json"
    model_file = str(checkpoint / "model.safetensors")
    code, out, err = _eval(capsys, "--checkpoint", model_file, "--data", str(data), "--device", "cpu",
                           "--json", "--output", str(output))  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    metrics, samples = evaluate_multiple_choice(generator, load_docs(data))
    assert {k: result[k] for k in ("acc", "acc_norm", "n", "acc_stderr")} == {
        k: metrics[k] for k in ("acc", "acc_norm", "n", "acc_stderr")
    }
    written = json.loads(output.read_text())
    assert written["results"] == result and written["samples"] == samples
    # other keys, a delimiter, a limit; the summary printed
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"q": d["context"], "opts": d["choices"], "y": 0}) + "\n" for d in DOCS))
    keys = ["--context-key", "q", "--choices-key", "opts", "--label-key", "y"]
    code, out, _ = _eval(capsys, "--checkpoint", model_file, "--data", str(renamed), *keys, "--limit", "2",
                         "--target-delimiter", "")  # fmt: skip
    assert code == 0 and "2 documents, 6 choices scored" in out and "acc_norm" in out


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "docs.jsonl:2: not JSON"),
        ('["a"]', "docs.jsonl:2: a JSON list, expected an object"),
        ('{"context": "x", "label": 0}', "docs.jsonl:2: no 'choices' key"),
        ('{"context": "x", "choices": ["a", "b"], "label": 2}', "'label' must be the index of the right choice"),
        ('{"context": "x", "choices": [], "label": 0}', "'choices' must be a non-empty list of strings"),
        ('{"context": 3, "choices": ["a"], "label": 0}', "'context' must be a string"),
    ],
)
def test_cli_bad_lines_exit_2_with_one_line(checkpoint, capsys, tmp_path, line, message):
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps(DOCS[0]) + "\n" + line + "\n")
    code, _, err = _eval(capsys, "--checkpoint", str(checkpoint / "model.safetensors"), "--data", str(data))
    assert code == 2 and err.startswith("gptcore eval: error:") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_refuses_several_processes_and_a_model_without_tokenizer(checkpoint, capsys, tmp_path):
    data = str(checkpoint / "docs.jsonl")
    code, _, err = _eval(capsys, "--checkpoint", str(checkpoint), "--data", data, "--nproc-per-node", "2")
    assert code == 2 and "eval mc runs in one process" in err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    code, _, err = _eval(capsys, "--checkpoint", str(bare / "model.safetensors"), "--data", data)
    assert code == 2 and "no tokenizer found" in err
