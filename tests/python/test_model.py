"""GPT against transformers' GPT2LMHeadModel with the same weights, gptcore ops against the
reference ops, HF import/export round trips, presets and config validation."""

import ast
from pathlib import Path

import pytest
import torch

from gptcore import cli, convert
from gptcore import model as model_module
from gptcore.checkpoint import load_model
from gptcore.model import GPT, PRESETS, GPTConfig

VOCAB = 1000  # not a multiple of 128: the embedding is padded to 1024


def _hf_model(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random biases and LN weights too, so a wrong mapping shows
        for p in hf.parameters():
            p.normal_(0.0, 0.05)
    return hf


def _batch(T=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (2, T), generator=g)
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)  # HF's shifted labels
    return idx, targets


@pytest.mark.parametrize("use_gptcore_ops", [True, False])
def test_logits_loss_grads_match_hf(use_gptcore_ops):
    hf = _hf_model()
    model = convert.from_hf(hf, use_gptcore_ops=use_gptcore_ops).eval()
    assert model.config.padded_vocab_size == 1024
    idx, targets = _batch()
    ref = hf(idx, labels=idx)
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 17, VOCAB)
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=0)

    ref.loss.backward()
    loss.backward()
    ours = dict(model.named_parameters())
    theirs = dict(hf.named_parameters())
    wte = ours["transformer.wte.weight"].grad
    torch.testing.assert_close(wte[:VOCAB], theirs["transformer.wte.weight"].grad, atol=1e-5, rtol=1e-4)
    assert not wte[VOCAB:].any()  # padding rows take no gradient
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"):  # Conv1D: [in, out]
        torch.testing.assert_close(ours[name].grad, theirs[name].grad.t(), atol=1e-5, rtol=1e-4)
    for name in ("transformer.wpe.weight", "transformer.h.0.ln_1.weight", "transformer.h.1.attn.c_proj.bias"):
        torch.testing.assert_close(ours[name].grad, theirs[name].grad, atol=1e-5, rtol=1e-4)


def test_gptcore_ops_match_reference_ops():
    torch.manual_seed(0)
    fused = GPT(GPTConfig.preset("tiny", vocab_size=500))
    plain = GPT(GPTConfig.preset("tiny", vocab_size=500, use_gptcore_ops=False))
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 500, (3, 40))
    targets = torch.randint(0, 500, (3, 40))
    targets[0, :5] = -100
    (lf, loss_f), (lp, loss_p) = fused(idx, targets), plain(idx, targets)
    torch.testing.assert_close(lf, lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_f, loss_p, atol=1e-6, rtol=1e-6)
    loss_f.backward()
    loss_p.backward()
    for (name, pf), pp in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(pf.grad, pp.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", dropout=0.1, attn_dropout=0.1))
    idx = torch.randint(0, 512, (2, 16))
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], atol=0, rtol=0)
    model.train()
    a, b = model(idx)[0], model(idx)[0]
    assert not torch.equal(a, b)
    assert model(idx)[1] is None


def test_init():
    model = GPT(GPTConfig.preset("tiny", n_layer=8))
    p = dict(model.named_parameters())
    assert abs(p["transformer.h.0.mlp.c_fc.weight"].std().item() - 0.02) < 2e-3
    assert abs(p["transformer.h.0.mlp.c_proj.weight"].std().item() - 0.02 / 4) < 1e-3  # 1/sqrt(2 * 8)
    assert not p["transformer.h.0.attn.c_attn.bias"].any()
    assert torch.equal(p["transformer.h.3.ln_2.weight"], torch.ones(64))
    assert not p["transformer.wte.weight"][512:].any()


