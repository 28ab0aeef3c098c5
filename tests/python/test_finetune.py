"""Finetuning through the trainer: SFT data (`gptcore preprocess --sft`) with the loss on target
tokens only, learning a small task, `gptcore finetune`, and LoRA runs (adapters only saved, base
frozen, exact resume, tensor parallel)."""

import json
import random

import pytest
import torch
import torch.nn.functional as F
from test_training import corpus  # noqa: F401 (a fixture)

from gptcore import cli
from gptcore.checkpoint import load_model, save_model
from gptcore.cli.source import load_model as load_model_source
from gptcore.data import preprocess_sft, segment_boundaries
from gptcore.model import GPT, GPTConfig
from gptcore.parallel.testing import run_distributed
from gptcore.training import Trainer, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _records(n: int, seed: int) -> list[dict]:
    """A small real task: digits to number words ("3 1 4 =" -> " three one four"); every tenth record
    has no tgt (continuation text: every token a target)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        digits = [rng.randrange(10) for _ in range(rng.randint(1, 4))]
        src = "digits: " + " ".join(map(str, digits)) + " ="
        if i % 10 == 9:
            records.append({"src": src + " " + " ".join(WORDS[d] for d in digits)})
        else:
            records.append({"src": src, "tgt": " " + " ".join(WORDS[d] for d in digits)})
    return records


@pytest.fixture(scope="module")
def task(corpus, tmp_path_factory):  # noqa: F811
    """(sft prefix, tokenizer, base model file) for the digits task."""
    _, tokenizer = corpus
    root = tmp_path_factory.mktemp("sft")
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in _records(600, 0)) + "\n")
    preprocess_sft([root / "pairs.jsonl"], root / "pairs", tokenizer, progress=False)
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=512, n_positions=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0))
    save_model(base, root / "base.safetensors")
    return str(root / "pairs"), tokenizer, str(root / "base.safetensors")


def _cfg(task, **overrides) -> dict:
    prefix, tokenizer, base = task
    cfg = dict(
        init_from=base,
        data_path=prefix,
        tokenizer=tokenizer,
        seq_len=32,
        micro_batch_size=4,
        global_batch_size=8,
        train_steps=4,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=0,
        split="90,10,0",
        eval_interval=0,
        eval_steps=8,
        log_interval=1,
        progress=False,
        device="cpu",
    )
    return cfg | overrides


def _quiet(cfg: dict) -> Trainer:
    return Trainer(load_config(None, cfg), log=lambda line: None)


def test_loss_counts_only_target_tokens(task):
    """The trainer's first-step loss equals a float64 cross-entropy over the target tokens alone,
    each packed example attending only to itself, at positions from 0."""
    trainer = _quiet(_cfg(task, sft_packing=True))
    items = [trainer.train_data[i] for i in range(8)]
    model = load_model(task[2], use_gptcore_ops=False).double().requires_grad_(False)
    losses = []
    for item in items:
        documents = segment_boundaries(item["segment_ids"][None])
        logits = model(item["tokens"][None], position_ids=item["position_ids"][None], cu_seqlens=documents)[0][0]
        nll = F.cross_entropy(logits, item["labels"], reduction="none")
        losses.append(nll[item["loss_mask"] > 0])
    direct = torch.cat(losses)
    targets = sum(int(item["loss_mask"].sum()) for item in items)
    assert 0 < targets < sum(item["tokens"].numel() for item in items) // 2  # the prompts are not targets
    out = trainer.train_step()
    assert out["tokens"] == targets == direct.numel()
    assert out["loss"] == pytest.approx(float(direct.mean()), rel=1e-5)


def test_sft_learns_the_task(task):
    cfg = _cfg(task, train_steps=150, eval_interval=1000, eval_steps=6, lr=5e-3, min_lr=5e-4, warmup_steps=10)
    trainer = _quiet(cfg)
    before = trainer.evaluate()["val_loss"]
    trainer.train()
    after = trainer.evaluate()["val_loss"]
    assert after < 0.35 * before, (before, after)  # the target tokens are learnt, not only their frequencies


def test_cli_preprocess_sft_and_finetune(task, tmp_path, capsys):
    prefix, tokenizer, base = task
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in _records(60, 1)) + "\n")
    args = ["preprocess", "--sft", "--input", str(tmp_path / "pairs.jsonl"), "--tokenizer", tokenizer]
    assert cli.main([*args, "--output-prefix", str(tmp_path / "d")]) == 0
    assert "60 examples" in capsys.readouterr().out
    assert (tmp_path / "d_loss_mask.bin").is_file()
    overrides = [f"{k}={v}" for k, v in _cfg(task, data_path=str(tmp_path / "d"), save=str(tmp_path / "run")).items()]
    assert cli.main(["finetune", *overrides]) == 0
    assert (tmp_path / "run" / "step_00000004" / "model.safetensors").is_file()
    no_base = [o for o in overrides if not o.startswith("init_from=")]
    assert cli.main(["finetune", *no_base]) == 2
    assert "init_from is not set" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "a"}\n{"tgt": "b"}\n')
    assert cli.main([*args[:2], "--input", str(bad), "--tokenizer", tokenizer, "--output-prefix", str(tmp_path / "b")])
    assert "bad.jsonl:2" in capsys.readouterr().err


# ---- LoRA through the trainer -------------------------------------------------------------------
LORA = dict(lora_rank=4, lora_alpha=8.0, lora_targets="qkv,attn_out,mlp_in,mlp_out")


def test_lora_run_saves_adapters_only_and_resumes_exactly(task, tmp_path):
    cfg = _cfg(task, train_steps=6, **LORA)
    whole = _quiet(cfg | {"save": str(tmp_path / "a")})
    base = {n: p.detach().clone() for n, p in whole.model.named_parameters() if "lora_" not in n}
    assert all(not p.requires_grad for n, p in whole.model.named_parameters() if "lora_" not in n)
    records = whole.train()
    for name, p in whole.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name]), name  # the base stays frozen
    step = tmp_path / "a" / "step_00000006"
    assert (step / "adapters.safetensors").is_file() and not (step / "model.safetensors").exists()
    from safetensors import safe_open

    with safe_open(step / "adapters.safetensors", framework="pt") as f:
        names = list(f.keys())
    assert names and all("lora_" in name for name in names)
    part = _quiet(cfg | {"save": str(tmp_path / "b")}).train(max_steps=3)
    resumed = _quiet(cfg | {"save": str(tmp_path / "b")})
    assert resumed.step == 3
    rest = resumed.train()
    assert [r["loss"] for r in part + rest] == [r["loss"] for r in records]
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


def _lora_steps(rank, world, cfg, steps):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    return [trainer.train_step() for _ in range(steps)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"tensor_parallel": 2},
        {"tensor_parallel": 2, "sequence_parallel": True},
        {"pipeline_parallel": 2},
        {},
        {"zero_stage": 3},
    ],
)
def test_lora_tensor_and_data_parallel_match_one_process(task, overrides):
    cfg = _cfg(task, clip_grad=0.05, **LORA)
    trainer = _quiet(cfg)
    expected = [trainer.train_step() for _ in range(3)]
    results = run_distributed(_lora_steps, 2, cfg | overrides, 3)
    for ours, ref in zip(results[0], expected):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=2e-5)
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=2e-4)


def _lora_save(rank, world, cfg):
    trainer = Trainer(load_config(None, cfg), log=lambda line: None)
    trainer.train()


def test_lora_tensor_parallel_adapters_join_for_generation(task, tmp_path):
    from gptcore.finetune.lora import apply_lora, load_adapters, load_lora_state_dict

    cfg = _cfg(task, train_steps=1, weight_decay=0.0, **LORA)
    _quiet(cfg | {"save": str(tmp_path / "one")}).train()
    run_distributed(_lora_save, 2, cfg | {"save": str(tmp_path / "tp2"), "tensor_parallel": 2})
    step = tmp_path / "tp2" / "step_00000001"
    assert sorted(p.name for p in step.glob("adapters*")) == [
        "adapters_tp00_pp00.safetensors",
        "adapters_tp01_pp00.safetensors",
    ]
    joined, config, _ = load_adapters(tmp_path / "tp2")
    single, _, _ = load_adapters(tmp_path / "one" / "step_00000001" / "adapters.safetensors")
    assert config.rank == LORA["lora_rank"] and list(joined) == list(single)
    for name, value in single.items():
        # one Adam step moves each element by about lr; rounding may flip a near-zero grad's sign
        close = torch.isclose(joined[name], value, rtol=1e-4, atol=1e-7).float().mean()
        assert close > 0.98, name
    model, _ = load_model_source(task[2], task[1], device="cpu", lora=str(tmp_path / "tp2"))
    unmerged = load_model(task[2], dropout=0.0, attn_dropout=0.0)
    apply_lora(unmerged, config)
    load_lora_state_dict(unmerged, joined)
    idx = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = unmerged.eval()(idx)[0]
        torch.testing.assert_close(model(idx)[0], want, rtol=0, atol=1e-5 * want.abs().max().item())
        assert not torch.allclose(load_model(task[2]).eval()(idx)[0], want, rtol=0, atol=1e-3)  # adapters matter


def test_merge_lora_into_a_model_file_and_hf(task, tmp_path):
    """`convert merge-lora` and `hf-export --lora` write the base with the trained adapters merged:
    the logits of the adapted model; saving an unmerged adapted model is refused."""
    from transformers import GPT2LMHeadModel

    from gptcore.finetune.lora import apply_adapters

    _quiet(_cfg(task, train_steps=3, save=str(tmp_path / "run"), **LORA)).train()
    base = task[2]
    adapted = load_model(base, use_gptcore_ops=False)
    apply_adapters(adapted, tmp_path / "run")
    idx = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = adapted.eval()(idx)[0]
    with pytest.raises(ValueError, match="not merged"):
        save_model(adapted, tmp_path / "bad.safetensors")
    args = ["--checkpoint", base, "--lora", str(tmp_path / "run")]
    assert cli.main(["convert", "merge-lora", *args, "--out", str(tmp_path / "merged.safetensors")]) == 0
    merged = load_model(tmp_path / "merged.safetensors", use_gptcore_ops=False).eval()
    assert cli.main(["convert", "hf-export", *args, "--out", str(tmp_path / "hf")]) == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(idx)[0], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hf(idx).logits[..., :512], expected, rtol=1e-4, atol=1e-4)
