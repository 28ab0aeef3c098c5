"""Generation, evaluation and serving of a model split over two processes (gptcore.parallel.inference;
`gptcore generate|eval|serve --nproc-per-node 2 --tensor-parallel 2`): the same tokens and the same
perplexity as one process, on gloo and the CPU."""

from __future__ import annotations

import http.client
import inspect
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import gptcore
from gptcore import cli
from gptcore.checkpoint import load_for_inference, model_file_name, save_model, save_model_shard, write_layout
from gptcore.data import train_sentencepiece
from gptcore.generate import Generator
from gptcore.model import GPT, GPTConfig
from gptcore.parallel import inference, parallelize
from gptcore.parallel.inference import LockstepEngine, Ranks
from gptcore.parallel.reshard import local_state, split
from gptcore.parallel.testing import run_distributed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["def load(", "import json", "class Decoder:"]
SAMPLED = dict(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2)


def tiny_model(vocab_size: int, n_head: int = 2, use_gptcore_ops: bool = True) -> GPT:
    """A tiny random GPT with weights large enough that greedy decoding does not repeat one token."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=vocab_size, n_positions=64, n_layer=2, n_head=n_head, n_embd=64, use_gptcore_ops=use_gptcore_ops
    )
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # positions especially: the step moves the logits
            p.add_(torch.randn_like(p) * (1.0 if name.endswith("wpe.weight") else 0.2))
        model.transformer.wte.weight[vocab_size:].zero_()
    return model


# ---- the engine in lockstep, in two processes ----------------------------------------------------
def _lockstep(rank, world_size, use_gptcore_ops):
    model = parallelize(tiny_model(512, use_gptcore_ops=use_gptcore_ops), dist.group.WORLD)
    ranks = Ranks(rank, world_size, torch.device("cpu"), dist.group.WORLD, dist.new_group(backend="gloo"))
    engine = LockstepEngine(model, ranks, slots=2)
    added = []
    add = engine.add
    engine.add = lambda *requests: (added.extend(requests), add(*requests))  # what each rank ran
    if not ranks.is_leader:
        engine.follow()
        return [r.tokens for r in added]
    with engine.leading():
        generator = Generator(model, engine=engine)
        greedy = generator.generate([[5, 6, 7], [100, 200], [3] * 9], max_new_tokens=10, temperature=0)
        seeded = generator.generate([[9, 8, 7]], max_new_tokens=10, seed=1234, **SAMPLED)
        generator.generate([[9, 8, 7]], max_new_tokens=10, **SAMPLED)  # the leader picks the seed
        for _ in zip(range(3), generator.stream([1, 2, 3], max_new_tokens=10, temperature=0)):
            pass  # a reader that stops early cancels its request on every rank
        with pytest.raises(ValueError, match="exceeds"):  # refused on every rank, and nothing changes
            generator.generate([[1] * 60], max_new_tokens=10)
        after = generator.generate([[5, 6, 7]], max_new_tokens=10, temperature=0)
    return [r.tokens for r in added], [r.tokens for r in greedy + seeded + after]


@pytest.mark.parametrize("use_gptcore_ops", [True, False])
def test_lockstep_engine_matches_one_process(use_gptcore_ops):
    (leader, results), follower = run_distributed(_lockstep, 2, use_gptcore_ops)
    assert leader == follower  # the same requests and tokens on both ranks, a seedless sampled one included
    generator = Generator(tiny_model(512, use_gptcore_ops=use_gptcore_ops))
    expected = generator.generate([[5, 6, 7], [100, 200], [3] * 9], max_new_tokens=10, temperature=0)
    expected += generator.generate([[9, 8, 7]], max_new_tokens=10, seed=1234, **SAMPLED)
    expected += generator.generate([[5, 6, 7]], max_new_tokens=10, temperature=0)
    assert results == [r.tokens for r in expected]
    assert len(set(map(tuple, results[:3]))) == 3 and len(set(results[0])) > 2  # not one token repeated


# ---- loading ---------------------------------------------------------------------------------------
def _write_sharded(folder: Path, model: GPT, tp: int, pp: int) -> Path:
    folder.mkdir()
    for (t, p), state in split(model.state_dict(), model.config, tp, pp).items():
        save_model_shard(state, model.config, folder, t, p, tp, pp)
    write_layout(folder, tp, pp)
    return folder


def _load(rank, world_size, root):
    ranks = Ranks(rank, world_size, torch.device("cpu"), dist.group.WORLD, None)
    expected = local_state(parallelize(tiny_model(512), dist.group.WORLD), tiny_model(512).state_dict())
    # Saved at the ranks' tensor-parallel size: each rank reads its own file alone (rank 1's is broken).
    sources = ["model.safetensors", "tp2", "pp2"] + (["tp2-rank0-only"] if rank == 0 else [])
    same = []
    for source in sources:
        model, _ = inference.load_model(root / source, None, ranks)
        same.append(model.state_dict().keys() == expected.keys())
        same += [torch.equal(v, expected[k]) for k, v in model.state_dict().items()]
    return all(same)


def test_load_model_reshards_any_checkpoint(tmp_path):
    model = tiny_model(512)
    save_model(model, tmp_path / "model.safetensors")
    _write_sharded(tmp_path / "tp2", model, 2, 1)
    _write_sharded(tmp_path / "pp2", model, 1, 2)
    folder = _write_sharded(tmp_path / "tp2-rank0-only", model, 2, 1)
    (folder / model_file_name(1, 0, 2, 1)).write_bytes(b"not a safetensors file")
    assert run_distributed(_load, 2, tmp_path) == [True, True]


# ---- the commands ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """model.safetensors with tokenizer/ beside it, and the same model as a tp=1 x pp=2 checkpoint."""
    root = tmp_path_factory.mktemp("tpinfer")
    sources = (inspect.getsource(m) for m in (json, http.client))
    text = "\n".join(line for s in sources for line in s.splitlines() if line.strip() and line.isascii())
    (root / "text.txt").write_text(text + "\n")
    spm = train_sentencepiece([root / "text.txt"], root / "spm", vocab_size=400)
    model = tiny_model(400)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "spm.model").write_bytes(Path(spm).read_bytes())
    save_model(model, root / "model.safetensors")
    sharded = _write_sharded(root / "sharded", model, 1, 2)
    (sharded / "tokenizer").mkdir()
    (sharded / "tokenizer" / "spm.model").write_bytes(Path(spm).read_bytes())
    one_head = root / "one_head.safetensors"
    save_model(tiny_model(400, n_head=1), one_head)
    return root


def gptcore_command(*args: str, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    """`python -m gptcore ARGS` in a subprocess with this checkout's package, one thread a process."""
    package_root = str(Path(gptcore.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([package_root, *sys.path]))
    command = [sys.executable, "-m", "gptcore", *args]
    if kwargs.pop("background", False):
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, **kwargs)


