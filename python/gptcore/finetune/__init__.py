"""Finetuning a pretrained GPT: LoRA adapters (lora) and a sequence-classification head
(classify, imported as `from gptcore.finetune import classify`). Supervised finetuning itself is the
trainer on SFT data (gptcore.data.SFTDataset). Both depend on the model, never the reverse.
"""

from gptcore.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_adapters,
    apply_lora,
    load_adapters,
    load_lora_state_dict,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    save_adapter_state,
    save_adapters,
    unmerge_lora,
)

__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "apply_adapters",
    "apply_lora",
    "load_adapters",
    "load_lora_state_dict",
    "lora_state_dict",
    "merge_and_unload",
    "merge_lora",
    "save_adapter_state",
    "save_adapters",
    "unmerge_lora",
]
