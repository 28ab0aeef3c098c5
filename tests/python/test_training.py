"""The trainer: schedule, loss scaling, config errors, the step against a plain-PyTorch reference,
gradient accumulation, recompute, checkpoints, exact resume, SIGTERM and a real-data run."""

import copy
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_fixtures import corpus, quiet, small

import gptcore
from gptcore import cli
from gptcore.checkpoint import find_checkpoint, load_model
from gptcore.data import preprocess, train_sentencepiece
from gptcore.data.indexed import IndexedDatasetBuilder
from gptcore.model import GPT
from gptcore.training import ConfigError, LossScaler, Trainer, load_config, lr_at
from gptcore.training.config import CONFIG_DIRS

REPO = Path(__file__).resolve().parents[2]


# ---- schedule and loss scaler -----------------------------------------------------------------
def test_lr_schedule_hand_values():
    # warmup 4 to lr 1.0, cosine to 0.1 at step 14 (n = 14), then flat
    lrs = [lr_at(s, 1.0, 0.1, 4, 14, "cosine") for s in range(16)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[8] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # n = 9: halfway
    assert lrs[13] == pytest.approx(0.1) and lrs[14] == lrs[15] == 0.1
    assert lr_at(8, 1.0, 0.1, 4, 14, "linear") == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100, 1.0, 0.1, 4, 14, "constant") == 1.0
    assert lr_at(0, 2.0, 0.0, 0, 10, "linear") == pytest.approx(2.0 * 0.9)


def test_dynamic_loss_scaler_backoff_hysteresis_growth():
    s = LossScaler(1024.0, window=3, hysteresis=2, min_scale=256.0)
    s.update(True)
    assert s.scale == 1024.0  # first overflow absorbed by hysteresis
    s.update(True)
    assert s.scale == 512.0
    for _ in range(3):
        s.update(False)
    assert s.scale == 1024.0  # three good steps: doubled
    for _ in range(6):
        s.update(True)
    assert s.scale == 256.0  # floor
    assert s.skipped_steps == 8
    state = s.state_dict()
    t = LossScaler(1.0)
    t.load_state_dict(state)
    assert t.state_dict() == state


def test_static_loss_scaler_never_changes():
    s = LossScaler(128.0, dynamic=False)
    for inf in (True, False, True, True):
        s.update(inf)
    assert s.scale == 128.0 and s.skipped_steps == 3


# ---- config errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(n_embd=100, n_head=3), r"n_embd \(100\) must be divisible by n_head \(3\)"),
        (dict(seq_len=256, n_positions=128), r"seq_len \(256\) exceeds the model's n_positions \(128\)"),
        (dict(lr=0), r"lr must be > 0"),
        (dict(lr=-1e-3), r"lr must be > 0"),
        (dict(global_batch_size=6, micro_batch_size=4), r"multiple of micro_batch_size"),
        (dict(precision="fp8"), r"precision: 'fp8' is not one of fp32, bf16, fp16"),
        (dict(min_lr=1.0), r"min_lr must be in"),
        (dict(loss_scale=128.0), r"loss_scale applies to precision fp16 only"),
        (dict(train_steps="many"), r"train_steps must be int, got 'many'"),
        (dict(model="gpt5"), r"unknown preset 'gpt5'"),
        (dict(warmup_steps=50, train_steps=10), r"warmup \(50 steps\) is longer than decay_steps \(10\)"),
        (dict(recompute="some"), r"recompute: 'some' is not one of"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_misspelt_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate'") as e:
        load_config(None, {"lerning_rate": 1e-3})
    assert str(e.value).endswith("did you mean 'lr'?")  # close to PaddleNLP's learning_rate, which is lr
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz'; known keys: model, "):
        load_config(None, {"zzz": 1})
    (tmp_path / "c.yaml").write_text("micro_batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'micro_batch_sise'; did you mean 'micro_b"):
        load_config(tmp_path / "c.yaml")


def test_yaml_values_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 3e-4\nmin_lr: 0\ntrain_steps: 50\n")  # YAML 1.1 reads 3e-4 as a string
    cfg = load_config(tmp_path / "c.yaml", ["train_steps=7", "save=null", "bias=false"])
    assert cfg.lr == 3e-4 and cfg.min_lr == 0.0 and cfg.train_steps == 7 and cfg.save is None and cfg.bias is False
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["lr"])
    with pytest.raises(ConfigError, match="not found; give a YAML file or one of: .*tiny-cpu"):
        load_config("no-such-config")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    """Each config in configs/ loads by name (from the installed package or the checkout) and builds."""
    cfg = load_config(name)
    assert cfg.model_config(50257).n_positions >= cfg.seq_len
    assert any((folder / f"{name}.yaml").is_file() for folder in CONFIG_DIRS)