TP2 = ("--nproc-per-node", "2", "--tensor-parallel", "2")


LONG = "x " * 100  # too long for the model: refused on every rank, and the next prompt is read


@pytest.mark.parametrize(
    "options, stdin",
    [
        (("--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--temperature", "0", "--json"), None),
        (("--prompt", PROMPTS[2], "--seed", "7", "--top-k", "40"), None),
        (("--interactive", "--temperature", "0"), f"{PROMPTS[0]}\n{LONG}\n{PROMPTS[2]}\n\n"),
    ],
    ids=["greedy-batch", "seeded-stream", "interactive"],
)
def test_cli_generate_tp2(checkpoint, capsys, monkeypatch, options, stdin):
    args = ("generate", "--checkpoint", str(checkpoint / "model.safetensors"), "--max-new-tokens", "12", *options)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
    assert cli.main(list(args)) == 0
    expected = capsys.readouterr()
    assert ("error: prompt (200 tokens)" in expected.err) == (stdin is not None)
    out = gptcore_command(*args, *TP2, input=stdin)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == expected.out  # one copy, from rank 0
    assert "Traceback" not in out.stderr
    errors = [line for line in expected.err.splitlines() if "error" in line]  # not the tokens/s lines
    assert [line for line in out.stderr.splitlines() if "error" in line] == errors


