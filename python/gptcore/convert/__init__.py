"""Other tools' model formats to and from a GPT: Hugging Face GPT-2 folders (hf), Megatron-LM GPT
checkpoints (megatron).

gptcore's own files (model file, checkpoints, resolving any model source) are gptcore.checkpoint's,
which uses this package; this package does not use it.
"""

from gptcore.convert.hf import from_hf, model_state, save_hf_tokenizer, to_hf
from gptcore.convert.megatron import from_megatron, is_megatron_checkpoint, to_megatron

__all__ = [
    "from_hf",
    "from_megatron",
    "is_megatron_checkpoint",
    "model_state",
    "save_hf_tokenizer",
    "to_hf",
    "to_megatron",
]
