"""lm-evaluation-harness itself against `gptcore serve`: its `local-completions` model with the remote
tokenizer (/tokenizer_info, /tokenize) runs a local multiple-choice task (echo + logprobs scoring)
and a local generate_until task on a small trained model; every loglikelihood it logs is checked
against the model's own float64 computation, every generation against generate.Generator, and the
aggregated accuracies against those recomputed from the float64 loglikelihoods."""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gptcore
from gptcore.checkpoint import load_model, save_model
from gptcore.data import load_tokenizer
from gptcore.generate import Generator
from gptcore.model import GPT, GPTConfig

for module in ("lm_eval", "aiohttp", "requests", "tenacity"):  # lm-eval[api]: what its API models import
    pytest.importorskip(module)
LM_EVAL = shutil.which("lm_eval")
pytestmark = pytest.mark.skipif(LM_EVAL is None, reason="the lm_eval executable is not on PATH")

N_POSITIONS = 96
STOP = ["\n", "."]
MAX_GEN_TOKS = 8
NEAR_TIE = 1e-3  # is_greedy is not compared where the best two float64 logprobs are closer than this

SENTENCES = [
    "the cat sat on the mat.",
    "the dog ran to the park.",
    "a bird sang in the tree.",
    "the sun is hot and the sky is blue.",
    "my friend likes green tea.",
    "we eat bread with butter.",
    "the fish swims in the lake.",
    "she reads a book at night.",
]

# Choices of different character lengths; a context with a trailing space (lm-eval moves it to the
# continuation) and an empty one (scored after the end-of-document token).
MC_DOCS = [
    {"context": "the cat sat on the", "choices": ["mat", "big red chair", "lake"], "label": 0},
    {"context": "the dog ran to the", "choices": ["tree", "park", "sun"], "label": 1},
    {"context": "a bird sang in the", "choices": ["book", "tree", "bread with butter"], "label": 1},
    {"context": "the sun is hot and the sky is ", "choices": ["blue", "green tea", "a"], "label": 0},
    {"context": "my friend likes", "choices": ["green tea", "the park", "x"], "label": 0},
    {"context": "we eat bread", "choices": ["with butter", "at night", "in the lake and the tree"], "label": 0},
    {"context": "the fish swims in", "choices": ["the lake", "the mat", "a"], "label": 0},
    {"context": "", "choices": ["the cat", "she reads", "zzz"], "label": 0},
]
GEN_DOCS = [
    {"context": "the cat sat on", "target": " the mat"},
    {"context": "the dog ran to", "target": " the park"},
    {"context": "a bird sang", "target": " in the tree"},
    {"context": "my friend likes", "target": " green tea"},
    {"context": "we eat", "target": " bread with butter"},
    {"context": "she reads a book", "target": " at night"},
]