def test_cli_reports_config_error_without_traceback(capsys):
    assert cli.main(["train", "--config", "tiny-cpu", "n_head=5"]) == 2
    err = capsys.readouterr().err
    assert "gptcore train: error:" in err and "divisible by n_head (5)" in err and "Traceback" not in err


def test_precision_on_cpu_kernels_is_a_config_error(corpus):
    with pytest.raises(ConfigError, match="gptcore's CPU kernels are float32"):
        quiet(small(corpus, precision="bf16"))


def test_bad_data_path_and_vocab(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"nothing\.idx not found"):
        quiet(small(corpus, data_path=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match=r"tokenizer: .*no such tokenizer file"):
        quiet(small(corpus, tokenizer=str(tmp_path / "missing.model")))
    with pytest.raises(ConfigError, match="init_from"):
        quiet(small(corpus, init_from=str(tmp_path / "nothing-here")))
    with pytest.raises(ConfigError, match=r"vocab_size \(100\) is smaller than the tokenizer's \(512\)"):
        quiet(small(corpus, vocab_size=100))


# ---- the step against PyTorch --------------------------------------------------------------------
def reference_run(trainer_cfg: dict, steps: int) -> GPT:
    """The same training in plain PyTorch: torch.optim.AdamW, clip_grad_norm_, one big batch, the
    schedule computed by hand, weight decay on 2-D params only."""
    t = quiet(trainer_cfg | {"use_gptcore_ops": False})
    model, cfg = copy.deepcopy(t.model), t.cfg
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )
    for step in range(steps):
        batch = t._batch(step * cfg.global_batch_size, cfg.global_batch_size, t.train_data)
        _, loss = model(batch["tokens"], batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else cfg.lr
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize("micro", [4, 2, 1])
def test_steps_match_pytorch_reference(corpus, micro):
    """Accumulating micro batches, the fused step with unscale+clip, the decay groups and the
    schedule give what plain PyTorch gives on the whole batch (clipping active: clip_grad small)."""
    cfg = small(corpus, micro_batch_size=micro, clip_grad=0.05, decay_style="constant", weight_decay=0.1)
    t = quiet(cfg)
    history = [t.train_step() for _ in range(3)]
    assert all(h["grad_norm"] > 0.05 for h in history)  # clipping was active
    ref = reference_run(cfg, 3)
    for (name, p), q in zip(t.model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5, msg=name)


def test_split_without_validation_documents_turns_eval_off(corpus):
    lines = []
    t = Trainer(load_config(None, small(corpus, split="100,0,0", eval_interval=2)), log=lines.append)
    assert t.valid_data is None and any("no validation documents" in line for line in lines)
    assert all("val_loss" not in r for r in t.train(max_steps=2))
    with pytest.raises(ConfigError, match="train split of .*no documents"):
        quiet(small(corpus, split="0,100,0"))


def test_loss_mask_on_eod(corpus):
    t = quiet(small(corpus, eod_mask_loss=True, micro_batch_size=4))
    batch = t._batch(0, 4, t.train_data)
    eod = t.tokenizer.eod_id
    raw = torch.stack([t.train_data[i]["labels"] for i in range(4)])
    assert (raw == eod).any()
    assert torch.equal(batch["labels"] == -100, raw == eod)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_recompute_gives_the_same_grads(corpus, mode):
    base = small(corpus, dropout=0.1, attn_dropout=0.1, micro_batch_size=4)
    runs = []
    for recompute in ("none", mode):
        torch.manual_seed(0)
        t = quiet(base | {"recompute": recompute})
        t.model.train()
        batch = t._batch(0, 4, t.train_data)
        torch.manual_seed(5)
        _, loss = t.model(batch["tokens"], batch["labels"])
        loss.backward()
        runs.append({n: p.grad.clone() for n, p in t.model.named_parameters()})
    for name in runs[0]:
        torch.testing.assert_close(runs[1][name], runs[0][name], rtol=1e-5, atol=1e-7, msg=name)


# ---- fp16 loss scaling ---------------------------------------------------------------------------
def test_fp16_overflow_skips_the_step_and_backs_off(corpus):
    """An inf injected into one grad: the step changes nothing, the scale halves (hysteresis 1),
    the skip is logged; the next step updates again. PyTorch ops: the CPU kernels are float32."""
    cfg = small(corpus, precision="fp16", use_gptcore_ops=False, initial_loss_scale=1024.0, hysteresis=1)
    t = quiet(cfg)
    t.train_step()
    p = t.model.transformer.h[0].mlp.c_fc.weight
    assert p.dtype == torch.float16 and t.optimizer.state[p]["master"].dtype == torch.float32
    before = {n: q.clone() for n, q in t.model.named_parameters()}
    master = t.optimizer.state[p]["master"].clone()
    hook = p.register_hook(lambda g: torch.full_like(g, float("inf")))
    out = t.train_step()
    hook.remove()
    assert out["skipped"] and out["loss_scale"] == 1024.0 and t.scaler.scale == 512.0
    assert all(torch.equal(q, before[n]) for n, q in t.model.named_parameters())
    assert torch.equal(t.optimizer.state[p]["master"], master)
    assert t.updates == 1 and t.step == 2
    out = t.train_step()
    assert not out["skipped"] and t.updates == 2 and not torch.equal(p, before["transformer.h.0.mlp.c_fc.weight"])
    records = t.train(max_steps=1)
    assert records[-1]["loss_scale"] == 512.0 and records[-1]["skipped_steps"] == 0


def test_fp16_static_scale_matches_fp32_direction(corpus):
    """A static scale: grads are unscaled before the update, so the first steps track fp32: same
    loss and grad norm, and the fp16 run's total update is the fp32 one up to fp16 noise."""
    cfg = small(corpus, use_gptcore_ops=False, decay_style="constant", clip_grad=0.0)
    a, b = quiet(cfg), quiet(cfg | {"precision": "fp16", "loss_scale": 256.0})
    start = torch.cat([p.detach().flatten() for p in a.model.parameters()])
    for _ in range(3):
        ra, rb = a.train_step(), b.train_step()
        assert rb["loss_scale"] == 256.0 and not rb["skipped"]
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=0.02)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-3)
    pa = torch.cat([p.detach().flatten() for p in a.model.parameters()])
    pb = torch.cat([p.detach().float().flatten() for p in b.model.parameters()])
    assert float((pb - pa).norm() / (pa - start).norm()) < 0.2