def test_cli_eval_tp2_from_a_pipeline_checkpoint(checkpoint, tmp_path):
    common = ("eval", "--text", str(checkpoint / "text.txt"), "--window", "32", "--max-tokens", "400")
    one = tmp_path / "one.json"
    assert cli.main([*common, "--checkpoint", str(checkpoint / "model.safetensors"), "--output", str(one)]) == 0
    two = tmp_path / "two.json"
    out = gptcore_command(*common, "--checkpoint", str(checkpoint / "sharded"), "--output", str(two), *TP2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("token perplexity") == 1 and "split over 2 processes" in out.stdout
    one, two = json.loads(one.read_text()), json.loads(two.read_text())
    assert two["tensor_parallel"] == 2 and two["scored_tokens"] == one["scored_tokens"] == 400
    assert two["token_perplexity"] == pytest.approx(one["token_perplexity"], rel=1e-5)
    assert two["nll"] == pytest.approx(one["nll"], rel=1e-5)


def _post(port: int, body: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode())
        response = conn.getresponse()
        data = json.loads(response.read())
        assert response.status == 200, data
        return data
    finally:
        conn.close()


def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line mentions marker."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_cli_serve_tp2(checkpoint):
    source = str(checkpoint / "model.safetensors")
    proc = gptcore_command("serve", "--checkpoint", source, "--port", "0", "--max-batch", "2", *TP2, background=True)
    try:
        line = proc.stdout.readline()
        assert "split over 2 processes" in line and " at http://127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        greedy = dict(prompt=PROMPTS[0], max_tokens=10, temperature=0, return_token_ids=True)
        sampled = dict(prompt=PROMPTS[1], max_tokens=10, seed=11, return_token_ids=True, **SAMPLED)
        scored = dict(prompt=PROMPTS[0], max_tokens=3, temperature=0, logprobs=2, echo=True)
        answers = [_post(port, body)["choices"][0] for body in (greedy, sampled, scored)]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("stopped") == 1 and "Traceback" not in err
    deadline = time.monotonic() + 10
    while _processes_with(source) and time.monotonic() < deadline:  # every rank has exited
        time.sleep(0.1)
    assert not _processes_with(source)
    model, tokenizer = load_for_inference(source)
    generator = Generator(model, tokenizer)
    expected = [
        generator.generate(PROMPTS[0], max_new_tokens=10, temperature=0)[0],
        generator.generate(PROMPTS[1], max_new_tokens=10, seed=11, **SAMPLED)[0],
    ]
    assert [a["token_ids"] for a in answers[:2]] == [r.tokens for r in expected]
    assert [a["text"] for a in answers[:2]] == [r.text for r in expected]
    # Scored on two processes (the echoed prompt and the generated tokens) as on one, to float32 rounding.
    one = generator.generate(PROMPTS[0], max_new_tokens=3, temperature=0, logprobs=2, prompt_logprobs=2)[0]
    logprobs = answers[2]["logprobs"]["token_logprobs"]
    assert logprobs[0] is None and len(logprobs) == len(one.prompt_logprobs) + len(one.logprobs)
    assert logprobs[1:] == pytest.approx([s.logprob for s in one.prompt_logprobs[1:] + one.logprobs], abs=1e-5)


def test_cli_model_that_does_not_split(checkpoint):
    source = str(checkpoint / "one_head.safetensors")
    out = gptcore_command("eval", "--checkpoint", source, "--text", str(checkpoint / "text.txt"), *TP2)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gptcore eval: error: tensor parallel: n_head (1) must be divisible by the tensor-parallel size (2)"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (("eval", "--text", "x", "--tensor-parallel", "2"), "add --nproc-per-node 2"),
        (("eval", "--text", "x", "--nproc-per-node", "0"), "--nproc-per-node must be >= 1"),
        (("eval", "--text", "x", "--nproc-per-node", "2", "--device", "cuda:1"), "give --device cuda"),
        (("eval", "--text", "x", "--nproc-per-node", "2", "--sequence-parallel"), "unrecognized arguments"),
        (("generate", "--prompt", "x", "--tensor-parallel", "2"), "add --nproc-per-node 2"),
        (("generate", "--prompt", "x", "--nproc-per-node", "2", "--sequence-parallel"), "unrecognized arguments"),
        (("serve", "--nproc-per-node", "2", "--tensor-parallel", "1"), "must equal --nproc-per-node 2"),
    ],
)
def test_cli_bad_process_arguments(checkpoint, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        cli.main([*args, "--checkpoint", str(checkpoint / "model.safetensors")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_cli_eval_cls_refuses_processes(checkpoint, capsys):
    args = ["eval", "cls", "--checkpoint", str(checkpoint), "--data", "x.tsv", "--nproc-per-node", "2"]
    assert cli.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "gptcore eval: error: eval cls runs in one process: --nproc-per-node and --tensor-parallel are for eval ppl"
    ]
