"""gptcore.checkpoint's names and its merge of an adapter file into a plain GPT (the sharded files,
folders and loaders: test_sharded_checkpoint, test_training)."""

import pytest
import torch

from gptcore.checkpoint import adapter_file_name, merge_adapters, rank_file_name, step_dir_name
from gptcore.checkpoint.names import step_of
from gptcore.finetune.lora import LoRAConfig, apply_adapters, apply_lora, save_adapters
from gptcore.model import GPT, GPTConfig

CONFIG = dict(vocab_size=256, n_positions=32, n_layer=2, n_head=2, n_embd=64, use_gptcore_ops=False)


def test_names():
    assert step_dir_name(100) == "step_00000100" and step_of(step_dir_name(100)) == 100
    assert step_of("latest") is None and step_of("step_x") is None
    assert rank_file_name(3) == "rank_00003.pt"
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
def test_merge_adapters_equals_lora_merge(tmp_path, lora):
    path = _adapter_file(tmp_path, lora)
    torch.manual_seed(1)
    base = GPT(GPTConfig(**CONFIG))
    expected = GPT(GPTConfig(**CONFIG))
    expected.load_state_dict(base.state_dict())
    apply_adapters(expected, path, merge=True)
    before = base.transformer.h[0].attn.c_attn.weight.detach().clone()
    merge_adapters(base, path)
    merged = dict(expected.named_parameters())
    for name, p in base.named_parameters():
        assert torch.equal(p, merged[name]), name
    assert not torch.equal(base.transformer.h[0].attn.c_attn.weight, before)  # qkv is a target of both


def test_merge_adapters_refuses_another_model(tmp_path):
    path = _adapter_file(tmp_path, LoRAConfig(4))
    with pytest.raises(ValueError, match="do not fit its weight"):
        merge_adapters(GPT(GPTConfig(**(CONFIG | {"n_embd": 32}))), path)
    with pytest.raises(ValueError, match="no such linear"):
        merge_adapters(GPT(GPTConfig(**(CONFIG | {"n_layer": 1}))), path)