def test_to_hf_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = _hf_model()
    model = convert.from_hf(hf).eval()
    convert.to_hf(model, tmp_path / "hf")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    idx, _ = _batch()
    torch.testing.assert_close(loaded(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)
    again = convert.from_hf(tmp_path / "hf").eval()
    torch.testing.assert_close(again(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_cli_import_export(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    ckpt = tmp_path / "model.safetensors"
    assert cli.main(["convert", "hf-import", "--hf-dir", str(tmp_path / "hf"), "--out", str(ckpt)]) == 0
    assert cli.main(["convert", "hf-export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "back")]) == 0
    assert "2 layers, 2 heads, 64 wide, vocab 1000" in capsys.readouterr().out
    model = load_model(ckpt).eval()
    assert model.config.use_gptcore_ops
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    idx, _ = _batch()
    torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=0, rtol=0)


def test_load_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not a gptcore model file"):
        load_model(tmp_path / "x.safetensors")


def test_from_hf_rejects_other_activation():
    with pytest.raises(ValueError, match="tanh GELU"):
        convert.hf._config_from_hf(dict(vocab_size=10, n_positions=8, n_layer=1, n_head=1, n_embd=32,
                                     activation_function="relu"))  # fmt: skip


def test_gpt2_parameter_count():
    config = GPTConfig.preset("gpt2")
    assert config.padded_vocab_size == 50304
    # 124,439,808 with HF's 50257 rows, plus 47 padding rows of 768.
    assert config.num_parameters == 124_439_808 + 47 * 768 == 124_475_904
    assert GPTConfig.preset("gpt2", pad_vocab_multiple=1).num_parameters == 124_439_808


@pytest.mark.parametrize("name", ["tiny", "mini"])
def test_small_presets_build(name):
    config = GPTConfig.preset(name)
    model = GPT(config)
    assert model.num_parameters() == config.num_parameters
    assert model.transformer.wte.weight.shape == (config.padded_vocab_size, config.n_embd)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * config.n_embd, config.n_embd)
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (4 * config.n_embd, config.n_embd)
    no_bias = GPTConfig.preset(name, bias=False)
    assert GPT(no_bias).num_parameters() == no_bias.num_parameters


@pytest.mark.parametrize(
    ("name", "shape", "params_billions"),
    [
        ("gpt2-medium", (24, 16, 1024), 0.355),
        ("gpt2-large", (36, 20, 1280), 0.774),
        ("gpt2-xl", (48, 25, 1600), 1.558),
        ("gpt3-base", (12, 12, 768), 0.125),
        ("gpt3-large", (24, 16, 1024), 0.356),
        ("gpt3-1.3b", (24, 32, 2048), 1.32),
        ("gpt3-2.7b", (32, 32, 2560), 2.65),
        ("gpt3-13b", (40, 40, 5120), 12.85),
        ("gpt3-30b", (48, 56, 7168), 29.97),
        ("gpt3-175b", (96, 96, 12288), 174.6),
    ],
)
def test_large_presets_arithmetic(name, shape, params_billions):
    config = GPTConfig.preset(name)  # never instantiated: the count comes from the shapes
    assert (config.n_layer, config.n_head, config.n_embd) == shape
    assert config.num_parameters / 1e9 == pytest.approx(params_billions, rel=0.01)


def test_preset_overrides_and_unknown():
    assert GPTConfig.preset("tiny", n_positions=64).n_positions == 64
    assert "gpt3-175b" in PRESETS
    with pytest.raises(ValueError, match="unknown GPT preset"):
        GPTConfig.preset("gpt5")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(n_embd=100, n_head=3), "divisible by n_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(attn_dropout=-0.1), "attn_dropout"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(pad_vocab_multiple=0), "pad_vocab_multiple"),
    ],
)
def test_bad_config(fields, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig.preset("tiny", **fields)


def test_small_head_dim_on_reference_ops():
    model = GPT(GPTConfig.preset("tiny", n_head=4, use_gptcore_ops=False))
    assert model(torch.randint(0, 512, (1, 8)))[0].shape == (1, 8, 512)


def test_small_head_dim_with_gptcore_ops_runs_reference_attention():
    """Heads gptcore's attention kernels do not take: one warning when the model is built, attention
    on PyTorch's reference, gptcore's other ops (tests/python/test_hf_import.py: against HF)."""
    with pytest.warns(UserWarning, match="head dim 16 .* runs attention on PyTorch's reference"):
        model = GPT(GPTConfig.preset("tiny", n_head=4))
    idx = torch.randint(0, 512, (1, 8))
    reference = GPT(GPTConfig.preset("tiny", n_head=4, use_gptcore_ops=False))
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(idx)[0], reference(idx)[0], atol=1e-5, rtol=1e-5)


def test_too_long_sequence():
    model = GPT(GPTConfig.preset("tiny", n_positions=8))
    with pytest.raises(ValueError, match="exceeds n_positions"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_deepcopy_and_pickle():
    import copy
    import io

    model = GPT(GPTConfig.preset("tiny"))
    idx = torch.randint(0, 512, (1, 8))
    torch.testing.assert_close(copy.deepcopy(model)(idx)[0], model(idx)[0], atol=0, rtol=0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_model_imports_only_ops():
    """model.py knows no parallelism and no LoRA: of gptcore it imports the ops alone
    (gptcore.parallel and gptcore.finetune specialise the model from outside)."""
    tree = ast.parse(Path(model_module.__file__).read_text())
    ours = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            ours |= {alias.name for alias in node.names if alias.name.startswith("gptcore")}
        elif isinstance(node, ast.ImportFrom) and node.module.startswith("gptcore"):
            ours |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert ours and all(name.startswith("gptcore.ops") for name in ours), ours
