"""Other tools' model formats to and from a GPT: Hugging Face GPT-2 folders (hf), Megatron-LM GPT
checkpoints (megatron).

gptcore's own files (model file, checkpoints, resolving any model source) are gptcore.checkpoint's,
which uses this package; this package does not use it.
"""

from gptcore.convert.hf import from_hf, model_state, save_hf_tokenizer, to_hf

__all__ = ["from_hf", "model_state", "save_hf_tokenizer", "to_hf"]
