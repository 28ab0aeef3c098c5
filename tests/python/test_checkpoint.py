"""gptcore.checkpoint's names, and a model source loaded with --lora adapters merged (the sharded
files, folders and loaders: test_sharded_checkpoint, test_training)."""

import pytest
import torch

from gptcore.checkpoint import adapter_file_name, rank_state_name, save_model, step_dir_name
from gptcore.checkpoint.names import step_of
from gptcore.cli.source import load_model as load_model_source
from gptcore.finetune.lora import LoRAConfig, apply_adapters, apply_lora, save_adapters
from gptcore.model import GPT, GPTConfig

CONFIG = dict(vocab_size=256, n_positions=32, n_layer=2, n_head=2, n_embd=64, use_gptcore_ops=False)


def test_names():
    assert step_dir_name(100) == "step_00000100" and step_of(step_dir_name(100)) == 100
    assert step_of("latest") is None and step_of("step_x") is None
    assert rank_state_name(3) == "rank_00003"
    assert adapter_file_name(0, 0, 1, 1) == "adapters.safetensors"
    assert adapter_file_name(1, 2, 2, 4) == "adapters_tp01_pp02.safetensors"


def _adapter_file(tmp_path, lora: LoRAConfig):
    torch.manual_seed(0)
    adapted = GPT(GPTConfig(**CONFIG))
    apply_lora(adapted, lora, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name.endswith(".lora_B"):
                p.copy_(torch.randn(p.shape, generator=g))
    return save_adapters(adapted, tmp_path / "adapters.safetensors", lora)


@pytest.mark.parametrize("lora", [LoRAConfig(4, alpha=12), LoRAConfig(2, targets=("qkv", "mlp_out"))])
def test_lora_source_merges_before_the_cast(tmp_path, lora):
    """--lora through the CLI's model source: the adapters merged into the float32 weights
    (apply_adapters(merge=True) run by load_for_inference's prepare), then cast: the same weights
    as merging a float32 copy by hand, and a clear error for another model's adapters."""
    path = _adapter_file(tmp_path, lora)
    torch.manual_seed(1)
    base = GPT(GPTConfig(**CONFIG))
    save_model(base, tmp_path / "base.safetensors")
    expected = GPT(GPTConfig(**CONFIG))
    expected.load_state_dict(base.state_dict())
    apply_adapters(expected, path, merge=True)
    model, _ = load_model_source(tmp_path / "base.safetensors", device="cpu", dtype="bf16", lora=path)
    want = {k: v.to(torch.bfloat16) for k, v in expected.state_dict().items()}
    got = model.state_dict()
    assert got.keys() == base.state_dict().keys()  # the plain model: no adapter tensors left
    for name, value in got.items():
        assert torch.equal(value, want[name]), name
    assert not torch.equal(
        got["transformer.h.0.attn.c_attn.weight"], base.state_dict()["transformer.h.0.attn.c_attn.weight"].bfloat16()
    )
    save_model(GPT(GPTConfig(**(CONFIG | {"n_layer": 1}))), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="another model"):
        load_model_source(tmp_path / "other.safetensors", device="cpu", lora=path)
