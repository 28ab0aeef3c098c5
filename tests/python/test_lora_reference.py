"""LoRA against an independent implementation: Hugging Face peft on a transformers GPT2LMHeadModel with
the same weights and the same adapters (non-zero B, alpha != rank), with and without adapter
dropout. peft computes y = W x + b + (alpha / r) B A dropout(x), the formula gptcore's LoRA documents."""

from __future__ import annotations

import re

import pytest
import torch

from gptcore import convert
from gptcore.finetune.lora import TARGETS, LoRAConfig, apply_lora, load_lora_state_dict, lora_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANK, ALPHA = 4, 12.0  # scale 3: a scale forced to 1 (or to alpha) is off by a factor


def hf_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=200, n_positions=32, n_embd=64, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # larger than HF's init, biases and LN included, so every term shows
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")))
    return hf


def peft_model(hf, targets, dropout):
    peft = pytest.importorskip("peft")
    modules = sorted({TARGETS[t].split(".")[1] for t in targets})  # c_attn, c_proj, c_fc
    if "c_proj" in modules and not {"attn_out", "mlp_out"} <= set(targets):
        modules = [TARGETS[t] for t in targets]  # attn.c_proj or mlp.c_proj alone
    config = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=modules, fan_in_fan_out=True, bias="none"
    )
    return peft.get_peft_model(hf, config)


def random_adapters(model, seed=1):
    """Random A and B for every adapter of a gptcore model (loaded through the public API)."""
    g = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(t.shape, generator=g) * 0.2 for name, t in sorted(lora_state_dict(model).items())}
    load_lora_state_dict(model, state)
    return state


def copy_adapters_to_peft(state, peft_model):
    """gptcore's lora_A [r, in] / lora_B [out, r] of transformer.h.i.<path> into peft's
    lora_A.default.weight / lora_B.default.weight of the same linear (the same layout)."""
    params = dict(peft_model.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, value in state.items():
            layer, path, factor = re.search(r"h\.(\d+)\.(.+)\.(lora_[AB])", name).groups()
            key = f"base_model.model.transformer.h.{layer}.{path}.{factor}.default.weight"
            assert params[key].shape == value.shape, key
            params[key].copy_(value)
            copied += 1
    n_peft = sum(1 for k in params if ".lora_" in k)
    assert copied == n_peft, f"{copied} adapter tensors for peft's {n_peft}"


def close(actual, expected, what):
    atol = 2e-5 * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(
    "targets", [tuple(TARGETS), ("qkv", "mlp_out"), ("attn_out",)], ids=["all", "qkv+mlp_out", "attn_out"]
)
def test_lora_forward_equals_peft(targets):
    hf = hf_gpt2()
    model = convert.from_hf(hf, dropout=0.0, attn_dropout=0.0)
    apply_lora(model, LoRAConfig(RANK, alpha=ALPHA, targets=targets))
    state = random_adapters(model)
    reference = peft_model(hf, targets, 0.0).eval()
    copy_adapters_to_peft(state, reference)
    idx = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = reference(idx).logits
        got, _ = model.eval()(idx)
    close(got, want, f"LoRA {targets} logits vs peft")
    with torch.no_grad(), reference.disable_adapter():
        plain = reference(idx).logits
    # the adapters matter: a wrong scale would be caught by more than the tolerance
    assert (want - plain).abs().max() > 100 * 2e-5 * want.abs().max()


def test_lora_dropout_is_on_the_adapter_input_as_peft():
    """With dropout on in training and the same seed, gptcore and peft draw the same mask over the
    adapter's input x (the first random draw of each forward, model dropout being zero), so the
    logits agree; dropout on the adapter's output or on the base path would not."""
    p = 0.5
    hf = hf_gpt2()
    model = convert.from_hf(hf, dropout=0.0, attn_dropout=0.0)
    apply_lora(model, LoRAConfig(RANK, alpha=ALPHA, dropout=p, targets=("qkv",)))
    state = random_adapters(model)
    reference = peft_model(hf, ("qkv",), p)
    copy_adapters_to_peft(state, reference)
    idx = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.train(), reference.train()
        torch.manual_seed(7)
        got, _ = model(idx)
        torch.manual_seed(7)
        want = reference(idx).logits
        model.eval(), reference.eval()
        evaluated, _ = model(idx)
    close(got, want, "LoRA with dropout, training, vs peft")
    assert (got - evaluated).abs().max() > 0.01 * evaluated.abs().max()  # the dropout did something


def test_lora_dropout_leaves_the_base_path_alone():
    """With B = 0 the adapter adds nothing, so a training forward with adapter dropout equals the
    plain model's (no dropout of the base path), for any seed."""
    hf = hf_gpt2()
    plain = convert.from_hf(hf, dropout=0.0, attn_dropout=0.0).eval()
    model = convert.from_hf(hf, dropout=0.0, attn_dropout=0.0)
    apply_lora(model, LoRAConfig(RANK, alpha=ALPHA, dropout=0.5))
    load_lora_state_dict(
        model, {k: (v if k.endswith("lora_A") else torch.zeros_like(v)) for k, v in lora_state_dict(model).items()}
    )
    idx = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, _ = plain(idx)
        model.train()
        for seed in (1, 2):
            torch.manual_seed(seed)
            got, _ = model(idx)
            close(got, want, f"B = 0, dropout 0.5, seed {seed}")