def test_bf16_params_with_fp32_masters_and_main_grads(corpus):
    """bf16: params and activations in bf16, float32 masters in the optimizer, grads accumulated in
    float32 over the micro batches; the loss falls like the fp32 run's."""
    cfg = small(corpus, use_gptcore_ops=False, micro_batch_size=1, train_steps=8, decay_style="constant")
    a, b = quiet(cfg), quiet(cfg | {"precision": "bf16"})
    p = b.model.transformer.h[0].attn.c_attn.weight
    grads = []
    p.register_post_accumulate_grad_hook(lambda q: grads.append(q.main_grad.dtype))
    ra = [a.train_step()["loss"] for _ in range(8)]
    rb = [b.train_step()["loss"] for _ in range(8)]
    assert p.dtype == torch.bfloat16 and b.optimizer.state[p]["master"].dtype == torch.float32
    assert set(grads) == {torch.float32} and len(grads) == 8 * 4  # 4 micro batches a step
    assert torch.equal(p, b.optimizer.state[p]["master"].to(torch.bfloat16))
    assert rb[-1] < rb[0] - 0.5 and rb[-1] == pytest.approx(ra[-1], abs=0.1)


# ---- checkpoints and resume ---------------------------------------------------------------------
def losses(records):
    return [r["loss"] for r in records if "loss" in r]


def test_resume_is_bit_exact(corpus, tmp_path):
    cfg = small(corpus, train_steps=8, dropout=0.1, attn_dropout=0.1, eval_interval=4, eval_steps=2)
    whole = quiet(cfg | {"save": str(tmp_path / "a")})
    whole_records = whole.train()
    first = quiet(cfg | {"save": str(tmp_path / "b")})
    part = first.train(max_steps=3)
    resumed = quiet(cfg | {"save": str(tmp_path / "b")})
    assert resumed.step == 3 and resumed.resumed_from.name == "step_00000003"
    rest = resumed.train()
    assert losses(part + rest) == losses(whole_records)  # bit for bit
    assert [r["val_loss"] for r in rest if "val_loss" in r] == [r["val_loss"] for r in whole_records if "val_loss" in r]
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))