MC_YAML = """\
task: gptcore_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
GEN_YAML = """\
task: gptcore_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: {until}
  max_gen_toks: {max_gen_toks}
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small GPT-2 BPE (with <|endoftext|>, so /tokenizer_info reports an eos token) and a tiny GPT
    trained for a moment on SENTENCES, saved as a model file: (model path, tokenizer folder)."""
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("lm_eval_model")
    (root / "tokenizer").mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 20, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(root / "tokenizer"))
    tokenizer = load_tokenizer(root / "tokenizer")
    assert tokenizer.encode("<|endoftext|>") == [tokenizer.eod_id]

    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_positions=N_POSITIONS, n_layer=2, n_head=2, n_embd=64, use_gptcore_ops=False
    )
    model = GPT(config)
    text = [t for s in SENTENCES for t in [*tokenizer.encode(" " + s), tokenizer.eod_id]]
    stream = torch.tensor(text * 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for step in range(120):
        starts = torch.randint(0, len(stream) - 33, (8,), generator=torch.Generator().manual_seed(step))
        batch = torch.stack([stream[s : s + 33] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(model.eval(), root / "model.safetensors")
    return root / "model.safetensors", root / "tokenizer"


@pytest.fixture(scope="module")
def server_url(served, tmp_path_factory):
    """`gptcore serve` as a subprocess on a free port, on CPU in float32; its /v1/completions URL.
    Its log goes to a file (a pipe nobody reads could fill and stall it)."""
    model_path, tokenizer_dir = served
    args = [sys.executable, "-m", "gptcore", "serve", "--checkpoint", str(model_path)]
    args += ["--tokenizer", str(tokenizer_dir), "--device", "cpu", "--dtype", "fp32", "--port", "0"]
    args += ["--model-name", "tiny", "--max-batch", "4"]
    package_root = str(Path(gptcore.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tmp_path_factory.mktemp("serve_log") / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # it prints its URL once it listens
        line = proc.stdout.readline() if ready else ""
        if " at http://127.0.0.1:" not in line:
            proc.kill()
            proc.wait(30)
            pytest.fail(f"gptcore serve did not start: {line!r}\n{log.read_text()[-4000:]}")
        yield line.split(" at ")[-1].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def write_tasks(folder: Path) -> None:
    folder.mkdir()
    for name, docs, yaml in [("mc", MC_DOCS, MC_YAML), ("gen", GEN_DOCS, GEN_YAML)]:
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        text = yaml.format(data=data, until=json.dumps(STOP), max_gen_toks=MAX_GEN_TOKS)
        (folder / f"gptcore_{name}.yaml").write_text(text)


def run_lm_eval(url: str, tmp_path: Path) -> Path:
    """lm_eval's CLI on both tasks; the folder its results and samples went to."""
    write_tasks(tmp_path / "tasks")
    model_args = f"base_url={url},model=tiny,tokenizer_backend=remote,max_length={N_POSITIONS}"
    model_args += ",num_concurrent=1,max_retries=1,timeout=60"
    args = [LM_EVAL, "--model", "local-completions", "--model_args", model_args]
    args += ["--tasks", "gptcore_mc,gptcore_gen", "--include_path", str(tmp_path / "tasks")]
    args += ["--log_samples", "--output_path", str(tmp_path / "out"), "--batch_size", "4"]
    offline = dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env = dict(os.environ, **offline, TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    (folder,) = (tmp_path / "out").iterdir()  # lm-eval writes under a folder named after the model
    return folder


def read_samples(folder: Path, task: str) -> list[dict]:
    (path,) = folder.glob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def continuation_logprobs(model, tokenizer, context: str, continuation: str) -> tuple[list[int], torch.Tensor]:
    """lm-eval's tokenization of a (context, continuation) pair (TemplateLM.loglikelihood: trailing
    whitespace of the context moves to the continuation; the continuation's tokens are those of the
    whole text after the context's; an empty context is the end-of-document token), and the float64
    log-probabilities [len(continuation tokens), vocab] the model gives at those positions."""
    if context:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        context_ids = tokenizer.encode(context)
        continuation_ids = tokenizer.encode(context + continuation)[len(context_ids) :]
    else:
        context_ids, continuation_ids = [tokenizer.eod_id], tokenizer.encode(continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logits, _ = model(ids)
    logprobs = torch.log_softmax(logits[0].double(), dim=-1)
    return continuation_ids, logprobs[len(context_ids) - 1 : -1]


def test_lm_eval_harness_against_the_model(served, server_url, tmp_path):
    model_path, tokenizer_dir = served
    tokenizer = load_tokenizer(tokenizer_dir)
    folder = run_lm_eval(server_url, tmp_path)

    reference = load_model(model_path, use_gptcore_ops=False).double().eval()
    samples = sorted(read_samples(folder, "gptcore_mc"), key=lambda s: s["doc_id"])
    assert [s["doc"] for s in samples] == MC_DOCS
    accs, acc_norms, greedy_checked = [], [], []
    for sample in samples:
        doc = sample["doc"]
        lls = []
        # lm-eval logs each choice's request as {"arg_0": context, "arg_1": continuation} and its
        # (loglikelihood, is_greedy) answer as strings
        requests = [[a["arg_0"], a["arg_1"]] for a in sample["arguments"].values()]
        assert requests == [[doc["context"], " " + c] for c in doc["choices"]]
        for choice, (ll, is_greedy) in zip(doc["choices"], sample["filtered_resps"], strict=True):
            ids, logprobs = continuation_logprobs(reference, tokenizer, doc["context"], " " + choice)
            want = logprobs[torch.arange(len(ids)), ids].sum().item()
            assert abs(float(ll) - want) < 1e-4, (doc, choice, ll, want)
            assert is_greedy in ("True", "False")
            top2 = logprobs.topk(2, dim=-1).values
            if (top2[:, 0] - top2[:, 1]).min() > NEAR_TIE:
                assert is_greedy == str(bool((logprobs.argmax(-1) == torch.tensor(ids)).all())), (doc, choice)
                greedy_checked.append(is_greedy)
            lls.append(want)
        lengths = [len(c) for c in doc["choices"]]
        accs.append(float(max(range(len(lls)), key=lls.__getitem__) == doc["label"]))
        acc_norms.append(float(max(range(len(lls)), key=lambda i: lls[i] / lengths[i]) == doc["label"]))
        assert sample["acc"] == accs[-1] and sample["acc_norm"] == acc_norms[-1], sample

    assert {"True", "False"} <= set(greedy_checked) and len(greedy_checked) > len(MC_DOCS)  # not vacuous
    assert 0 < sum(accs) < len(accs) and accs != acc_norms

    (results_file,) = folder.glob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert math.isclose(results["gptcore_mc"]["acc,none"], sum(accs) / len(accs))
    assert math.isclose(results["gptcore_mc"]["acc_norm,none"], sum(acc_norms) / len(acc_norms))

    # `gptcore eval mc` in process on the same documents: the same loglikelihoods (bitwise: the same
    # tokens through the same prefill, summed in the same order) and so the same acc and acc_norm.
    mc = tmp_path / "eval_mc.json"
    args = [sys.executable, "-m", "gptcore", "eval", "mc", "--checkpoint", str(model_path)]
    args += ["--tokenizer", str(tokenizer_dir), "--data", str(tmp_path / "tasks" / "mc.jsonl")]
    args += ["--device", "cpu", "--dtype", "fp32", "--output", str(mc)]
    package_root = str(Path(gptcore.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    in_process = json.loads(mc.read_text())
    harness_lls = [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples]
    assert [s["lls"] for s in in_process["samples"]] == harness_lls
    assert in_process["results"]["acc"] == results["gptcore_mc"]["acc,none"]
    assert in_process["results"]["acc_norm"] == results["gptcore_mc"]["acc_norm,none"]

    generator = Generator(load_model(model_path).eval(), tokenizer)
    samples = sorted(read_samples(folder, "gptcore_gen"), key=lambda s: s["doc_id"])
    assert [s["doc"] for s in samples] == GEN_DOCS
    matches = []
    for sample in samples:
        prompt = sample["doc"]["context"]
        want = generator.generate(prompt, max_new_tokens=MAX_GEN_TOKS, temperature=0, stop=STOP)[0].text
        assert sample["resps"] == [[want]] and sample["filtered_resps"] == [want], (sample, want)
        matches.append(float(want == sample["doc"]["target"]))
        assert sample["exact_match"] == matches[-1]
    assert math.isclose(results["gptcore_gen"]["exact_match,none"], sum(matches) / len(matches))
    assert 0 < sum(matches) < len(matches)