def test_checkpoint_layout_keep_last_and_latest(corpus, tmp_path):
    save = tmp_path / "run"
    t = quiet(small(corpus, save=str(save), save_interval=2, keep_last=2, train_steps=6))
    t.train()
    assert sorted(p.name for p in save.iterdir() if p.name.startswith("step_")) == ["step_00000004", "step_00000006"]
    assert (save / "latest").read_text().strip() == "step_00000006"
    final = save / "step_00000006"
    expected = {"model.safetensors", "trainer_state.json", "trainer_state.safetensors", "config.yaml", "tokenizer"}
    expected |= {"COMPLETE"}
    assert {p.name for p in final.iterdir()} == expected
    from gptcore.data import load_tokenizer

    model = load_model(final / "model.safetensors")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), t.model.parameters()))
    assert load_tokenizer(final / "tokenizer").vocab_size == 512
    assert not list(save.glob(".*tmp*"))


def test_incomplete_checkpoint_is_not_resumed(corpus, tmp_path):
    save = tmp_path / "run"
    quiet(small(corpus, save=str(save), train_steps=2)).train()
    # A crash while writing step 4: its folder exists without the marker, latest still names step 2.
    broken = save / "step_00000004"
    broken.mkdir()
    (broken / "trainer_state.json").write_bytes(b"partial")
    assert find_checkpoint(save).name == "step_00000002"
    with pytest.raises(ValueError, match="incomplete"):
        find_checkpoint(broken)
    t = quiet(small(corpus, save=str(save), train_steps=3))
    assert t.step == 2


def test_resume_with_another_model_is_refused(corpus, tmp_path):
    save = tmp_path / "run"
    quiet(small(corpus, save=str(save), train_steps=1, warmup_steps=0)).train()
    with pytest.raises(ConfigError, match=r"checkpoint's model has n_embd=64 but this config builds n_embd=128"):
        quiet(small(corpus, save=str(save), n_embd=128))
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        quiet(small(corpus, load=str(tmp_path / "empty")))


def test_init_from_a_model_file(corpus, tmp_path):
    first = quiet(small(corpus, save=str(tmp_path / "a"), train_steps=2, warmup_steps=0))
    first.train()
    second = quiet(small(corpus, init_from=str(tmp_path / "a" / "step_00000002"), save=str(tmp_path / "b")))
    assert second.step == 0
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    short = quiet(small(corpus, n_positions=16, seq_len=16, train_steps=1, warmup_steps=0, save=str(tmp_path / "c")))
    short.train()
    with pytest.raises(ConfigError, match=r"seq_len \(32\) exceeds the model's n_positions \(16\)"):
        quiet(small(corpus, init_from=str(tmp_path / "c" / "step_00000001")))


def test_tensorboard_events(corpus, tmp_path):
    pytest.importorskip("tensorboard")
    quiet(small(corpus, tensorboard_dir=str(tmp_path / "tb"), train_steps=2)).train()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_saves_and_exits_cleanly(corpus, tmp_path, signum):
    """SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) finish the step, save, exit 0, resume."""
    name = signal.Signals(signum).name
    prefix, tokenizer = corpus
    save = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "gptcore",
        "train",
        "--config",
        "tiny-cpu",
        f"data_path={prefix}",
        f"tokenizer={tokenizer}",
        f"save={save}",
        "model=tiny",
        "n_embd=64",
        "n_head=2",
        "n_positions=64",
        "seq_len=32",
        "micro_batch_size=2",
        "global_batch_size=2",
        "train_steps=100000",
        "warmup_steps=1",
        "log_interval=1",
        "eval_interval=0",
        "save_interval=0",
        "sample_tokens=0",
    ]
    package_root = str(Path(gptcore.__file__).resolve().parents[1])  # the gptcore this test imported
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    metrics = save / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"{name}: finishing step" in out and f"stopped by {name}" in out and "Traceback" not in out
    found = find_checkpoint(save)
    step = int(found.name.split("_")[1])
    assert step >= 3 and (found / "COMPLETE").is_file()
    steps_logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps_logged[-1] == step  # nothing after the saved step
    resumed = quiet(small(corpus, save=str(save), train_steps=step + 1, global_batch_size=2, warmup_steps=1))
    assert resumed.step == step
    assert [r["step"] for r in resumed.train() if "loss" in r] == [step + 1]


def test_warmup_ratio_sets_the_warmup_from_the_decay_steps(corpus):
    """warmup_ratio 0.5 of 6 steps is 3 warmup steps, whatever warmup_steps says: lr / 3, 2 lr / 3,
    lr, then constant (decay_style constant)."""
    cfg = small(corpus, warmup_ratio=0.5, warmup_steps=1, decay_style="constant", lr=0.03)
    t = quiet(cfg)
    lrs = [t.train_step()["lr"] for _ in range(4)]
    assert lrs == pytest.approx([0.01, 0.02, 0.03, 0.03], rel=1e-12)
    t = quiet(small(corpus, warmup_ratio=0.5, decay_steps=4, decay_style="constant", lr=0.03))
    assert [t.train_step()["lr"] for _ in range(2)] == pytest.approx([0.015, 0.03], rel=1e-12)


def write_dataset(prefix, low, high, documents=40, length=50, seed=0):
    """An indexed dataset of random tokens in [low, high)."""
    g = torch.Generator().manual_seed(seed)
    with IndexedDatasetBuilder(prefix, vocab_size=512) as builder:
        for _ in range(documents):
            builder.add_document(torch.randint(low, high, (length,), generator=g).tolist())
    return str(prefix)


@pytest.mark.parametrize("weights", [(1, 3), (0, 1)], ids=["1:3", "0:1"])
def test_blended_data_path_draws_samples_by_weight(corpus, tmp_path, weights):
    """data_path "w_a A w_b B": of the run's train samples, the share from each dataset is its
    weight's (within one sample), told apart by their disjoint token ranges."""
    a = write_dataset(tmp_path / "a", 10, 200)
    b = write_dataset(tmp_path / "b", 300, 500, seed=1)
    cfg = small(corpus, data_path=f"{weights[0]} {a} {weights[1]} {b}", split="100,0,0", train_steps=10)
    t = quiet(cfg)
    n = 10 * cfg["global_batch_size"]
    samples = [t.train_data[i]["tokens"] for i in range(n)]
    from_a = [bool((s < 200).all()) for s in samples]
    from_b = [bool((s >= 300).all()) for s in samples]
    assert all(x != y for x, y in zip(from_a, from_b))  # each sample from exactly one dataset
    assert abs(sum(from_a) - n * weights[0] / sum(weights)) <= 1
    assert t.train_step()["loss"] > 0


def test_init_from_an_hf_folder_starts_from_its_weights(corpus, tmp_path):
    """A transformers GPT2LMHeadModel saved with save_pretrained: the trainer's model gives its
    logits, and the first step's loss is its cross-entropy on the first batch."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():  # away from HF's init, so a default-initialized model cannot match
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    t = quiet(small(corpus, init_from=str(tmp_path / "hf"), dropout=0.0, attn_dropout=0.0, use_gptcore_ops=False))
    assert t.step == 0
    idx = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, _ = t.model.eval()(idx)
        torch.testing.assert_close(got, hf(idx).logits, rtol=0, atol=1e-4)
        batch = [t.train_data[i] for i in range(4)]  # the first global batch: samples 0..3
        tokens = torch.stack([s["tokens"] for s in batch])
        labels = torch.stack([s["labels"] for s in batch])
        logits = hf(tokens).logits
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), labels.reshape(-1), ignore_index=-100)
    assert t.train_step()["loss"] == pytest.approx(want.item(), rel=1e-5)


# ---- real data -----------------------------------------------------------------------------------
def test_tiny_shakespeare_200_steps(shared_data, tmp_path):
    """200 steps of a 0.8M-param model on tiny Shakespeare (1 MB, 512-piece BPE): the validation
    loss falls from ln(512) = 6.24 at init to under 4.0 nats (about 1.75 bits per character)."""
    text = shared_data / "tinyshakespeare.txt"
    model = train_sentencepiece([text], tmp_path / "spm", vocab_size=512)
    preprocess([text], tmp_path / "shakespeare", model, append_eod=True, progress=False)
    data = (str(tmp_path / "shakespeare_text_document"), str(model))
    cfg = small(data, n_layer=2, n_embd=128, n_head=4, n_positions=128, seq_len=128, split="90,10,0")
    cfg |= dict(micro_batch_size=16, global_batch_size=16, train_steps=200, lr=3e-3, min_lr=3e-4, warmup_steps=20)
    cfg |= dict(eval_interval=200, eval_steps=8, log_interval=50)
    t = quiet(cfg)
    first = t.evaluate()["val_loss"]
    assert first == pytest.approx(math.log(512), abs=0.3)
    records = t.train()
    final = [r["val_loss"] for r in records if "val_loss" in r][-1]
    assert final < 4.0, records
